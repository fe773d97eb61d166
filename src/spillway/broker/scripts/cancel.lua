-- cancel: stop a task that is still waiting (queued, delayed or waiting for a retry).
-- KEYS[1] task record   KEYS[2] shard stream   KEYS[3] due set
-- ARGV[1] task id   ARGV[2] group   ARGV[3] result TTL (ms)   ARGV[4] completion channel
-- Returns {'cancelled'} | {'missing'} | {'refused', status}
local r = redis.call('HMGET', KEYS[1], 'status', 'entry')
local status = r[1]
if not status then
  return {'missing'}
end
if status ~= 'queued' and status ~= 'failed' then
  return {'refused', status}
end
if r[2] and r[2] ~= '' then
  -- Delivered but not yet begun counts as waiting: the worker's begin will skip it.
  redis.call('XACK', KEYS[2], ARGV[2], r[2])
  redis.call('XDEL', KEYS[2], r[2])
end
redis.call('ZREM', KEYS[3], ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'entry', '', 'finished_at', now)
redis.call('HDEL', KEYS[1], 'due_at')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'cancelled')
return {'cancelled'}
