-- accept: for each task of a batch (all in one shard and one queue), atomically: idempotency
-- check, backlog limit, task record, and XADD (or ZADD into the due set when delayed). Nothing
-- is trimmed.
-- KEYS[1] the queue's shard stream   KEYS[2] its due set (zset)
-- KEYS[2+i] task i's record (hash), for the n tasks; after them, in task order, the
--   idempotency key of each task that has one
-- ARGV[1] backlog limit per shard stream   ARGV[2] idempotency TTL (ms)
-- ARGV[3] deadline (server clock, ms; 0 = none): past it, the caller has already answered 503,
--   so nothing may be written
-- ARGV[4] the queue's name
-- ARGV[5+6(i-1)..] for task i: id, type, payload (JSON), delay (ms, 0 = now),
--   policy 'max_retries|timeout|retry_base|retry_cap', fingerprint ('' = no idempotency key)
-- What the queue's tasks share (its keys and name) comes once per batch, not once per task:
-- each argument is packed by the caller, then parsed and copied into Lua by Redis. The policy
-- is stored as it comes, in one record field: every field of a new record costs Redis CPU
-- (docs/benchmarks.md#accept-script-arguments).
-- Returns one reply per task: 1 when it was written (under the id it was sent with), else
-- 'duplicate|<id>' or 'conflict|<id>' (the id the key's first task has) or 'full|<backlog>';
-- or the single string 'late' when the deadline has passed (nothing was written). A flat
-- reply, not a {status, id} pair per task: a Lua table and a string less per task to build,
-- send and parse.
local limit, idem_ttl, queue = tonumber(ARGV[1]), ARGV[2], ARGV[4]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[3])
if deadline > 0 and now > deadline then
  return 'late'
end
local created_at = string.format('%d', now)  -- formatted once, not once per task
local stream, due = KEYS[1], KEYS[2]
local n = (#ARGV - 4) / 6
-- Counted once per batch, then kept up to date here: each accept adds one. XLEN counts the
-- entries undelivered and in flight, ZCARD the delayed tasks.
local backlog = redis.call('XLEN', stream) + redis.call('ZCARD', due)
local next_idem = 3 + n  -- the idempotency key of the next task that has one
local out = {}
for i = 1, n do
  local a = 5 + 6 * (i - 1)
  local id, fingerprint = ARGV[a], ARGV[a + 5]
  local idem = nil
  local reply = nil
  if fingerprint ~= '' then
    idem = KEYS[next_idem]
    next_idem = next_idem + 1
    local previous = redis.call('GET', idem)
    if previous then
      local sep = string.find(previous, '|', 1, true)
      local previous_id = string.sub(previous, 1, sep - 1)
      if string.sub(previous, sep + 1) ~= fingerprint then
        reply = 'conflict|' .. previous_id
      else
        reply = 'duplicate|' .. previous_id
      end
    end
  end
  if not reply and backlog >= limit then
    reply = 'full|' .. backlog
  end
  if not reply then
    local record, delay = KEYS[2 + i], tonumber(ARGV[a + 3])
    -- Fields at their defaults are left out (attempts and prior_attempts 0, no due_at for a
    -- task queued now, no entry for a delayed one): every reader treats a missing field as its
    -- default, and each field left out is Redis CPU saved on every accepted task.
    if delay > 0 then
      local due_at = now + delay
      redis.call('ZADD', due, due_at, id)
      redis.call('HSET', record,
        'id', id, 'type', ARGV[a + 1], 'queue', queue, 'payload', ARGV[a + 2],
        'status', 'queued', 'policy', ARGV[a + 4], 'created_at', created_at,
        'due_at', string.format('%d', due_at))
    else
      local entry = redis.call('XADD', stream, '*', 'id', id)
      redis.call('HSET', record,
        'id', id, 'type', ARGV[a + 1], 'queue', queue, 'payload', ARGV[a + 2],
        'status', 'queued', 'policy', ARGV[a + 4], 'created_at', created_at, 'entry', entry)
    end
    if idem then
      redis.call('SET', idem, id .. '|' .. fingerprint, 'PX', idem_ttl)
    end
    backlog = backlog + 1
    reply = 1
  end
  out[i] = reply
end
return out
