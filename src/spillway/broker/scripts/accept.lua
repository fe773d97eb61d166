-- accept: idempotency check + backlog limit + task record + XADD (or ZADD when delayed), atomically.
-- KEYS[1] task record (hash)   KEYS[2] shard stream   KEYS[3] due set (zset)   KEYS[4] idempotency key
-- ARGV[1] task id   ARGV[2] type   ARGV[3] queue   ARGV[4] payload (JSON)   ARGV[5] max retries
-- ARGV[6] timeout (s)   ARGV[7] delay (ms, 0 = run now)   ARGV[8] backlog limit of this shard
-- ARGV[9] idempotency TTL (ms)   ARGV[10] request fingerprint ('' = no idempotency key)
-- ARGV[11] retry base (s)   ARGV[12] retry cap (s)
-- Returns {'ok', id} | {'duplicate', existing id} | {'conflict', existing id} | {'full', backlog}
local fingerprint = ARGV[10]
if fingerprint ~= '' then
  local previous = redis.call('GET', KEYS[4])
  if previous then
    local sep = string.find(previous, '|', 1, true)
    local previous_id = string.sub(previous, 1, sep - 1)
    if string.sub(previous, sep + 1) ~= fingerprint then
      return {'conflict', previous_id}
    end
    return {'duplicate', previous_id}
  end
end

-- XLEN counts undelivered and in-flight entries (acknowledged ones are deleted at finish).
local backlog = redis.call('XLEN', KEYS[2]) + redis.call('ZCARD', KEYS[3])
if backlog >= tonumber(ARGV[8]) then
  return {'full', tostring(backlog)}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1],
  'id', ARGV[1], 'type', ARGV[2], 'queue', ARGV[3], 'payload', ARGV[4], 'status', 'queued',
  'attempts', 0, 'prior_attempts', 0, 'max_retries', ARGV[5], 'timeout', ARGV[6],
  'retry_base', ARGV[11], 'retry_cap', ARGV[12], 'created_at', now)
local delay = tonumber(ARGV[7])
if delay > 0 then
  redis.call('ZADD', KEYS[3], now + delay, ARGV[1])
  redis.call('HSET', KEYS[1], 'entry', '', 'due_at', now + delay)
else
  local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
  redis.call('HSET', KEYS[1], 'entry', entry)
end
if fingerprint ~= '' then
  redis.call('SET', KEYS[4], ARGV[1] .. '|' .. fingerprint, 'PX', ARGV[9])
end
return {'ok', ARGV[1]}
