-- start: prepended to begin.lua and take.lua (spillway.broker.scripts), after feed.lua: how one
-- delivery of a shard's stream becomes a run, or ends unrun. `start_open` sets what a call's
-- deliveries share (one shard), `start` decides one delivery and returns its item:
--   {'run', type, payload, attempts, policy, created_at[, trace]}; the policy as the record
--   holds it, 'max_retries|timeout|retry_base|retry_cap' (spillway.retry.RetryPolicy); the
--   trace (a W3C traceparent, spillway.tracing) only when the record has one
--   {'skip'}  the entry is stale (task terminal, cancelled, missing or already acknowledged)
--   {'dead'}  deliveries exceeded the attempt limit (the process running it kept dying), or the
--             entry names no task record (malformed): moved to the dead-letter stream unrun
--   {'cancelled'}  a running task whose cancellation was requested (cancel.lua), delivered again
--             because its worker died or shut down before it stopped the run: ended
--             'cancelled', unrun (counted and published like an outcome)
--   {'expired'}  never started and past its 'expires_at': ended 'expired', unrun (counted and
--             published like an outcome). A task that started once (a retry, a redelivery
--             after a worker died mid-run) has 'started_at' and runs on: expiry is about work
--             nobody began.
-- A start is published only for a record marked 'watched' (watch.lua): nobody else listens.
-- A record's fields may be missing (anyone can write to Redis): each is read with a default,
-- since a Lua error here would fail the whole batch.
local counters, callbacks, group, ttl, channels, now, now_text

-- counters: the shard's outcome counters; callbacks: its due callbacks (zset: a task ended
-- here with a 'callback' joins it); group: the consumer group; ttl: the result TTL (ms);
-- channels: the completion channel prefix. Reads the clock once per call.
local function start_open(counters_key, callbacks_key, group_name, ttl_ms, channel_prefix)
  counters, callbacks, group, ttl, channels = counters_key, callbacks_key, group_name, ttl_ms,
    channel_prefix
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  -- Formatted once as an integer: a Lua number passed to redis.call is formatted with
  -- '%.14g', a float conversion that was 3 % of Redis's CPU when done for each task.
  now_text = string.format('%d', now)
end

-- A delivery that ends unrun as `status` (its record just written so): the record expires
-- after the result TTL, the entry is acknowledged and deleted, and the end is published,
-- counted and fed like an outcome; with a `callback`, its webhook is due now. Its item.
local function ended_unrun(stream, record, entry, id, queue, task_type, status, attempts,
    callback)
  redis.call('PEXPIRE', record, ttl)
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  redis.call('PUBLISH', channels .. id, status)
  redis.call('HINCRBY', counters, task_type .. '|' .. status, 1)
  feed(id, queue, task_type, status, attempts)
  if callback then
    redis.call('ZADD', callbacks, now_text, id)
  end
  return {status}
end

-- One delivery: the entry `entry` of `stream` (its lane's dead-letter stream `dead` and index
-- `index`: a hash of task id -> dead-letter entry id), naming the task record `record`.
-- `fresh`: read as new just now (XREADGROUP '>'), so delivered once: its count is not read
-- from the PEL (an XPENDING per task was a tenth of the commands of a start).
local function start(stream, dead, index, record, entry, fresh)
  -- pcall: a key of another type under a task's name is read as no record at all.
  local r = redis.pcall('HMGET', record, 'status', 'entry', 'type', 'payload', 'policy',
    'prior_attempts', 'id', 'created_at', 'queue', 'expires_at', 'cancel_requested_at',
    'watched', 'trace', 'callback')
  if r['err'] then
    r = {}
  end
  local status = r[1]
  -- A fresh delivery is pending (delivered once) unless something acknowledged it since: every
  -- path that does also ends or re-points its record, which the checks below read.
  local pending = fresh and {{entry, '', 0, 1}}
    or redis.call('XPENDING', stream, group, entry, entry, 1)
  local id, task_type = r[7] or '', r[3] or ''
  local payload, queue, created_at = r[4] or '', r[9] or '', r[8] or ''
  if not status and #pending > 0 then
    -- An entry naming no task Spillway wrote: dead-letter it unrun, once.
    redis.call('XADD', dead, '*', 'id', '', 'type', '', 'queue', '', 'payload', '{}',
      'error', 'Malformed: the entry names no known task', 'traceback', '', 'attempts', 1,
      'failed_at', now_text)
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return {'dead'}
  elseif (not status) or r[2] ~= entry or #pending == 0
      or (status ~= 'queued' and status ~= 'running') then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    return {'skip'}
  elseif r[11] then
    redis.call('HSET', record, 'status', 'cancelled', 'finished_at', now_text, 'entry', '')
    return ended_unrun(stream, record, entry, id, queue, task_type, 'cancelled',
      tonumber(r[6]) or 0, r[14])
  elseif r[10] and now >= (tonumber(r[10]) or math.huge)
      and redis.call('HEXISTS', record, 'started_at') == 0 then
    redis.call('HSET', record, 'status', 'expired', 'finished_at', now_text, 'entry', '')
    return ended_unrun(stream, record, entry, id, queue, task_type, 'expired', 0, r[14])
  else
    local attempts = (tonumber(r[6]) or 0) + tonumber(pending[1][4])  -- prior_attempts: 0 if unset
    local policy = r[5] or ''
    local limit = (tonumber(string.match(policy, '^(%d+)|')) or 0) + 1  -- max_retries + 1
    if attempts > limit then
      local err = 'WorkerLost: the process running this task died on each of its ' ..
        limit .. ' attempts'
      local letter = redis.call('XADD', dead, '*', 'id', id, 'type', task_type, 'queue', queue,
        'payload', payload, 'error', err, 'traceback', '', 'attempts', limit, 'policy', policy,
        'created_at', created_at, 'failed_at', now_text)
      if id ~= '' then
        redis.call('HSET', index, id, letter)
      end
      redis.call('HSET', record, 'status', 'dead', 'attempts', limit, 'error', err,
        'finished_at', now_text, 'entry', '', 'dead_letter', letter)
      return ended_unrun(stream, record, entry, id, queue, task_type, 'dead', limit, r[14])
    else
      redis.call('HSET', record, 'status', 'running', 'attempts', string.format('%d', attempts),
        'started_at', now_text)
      if r[12] then  -- someone follows its events (GET /tasks/{id}/events): tell them
        redis.call('PUBLISH', channels .. id, 'running')
      end
      feed(id, queue, task_type, 'running', attempts)
      local item = {'run', task_type, payload, attempts, policy, created_at}
      if r[13] then
        item[7] = r[13]
      end
      return item
    end
  end
end
