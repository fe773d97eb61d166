-- callback_settle: record how one delivery of a completion webhook went.
-- KEYS[1] the shard's due callbacks (zset)   KEYS[2] the task record
-- KEYS[3] the shard's webhook tries by outcome (hash)
-- ARGV[1] task id   ARGV[2] the claim's token   ARGV[3] 'delivered' | 'retry' | 'failed'
-- ARGV[4] deliveries tried so far   ARGV[5] the last error ('' = none)
-- ARGV[6] for a retry, ms until the next try
-- Only the claim the record names may settle: a worker whose lease ran out while another
-- claimed the task writes nothing (and an expired record is not brought back).
-- Returns 1 when written, 0 when the claim was stale.
local record, callbacks = KEYS[2], KEYS[1]
if redis.call('HGET', record, 'callback_claim') ~= ARGV[2] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', record, 'callback_attempts', ARGV[4], 'callback_at', now)
redis.call('HDEL', record, 'callback_claim')
redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
if ARGV[5] ~= '' then
  redis.call('HSET', record, 'callback_error', ARGV[5])
end
if ARGV[3] == 'retry' then
  redis.call('ZADD', callbacks, now + tonumber(ARGV[6]), ARGV[1])
else
  redis.call('HSET', record, 'callback_status', ARGV[3])
  redis.call('ZREM', callbacks, ARGV[1])
end
return 1
