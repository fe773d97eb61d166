-- replay: run a dead-lettered task again under its own id, with a fresh attempt budget.
-- KEYS[1] dead-letter stream   KEYS[2] task record   KEYS[3] shard stream
-- ARGV[1] dead-letter entry id
-- Returns the task id, or false when the dead-letter entry no longer exists or holds no task.
local found = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #found == 0 then
  return false
end
local fields = found[1][2]
local f = {}
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
if not f['type'] or f['type'] == '' or not f['id'] or f['id'] == '' or not f['policy'] then
  return false  -- a malformed entry: there is no task to run
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[2])
local entry = redis.call('XADD', KEYS[3], '*', 'id', f['id'])
redis.call('HSET', KEYS[2],
  'id', f['id'], 'type', f['type'], 'queue', f['queue'], 'payload', f['payload'],
  'status', 'queued', 'attempts', 0, 'prior_attempts', 0,
  'policy', f['policy'],
  'created_at', f['created_at'], 'replayed_at', now, 'entry', entry)
redis.call('XDEL', KEYS[1], ARGV[1])
return f['id']
