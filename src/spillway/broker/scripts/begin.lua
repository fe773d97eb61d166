-- begin: turn a batch of deliveries of one shard into runs, counting attempts from the PEL.
-- KEYS[1] shard stream   KEYS[2] dead-letter stream   KEYS[3] the shard's outcome counters
-- KEYS[4] the dead-letter index (hash: task id -> dead-letter entry id)
-- KEYS[5..] the task record of each delivery
-- ARGV[1] group   ARGV[2] result TTL (ms)   ARGV[3] completion channel prefix
-- ARGV[4..] the stream entry id of each delivery, in the order of KEYS[5..]
-- A record's fields may be missing (anyone can write to Redis): each is read with a default,
-- since a Lua error here would fail the whole batch.
-- Returns one item per delivery:
--   {'run', type, payload, attempts, policy, created_at}; the policy as the record holds it,
--   'max_retries|timeout|retry_base|retry_cap' (spillway.retry.RetryPolicy)
--   {'skip'}  the entry is stale (task terminal, cancelled, missing or already acknowledged)
--   {'dead'}  deliveries exceeded the attempt limit (the process running it kept dying), or the
--             entry names no task record (malformed): moved to the dead-letter stream unrun
local stream, dead, counters, index, group = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 5, #KEYS do
  local record, entry = KEYS[i], ARGV[i - 1]
  -- pcall: a key of another type under a task's name is read as no record at all.
  local r = redis.pcall('HMGET', record, 'status', 'entry', 'type', 'payload', 'policy',
    'prior_attempts', 'id', 'created_at', 'queue')
  if r['err'] then
    r = {}
  end
  local status = r[1]
  local pending = redis.call('XPENDING', stream, group, entry, entry, 1)
  local id, task_type = r[7] or '', r[3] or ''
  local payload, queue, created_at = r[4] or '', r[9] or '', r[8] or ''
  if not status and #pending > 0 then
    -- An entry naming no task Spillway wrote: dead-letter it unrun, once.
    redis.call('XADD', dead, '*', 'id', '', 'type', '', 'queue', '', 'payload', '{}',
      'error', 'Malformed: the entry names no known task', 'traceback', '', 'attempts', 1,
      'failed_at', now)
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    out[#out + 1] = {'dead'}
  elseif (not status) or r[2] ~= entry or #pending == 0
      or (status ~= 'queued' and status ~= 'running') then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    out[#out + 1] = {'skip'}
  else
    local attempts = (tonumber(r[6]) or 0) + tonumber(pending[1][4])  -- prior_attempts: 0 if unset
    local policy = r[5] or ''
    local limit = (tonumber(string.match(policy, '^(%d+)|')) or 0) + 1  -- max_retries + 1
    if attempts > limit then
      local err = 'WorkerLost: the process running this task died on each of its ' ..
        limit .. ' attempts'
      local letter = redis.call('XADD', dead, '*', 'id', id, 'type', task_type, 'queue', queue,
        'payload', payload, 'error', err, 'traceback', '', 'attempts', limit, 'policy', policy,
        'created_at', created_at, 'failed_at', now)
      if id ~= '' then
        redis.call('HSET', index, id, letter)
      end
      redis.call('HSET', record, 'status', 'dead', 'attempts', limit, 'error', err,
        'finished_at', now, 'entry', '', 'dead_letter', letter)
      redis.call('PEXPIRE', record, ARGV[2])
      redis.call('XACK', stream, group, entry)
      redis.call('XDEL', stream, entry)
      redis.call('PUBLISH', ARGV[3] .. id, 'dead')
      redis.call('HINCRBY', counters, task_type .. '|dead', 1)
      out[#out + 1] = {'dead'}
    else
      redis.call('HSET', record, 'status', 'running', 'attempts', attempts, 'started_at', now)
      out[#out + 1] = {'run', task_type, payload, attempts, policy, created_at}
    end
  end
end
return out
