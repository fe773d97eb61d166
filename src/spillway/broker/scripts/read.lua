-- read: up to ARGV[3] new entries for one consumer from a shard's lanes, taken in the order
-- of KEYS (the highest priority first, or another order the reader rotates to): each lane
-- gives what the ones before it left. One round trip for every lane, and never more entries
-- than asked for, which one XREADGROUP over several streams cannot do (its COUNT is per stream).
-- A lane whose stream gives less than is left starts its held tasks (accept.lua holds callers'
-- tasks: docs/architecture.md#callers), lowest round first: each is appended to the stream
-- and read like any entry, and one more is appended than is read, so a reader blocked on the
-- lane wakes for it and takes its turn too. A held task no longer queued (cancelled while it
-- waited) is dropped; at most 1000 are looked at per lane and call.
-- KEYS[1..n] the lanes' streams (one shard: one hash slot); when ARGV[4] is given, then
--   KEYS[n+1..2n] their held sets and KEYS[2n+1..3n] their rounds
-- ARGV[1] group   ARGV[2] consumer   ARGV[3] count
-- ARGV[4] the shard's task record prefix (a held task's record is that and its id)
-- Returns XREADGROUP's reply shape: {{stream, {{entry id, {field, value, ...}}, ...}}, ...}
local group, consumer, left, prefix = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local lanes = prefix and #KEYS / 3 or #KEYS

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

local function take(stream, out)
  local reply = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', left,
    'STREAMS', stream, '>')
  if reply then
    local entries = reply[1][2]
    out[#out + 1] = {stream, entries}
    left = left - #entries
  end
end

local out = {}
for i = 1, lanes do
  if left <= 0 then
    break
  end
  take(KEYS[i], out)
  if left > 0 and prefix and start_held(KEYS[i], KEYS[lanes + i], KEYS[2 * lanes + i],
      left + 1) > 0 then
    take(KEYS[i], out)
  end
end
return out
