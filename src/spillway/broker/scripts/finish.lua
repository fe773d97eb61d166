-- finish: write one outcome exactly once, acknowledge and delete the delivery, notify waiters.
-- KEYS[1] task record   KEYS[2] shard stream   KEYS[3] due set   KEYS[4] dead-letter stream
-- KEYS[5] the shard's outcome counters (hash of 'type|outcome' -> count)
-- KEYS[6] the dead-letter index (hash: task id -> dead-letter entry id)
-- KEYS[7] the shard's due callbacks (zset): a terminal task with a 'callback' joins it, due now
-- KEYS[8] the shard's feed (feed.lua)
-- ARGV[1] task id   ARGV[2] stream entry id   ARGV[3] group   ARGV[4] outcome:
--   'succeeded' | 'retry' | 'dead' | 'cancelled' (the run stopped for a cancel request)
-- ARGV[5] result (JSON) or error text   ARGV[6] traceback summary   ARGV[7] result TTL (ms)
-- ARGV[8] retry delay (ms)   ARGV[9] completion channel   ARGV[10] attempts made
-- Returns 1 when the outcome was written, 0 when the delivery was stale (nothing written).
-- A run whose cancellation was requested (cancel.lua marked the record) ends 'cancelled'
-- whatever its outcome: the cancel and the finish are each atomic, so whichever comes first
-- decides, and the task has one terminal record, counted and published once.
local record, stream = KEYS[1], KEYS[2]
redis.call('XACK', stream, ARGV[3], ARGV[2])
redis.call('XDEL', stream, ARGV[2])
-- pcall: a key of another type under the task's name (not Spillway's) is a stale delivery.
local r = redis.pcall('HMGET', record, 'status', 'entry', 'type', 'cancel_requested_at',
  'watched', 'callback', 'queue')
-- Only the delivery the record points at may write: a reclaimed duplicate, or a delivery of a
-- task that was cancelled or already finished, writes nothing.
if r['err'] or r[1] ~= 'running' or r[2] ~= ARGV[2] then
  return 0
end
local task_type = r[3] or ''  -- fields a record may lack (not written by Spillway) read as ''

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local outcome = ARGV[4]
if r[4] then
  outcome = 'cancelled'
end
-- Counted here, so a stale duplicate (which wrote nothing above) is never counted.
redis.call('HINCRBY', KEYS[5], task_type .. '|' .. outcome, 1)
if outcome == 'succeeded' then
  redis.call('HSET', record, 'status', 'succeeded', 'result', ARGV[5], 'finished_at', now,
    'entry', '')
  redis.call('PEXPIRE', record, ARGV[7])
  redis.call('PUBLISH', ARGV[9], 'succeeded')
elseif outcome == 'cancelled' then
  -- No result is kept: the caller asked for the work not to be done.
  redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now, 'entry', '')
  redis.call('PEXPIRE', record, ARGV[7])
  redis.call('PUBLISH', ARGV[9], 'cancelled')
elseif outcome == 'retry' then
  local due = now + tonumber(ARGV[8])
  redis.call('HSET', record, 'status', 'failed', 'error', ARGV[5], 'traceback', ARGV[6],
    'entry', '', 'due_at', due, 'prior_attempts', ARGV[10])
  redis.call('ZADD', KEYS[3], due, ARGV[1])
  if r[5] then  -- a failure with a retry to come is published only to watchers (watch.lua)
    redis.call('PUBLISH', ARGV[9], 'failed')
  end
else
  local f = redis.call('HMGET', record, 'type', 'queue', 'payload', 'policy', 'created_at')
  -- The dead letter keeps the policy whole, so a replay runs under the same one.
  local letter = redis.call('XADD', KEYS[4], '*', 'id', ARGV[1], 'type', f[1] or '',
    'queue', f[2] or '', 'payload', f[3] or '', 'error', ARGV[5], 'traceback', ARGV[6],
    'attempts', ARGV[10], 'policy', f[4] or '', 'created_at', f[5] or '', 'failed_at', now)
  redis.call('HSET', KEYS[6], ARGV[1], letter)
  -- The record points at its dead letter, so a replay by task id needs no search.
  redis.call('HSET', record, 'status', 'dead', 'error', ARGV[5], 'traceback', ARGV[6],
    'finished_at', now, 'entry', '', 'dead_letter', letter)
  redis.call('PEXPIRE', record, ARGV[7])
  redis.call('PUBLISH', ARGV[9], 'dead')
end
feed_open(KEYS[8])
feed(ARGV[1], r[7] or '', task_type, outcome == 'retry' and 'failed' or outcome, ARGV[10])
if r[6] and outcome ~= 'retry' then  -- its completion webhook (spillway.deliverer)
  redis.call('ZADD', KEYS[7], now, ARGV[1])
end
return 1
