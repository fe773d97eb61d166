-- take: up to ARGV[3] new entries for one consumer from a shard's lanes, taken in the order
-- of KEYS (the highest priority first, or another order the reader rotates to), each started
-- at once (start.lua): the worker's read and its begin in one call and one round trip. Each
-- lane gives what the ones before it left. Never more entries than asked for, which one
-- XREADGROUP over several streams cannot do (its COUNT is per stream).
-- A lane whose stream gives less than is left starts its held tasks (accept.lua holds callers'
-- tasks: docs/architecture.md#callers), lowest round first: each is appended to the stream
-- and read like any entry, and one more is appended than is read, so a reader blocked on the
-- lane wakes for it and takes its turn too. A held task no longer queued (cancelled while it
-- waited) is dropped; at most 1000 are looked at per lane and call.
-- KEYS[1..n] the lanes' streams (one shard: one hash slot), KEYS[n+1..2n] their held sets,
--   KEYS[2n+1..3n] their rounds, KEYS[3n+1..4n] their dead-letter streams, KEYS[4n+1..5n]
--   their dead-letter indexes; then the shard's outcome counters, due callbacks and feed
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count
-- ARGV[4] the shard's task record prefix (an entry's record is that and its task id: a key
--   not in KEYS, in the same hash slot)
-- ARGV[5] result TTL (ms)   ARGV[6] completion channel prefix
-- Returns, per lane that gave entries, {stream, {{entry id, task id, item}, ...}}: the item
-- start.lua returned; for an entry without a task id (not written by Spillway), {entry id,
-- false, its fields (a flat list)}, unstarted: the caller dead-letters it.
local consumer, left, prefix = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local lanes = (#KEYS - 3) / 5
-- The group, the clock and what a start writes besides the record (start.lua).
start_open(KEYS[5 * lanes + 1], KEYS[5 * lanes + 2], ARGV[1], ARGV[5], ARGV[6])
feed_open(KEYS[5 * lanes + 3])

local function start_held(stream, held, rounds, want)
  local started, looked, round = 0, 0, nil
  while started < want and looked < 1000 do
    local top = redis.call('ZPOPMIN', held, want - started)
    if #top == 0 then
      break
    end
    for j = 1, #top, 2 do
      looked = looked + 1
      round = top[j + 1]
      local record = prefix .. top[j]
      local status = redis.pcall('HGET', record, 'status')
      if status == 'queued' then
        local entry = redis.call('XADD', stream, '*', 'id', top[j])
        redis.call('HSET', record, 'entry', entry)
        started = started + 1
      end
    end
  end
  if round then
    redis.call('HSET', rounds, '', round)
  end
  return started
end

local function task_id_of(fields)
  for j = 1, #fields - 1, 2 do
    if fields[j] == 'id' then
      return fields[j + 1]
    end
  end
  return nil
end

local function take(i, out)
  local stream = KEYS[i]
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', left,
    'STREAMS', stream, '>')
  if reply then
    local entries, items = reply[1][2], {}
    local dead, index = KEYS[3 * lanes + i], KEYS[4 * lanes + i]
    for j = 1, #entries do
      local entry, fields = entries[j][1], entries[j][2]
      local id = task_id_of(fields)
      if id then
        items[j] = {entry, id, start(stream, dead, index, prefix .. id, entry, true)}
      else
        items[j] = {entry, false, fields}
      end
    end
    out[#out + 1] = {stream, items}
    left = left - #entries
  end
end

local out = {}
for i = 1, lanes do
  if left <= 0 then
    break
  end
  take(i, out)
  if left > 0 and start_held(KEYS[i], KEYS[lanes + i], KEYS[2 * lanes + i], left + 1) > 0 then
    take(i, out)
  end
end
return out
