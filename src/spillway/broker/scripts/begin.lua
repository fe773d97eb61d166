-- begin: turn a batch of deliveries of one shard into runs, counting attempts from the PEL.
-- KEYS[1] shard stream   KEYS[2] dead-letter stream   KEYS[3] the shard's outcome counters
-- KEYS[4..] the task record of each delivery
-- ARGV[1] group   ARGV[2] result TTL (ms)   ARGV[3] completion channel prefix
-- ARGV[4..] the stream entry id of each delivery, in the order of KEYS[4..]
-- Returns one item per delivery:
--   {'run', type, payload, attempts, policy, created_at}; the policy as the record holds it,
--   'max_retries|timeout|retry_base|retry_cap' (spillway.retry.RetryPolicy)
--   {'skip'}  the entry is stale (task terminal, cancelled, missing or already acknowledged)
--   {'dead'}  deliveries exceeded the attempt limit (the process running it kept dying), or the
--             entry names no task record (malformed): moved to the dead-letter stream unrun
local stream, dead, counters, group = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i = 4, #KEYS do
  local record, entry = KEYS[i], ARGV[i]
  local r = redis.call('HMGET', record, 'status', 'entry', 'type', 'payload', 'policy',
    'prior_attempts', 'id', 'created_at', 'queue')
  local status = r[1]
  local pending = redis.call('XPENDING', stream, group, entry, entry, 1)
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
      local letter = redis.call('XADD', dead, '*', 'id', r[7], 'type', r[3], 'queue', r[9],
        'payload', r[4], 'error', err, 'traceback', '', 'attempts', limit, 'policy', policy,
        'created_at', r[8] or '', 'failed_at', now)
      redis.call('HSET', record, 'status', 'dead', 'attempts', limit, 'error', err,
        'finished_at', now, 'entry', '', 'dead_letter', letter)
      redis.call('PEXPIRE', record, ARGV[2])
      redis.call('XACK', stream, group, entry)
      redis.call('XDEL', stream, entry)
      redis.call('PUBLISH', ARGV[3] .. r[7], 'dead')
      redis.call('HINCRBY', counters, r[3] .. '|dead', 1)
      out[#out + 1] = {'dead'}
    else
      redis.call('HSET', record, 'status', 'running', 'attempts', attempts, 'started_at', now)
      out[#out + 1] = {'run', r[3], r[4], attempts, policy, r[8] or ''}
    end
  end
end
return out
