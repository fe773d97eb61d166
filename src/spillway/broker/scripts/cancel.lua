-- cancel: end a waiting task (queued, delayed or waiting for a retry) now, or ask the worker
-- running it to stop.
-- KEYS[1] task record   KEYS[2] shard stream   KEYS[3] due set
-- KEYS[4] the shard's outcome counters   KEYS[5] the shard's due callbacks (zset)
-- KEYS[6] the shard's feed (feed.lua)
-- ARGV[1] task id   ARGV[2] group   ARGV[3] result TTL (ms)   ARGV[4] completion channel
-- ARGV[5] owner, checked when ARGV[6] is present: another owner's task is 'missing' (an API
--   client key may cancel only the tasks it submitted)
-- Returns {'cancelled'} | {'requested'} | {'missing'} | {'refused', status}
-- A running task is only marked ('cancel_requested_at'): it stays 'running' until its run
-- stops. The worker learns of the mark on its next claim renewal (renew.lua); finish.lua turns
-- any outcome of a marked run into 'cancelled', and begin.lua ends a marked task whose worker
-- died, unrun. Each of those, like this script, decides in one atomic call, so a task ends
-- with one terminal record counted once, whichever of cancel and finish comes first.
local r = redis.pcall('HMGET', KEYS[1], 'status', 'entry', 'owner', 'type', 'callback',
  'queue', 'attempts')
if r['err'] then
  return {'missing'}  -- a key of another type under the task's name: no task of ours
end
local status = r[1]
if not status then
  return {'missing'}
end
if ARGV[6] and (r[3] or '') ~= ARGV[5] then
  return {'missing'}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if status == 'running' then
  -- HSETNX: a repeated cancel keeps the time of the first.
  redis.call('HSETNX', KEYS[1], 'cancel_requested_at', now)
  return {'requested'}
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
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'entry', '', 'finished_at', now)
redis.call('HDEL', KEYS[1], 'due_at')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 'cancelled')
redis.call('HINCRBY', KEYS[4], (r[4] or '') .. '|cancelled', 1)
feed_open(KEYS[6])
feed(ARGV[1], r[6] or '', r[4] or '', 'cancelled', tonumber(r[7]) or 0)
if r[5] then  -- its completion webhook (spillway.deliverer)
  redis.call('ZADD', KEYS[5], now, ARGV[1])
end
return {'cancelled'}
