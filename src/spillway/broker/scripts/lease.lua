-- lease: the slots and start tokens of one limited task type, shared by every worker.
-- KEYS[1] the type's leases (zset: token -> expiry, ms)   KEYS[2] its rate state (the GCRA's
--   theoretical arrival time of the next start, ms)   Both hash-tagged with the type.
-- ARGV[1] mode: 'take' | 'give' | 'keep'
-- take: ARGV[2] how many wanted   ARGV[3] concurrency (0 = none)   ARGV[4] lease TTL (ms)
--   ARGV[5] token prefix (tokens are prefix..1..n)   ARGV[6] ms between starts (0 = no rate)
--   Returns {granted, ms to wait before the next start may be granted ('0': unknown, a slot
--   frees when a run ends)}.
-- give: ARGV[2] start tokens taken but not used (refunded)   ARGV[3] ms between starts
--   ARGV[4..] lease tokens to free.   Returns the number of leases freed.
-- keep: ARGV[2] lease TTL (ms)   ARGV[3..] lease tokens to renew (only those still held: an
--   expired lease is not brought back).   Returns the number renewed.
-- A lease expires unless renewed, so a worker that dies frees its slots within its TTL.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local mode = ARGV[1]
if mode == 'take' then
  local want, limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  local interval = tonumber(ARGV[6])
  local grant, wait = want, 0
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    grant = math.max(0, math.min(grant, limit - redis.call('ZCARD', KEYS[1])))
  end
  if interval > 0 and grant > 0 then
    -- GCRA without burst: a start is due every `interval` ms; `tat` is when the next one is.
    local tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') or 0, now)
    local allowed = math.floor((now - tat) / interval) + 1
    grant = math.max(0, math.min(grant, allowed))
    tat = tat + grant * interval
    redis.call('SET', KEYS[2], string.format('%.3f', tat), 'PX',
      math.ceil(tat - now + interval) + 1000)
    if grant < want then
      wait = math.max(1, tat - now)
    end
  end
  if grant > 0 and limit > 0 then
    local args = {}
    for i = 1, grant do
      args[#args + 1] = now + ttl
      args[#args + 1] = ARGV[5] .. i
    end
    redis.call('ZADD', KEYS[1], unpack(args))
  end
  return {grant, string.format('%d', math.ceil(wait))}
elseif mode == 'give' then
  local refund, interval = tonumber(ARGV[2]), tonumber(ARGV[3])
  if refund > 0 and interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[2]) or '')
    if tat then
      tat = math.max(now, tat - refund * interval)
      redis.call('SET', KEYS[2], string.format('%.3f', tat), 'PX',
        math.ceil(tat - now + interval) + 1000)
    end
  end
  if #ARGV > 3 then
    return redis.call('ZREM', KEYS[1], unpack(ARGV, 4))
  end
  return 0
else
  local expiry, renewed = now + tonumber(ARGV[2]), 0
  for i = 3, #ARGV do
    if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
      redis.call('ZADD', KEYS[1], expiry, ARGV[i])
      renewed = renewed + 1
    end
  end
  return renewed
end
