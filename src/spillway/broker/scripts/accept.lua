-- accept: for each task of a batch (all in one shard and one queue), atomically: idempotency
-- check, backlog limit, task record, and XADD (or ZADD into the due set when delayed). Nothing
-- is trimmed.
-- KEYS[1] the queue's shard stream   KEYS[2] its due set (zset)   KEYS[3] the shard's feed
-- KEYS[3+i] task i's record (hash), for the n tasks; after them, in task order, the
--   idempotency key of each task that has one
-- ARGV[1] backlog limit per shard stream   ARGV[2] idempotency TTL (ms)
-- ARGV[3] deadline (server clock, ms; 0 = none): past it, the caller has already answered 503,
--   so nothing may be written
-- ARGV[4] the queue's name
-- ARGV[5] the arguments each task has: 8, or 10 when a task of the batch has a trace or a
--   callback (the two are left out of batches that use neither: two empty arguments per
--   task were 8 % of an untraced enqueue_many's cost, docs/benchmarks.md)
-- ARGV[6+stride(i-1)..] for task i: id, type, payload (JSON), delay (ms, 0 = now),
--   policy 'max_retries|timeout|retry_base|retry_cap', fingerprint ('' = no idempotency key),
--   owner (the API key's scope that submitted it; '' = none, no field written),
--   expires (ms from now, stored as the absolute 'expires_at'; '' = never, no field written),
--   trace (the W3C traceparent of the span that sent it, spillway.tracing; '' = none, no field),
--   callback (the URL its completion webhook goes to, spillway.webhooks; '' = none, no field)
-- A caller's group (SPILLWAY_FAIR_CALLERS or a caller quota: docs/architecture.md#callers)
-- ends in three more arguments, its caller ('' = none), quota (tasks it may hold waiting) and
-- the consumer group, and two more keys, the lane's held set and rounds. A caller's task is
-- held (not appended to the stream) unless the lane is idle: nothing held and no entry waiting
-- for a reader. Held task k of a caller gets the round after its caller's last (or the lane's
-- current round, if later); workers start held tasks lowest round first (take.lua), so callers
-- take turns. Its waiting tasks are its last round minus the lane's current one; at its quota
-- the reply is 'quota|<waiting>'.
-- What the queue's tasks share (its keys and name) comes once per batch, not once per task:
-- each argument is packed by the caller, then parsed and copied into Lua by Redis. The policy
-- is stored as it comes, in one record field: every field of a new record costs Redis CPU
-- (docs/benchmarks.md#accept-script-arguments).
-- Returns one reply per task: 1 when it was written (under the id it was sent with), else
-- 'duplicate|<id>' or 'conflict|<id>' (the id the key's first task has) or 'full|<backlog>';
-- or the single string 'late' when the deadline has passed (nothing was written). A flat
-- reply, not a {status, id} pair per task: a Lua table and a string less per task to build,
-- send and parse.
local limit, idem_ttl, queue, stride = tonumber(ARGV[1]), ARGV[2], ARGV[4], tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = tonumber(ARGV[3])
if deadline > 0 and now > deadline then
  return 'late'
end
local created_at = string.format('%d', now)  -- formatted once, not once per task
local stream, due = KEYS[1], KEYS[2]
feed_open(KEYS[3])
local n = math.floor((#ARGV - 5) / stride)
-- Counted once per batch, then kept up to date here: each accept adds one. XLEN counts the
-- entries undelivered and in flight, ZCARD the delayed tasks.
local backlog = redis.call('XLEN', stream) + redis.call('ZCARD', due)
local caller, held, rounds, quota, round, last, idle = ''
if #ARGV - 5 > stride * n then
  caller, quota = ARGV[#ARGV - 2], tonumber(ARGV[#ARGV - 1])
  held, rounds = KEYS[#KEYS - 1], KEYS[#KEYS]
  local waiting = redis.call('ZCARD', held)
  backlog = backlog + waiting
  local r = redis.call('HMGET', rounds, '', caller)
  round = tonumber(r[1]) or 0
  last = math.max(tonumber(r[2]) or 0, round)
  if waiting == 0 then
    -- Idle when no entry waits for a reader: every entry is in flight (pcall: a stream not
    -- made yet has no group).
    local pending = redis.pcall('XPENDING', stream, ARGV[#ARGV])
    idle = redis.call('XLEN', stream) <= (type(pending) == 'table' and pending[1] or 0)
  end
end
local first_last = last
local next_idem = 4 + n  -- the idempotency key of the next task that has one
local out = {}
for i = 1, n do
  local a = 6 + stride * (i - 1)
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
  local hold = caller ~= '' and not idle and tonumber(ARGV[a + 3]) == 0
  if not reply and hold and last - round >= quota then
    reply = 'quota|' .. (last - round)
  end
  if not reply then
    local record, delay = KEYS[3 + i], tonumber(ARGV[a + 3])
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
    elseif hold then
      last = last + 1
      redis.call('ZADD', held, last, id)
      redis.call('HSET', record,
        'id', id, 'type', ARGV[a + 1], 'queue', queue, 'payload', ARGV[a + 2],
        'status', 'queued', 'policy', ARGV[a + 4], 'created_at', created_at)
    else
      local entry = redis.call('XADD', stream, '*', 'id', id)
      redis.call('HSET', record,
        'id', id, 'type', ARGV[a + 1], 'queue', queue, 'payload', ARGV[a + 2],
        'status', 'queued', 'policy', ARGV[a + 4], 'created_at', created_at, 'entry', entry)
      idle = false  -- its entry now waits for a reader: the caller's next tasks are held
    end
    if ARGV[a + 6] ~= '' then
      redis.call('HSET', record, 'owner', ARGV[a + 6])
    end
    if ARGV[a + 7] ~= '' then
      -- From the accept, on the server's clock (begin.lua compares it with the same clock).
      redis.call('HSET', record, 'expires_at', string.format('%d', now + tonumber(ARGV[a + 7])))
    end
    if stride == 10 then
      if ARGV[a + 8] ~= '' then
        redis.call('HSET', record, 'trace', ARGV[a + 8])
      end
      if ARGV[a + 9] ~= '' then
        redis.call('HSET', record, 'callback', ARGV[a + 9])
      end
    end
    if idem then
      redis.call('SET', idem, id .. '|' .. fingerprint, 'PX', idem_ttl)
    end
    feed(id, queue, ARGV[a + 1], 'queued', 0)
    backlog = backlog + 1
    reply = 1
  end
  out[i] = reply
end
if last ~= first_last then
  redis.call('HSET', rounds, caller, last)
end
return out
