-- finish: write each outcome of a batch of one shard's stream exactly once, acknowledge and
-- delete the deliveries, publish each end someone listens for (wait.lua, watch.lua). One call
-- per stream and batch: the calls' fixed cost (and TIME, and the feed's TYPE check) is paid
-- once per batch, not once per task.
-- KEYS[1] shard stream   KEYS[2] due set   KEYS[3] dead-letter stream
-- KEYS[4] the shard's outcome counters (hash of 'type|outcome' -> count)
-- KEYS[5] the dead-letter index (hash: task id -> dead-letter entry id)
-- KEYS[6] the shard's due callbacks (zset): a terminal task with a 'callback' joins it, due now
-- KEYS[7] the shard's feed (feed.lua)   KEYS[8..] the task record of each outcome
-- ARGV[1] group   ARGV[2] result TTL (ms)   ARGV[3] completion channel prefix
-- ARGV[4..] 7 per outcome, in the order of KEYS[8..]: task id, stream entry id, outcome
--   ('succeeded' | 'retry' | 'dead' | 'cancelled': the run stopped for a cancel request),
--   result (JSON) or error text, traceback summary, retry delay (ms), attempts made
-- Returns one item per outcome: 1 when it was written, 0 when the delivery was stale (nothing
-- written). A run whose cancellation was requested (cancel.lua marked the record) ends
-- 'cancelled' whatever its outcome: the cancel and the finish are each atomic, so whichever
-- comes first decides, and the task has one terminal record, counted and published once.
local stream, due_set, dead, counters = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local index, callbacks, group, ttl = KEYS[5], KEYS[6], ARGV[1], ARGV[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Formatted once (begin.lua says why): redis.call formats a Lua number with '%.14g'.
local now_text = string.format('%d', now)
feed_open(KEYS[7])
local out = {}
local acked = {}
-- Counted per batch: one HINCRBY per type and outcome, not one per task (each is a command
-- and about 70 bytes of AOF per task; docs/reliability.md#aof-rewrites).
local counts, counted = {}, {}
for i = 8, #KEYS do
  local record, a = KEYS[i], 4 + (i - 8) * 7
  local id, entry, outcome = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local value, tb, attempts = ARGV[a + 3], ARGV[a + 4], ARGV[a + 6]
  acked[#acked + 1] = entry
  -- pcall: a key of another type under the task's name (not Spillway's) is a stale delivery.
  local r = redis.pcall('HMGET', record, 'status', 'entry', 'type', 'cancel_requested_at',
    'watched', 'callback', 'queue', 'waited')
  -- Only the delivery the record points at may write: a reclaimed duplicate, or a delivery of
  -- a task that was cancelled or already finished, writes nothing.
  if r['err'] or r[1] ~= 'running' or r[2] ~= entry then
    out[#out + 1] = 0
  else
    local task_type = r[3] or ''  -- fields a record may lack (not Spillway's) read as ''
    local channel = ARGV[3] .. id
    -- Its end is published only when someone listens: a waiter (wait.lua) or a watcher
    -- (watch.lua) marked the record before reading it (nobody else subscribes).
    local listened = r[5] or r[8]
    if r[4] then
      outcome = 'cancelled'
    end
    -- Counted here, so a stale duplicate (which wrote nothing above) is never counted.
    local counter = task_type .. '|' .. outcome
    if not counts[counter] then
      counted[#counted + 1] = counter
    end
    counts[counter] = (counts[counter] or 0) + 1
    if outcome == 'succeeded' then
      redis.call('HSET', record, 'status', 'succeeded', 'result', value, 'finished_at', now_text,
        'entry', '')
      redis.call('PEXPIRE', record, ttl)
      if listened then
        redis.call('PUBLISH', channel, 'succeeded')
      end
    elseif outcome == 'cancelled' then
      -- No result is kept: the caller asked for the work not to be done.
      redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now_text, 'entry', '')
      redis.call('PEXPIRE', record, ttl)
      if listened then
        redis.call('PUBLISH', channel, 'cancelled')
      end
    elseif outcome == 'retry' then
      local due = now + tonumber(ARGV[a + 5])
      redis.call('HSET', record, 'status', 'failed', 'error', value, 'traceback', tb,
        'entry', '', 'due_at', due, 'prior_attempts', attempts)
      redis.call('ZADD', due_set, due, id)
      if r[5] then  -- a failure with a retry to come is published only to watchers (watch.lua)
        redis.call('PUBLISH', channel, 'failed')
      end
    else
      local f = redis.call('HMGET', record, 'type', 'queue', 'payload', 'policy', 'created_at')
      -- The dead letter keeps the policy whole, so a replay runs under the same one.
      local letter = redis.call('XADD', dead, '*', 'id', id, 'type', f[1] or '',
        'queue', f[2] or '', 'payload', f[3] or '', 'error', value, 'traceback', tb,
        'attempts', attempts, 'policy', f[4] or '', 'created_at', f[5] or '', 'failed_at', now_text)
      redis.call('HSET', index, id, letter)
      -- The record points at its dead letter, so a replay by task id needs no search.
      redis.call('HSET', record, 'status', 'dead', 'error', value, 'traceback', tb,
        'finished_at', now_text, 'entry', '', 'dead_letter', letter)
      redis.call('PEXPIRE', record, ttl)
      if listened then
        redis.call('PUBLISH', channel, 'dead')
      end
    end
    feed(id, r[7] or '', task_type, outcome == 'retry' and 'failed' or outcome, attempts)
    if r[6] and outcome ~= 'retry' then  -- its completion webhook (spillway.deliverer)
      redis.call('ZADD', callbacks, now_text, id)
    end
    out[#out + 1] = 1
  end
end
for _, counter in ipairs(counted) do
  redis.call('HINCRBY', counters, counter, counts[counter])
end
-- Acknowledged and deleted after the records are read: each record check compares the entry
-- it holds, not the PEL, so the order changes nothing. A call per 500 ids (unpack's bound).
for first = 1, #acked, 500 do
  local last = math.min(first + 499, #acked)
  redis.call('XACK', stream, group, unpack(acked, first, last))
  redis.call('XDEL', stream, unpack(acked, first, last))
end
return out
