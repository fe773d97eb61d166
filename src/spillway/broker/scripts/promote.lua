-- promote: move due tasks (delayed, or waiting for a retry) from the due set to the stream.
-- KEYS[1] due set   KEYS[2] shard stream   KEYS[3..] the task record of each id
-- ARGV[1..] task ids, in the order of KEYS[3..]
-- Returns the number of tasks appended to the stream. Safe to run from many workers at once:
-- each id is promoted by whoever removes it from the due set first.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local promoted = 0
for i = 3, #KEYS do
  local id = ARGV[i - 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now then
    redis.call('ZREM', KEYS[1], id)
    local status = redis.call('HGET', KEYS[i], 'status')
    if status == 'queued' or status == 'failed' then
      local entry = redis.call('XADD', KEYS[2], '*', 'id', id)
      redis.call('HSET', KEYS[i], 'status', 'queued', 'entry', entry)
      redis.call('HDEL', KEYS[i], 'due_at')
      promoted = promoted + 1
    end
  end
end
return promoted
