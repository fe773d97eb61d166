-- replay: run a dead-lettered task again under its own id, with a fresh attempt budget.
-- KEYS[1] dead-letter stream   KEYS[2] task record   KEYS[3] shard stream
-- KEYS[4] the dead-letter index (hash: task id -> dead-letter entry id)
-- KEYS[5] the shard's feed (feed.lua)
-- ARGV[1] dead-letter entry id   ARGV[2] the task id the caller expects it to hold
-- ARGV[3] the queue of KEYS[1] and KEYS[3]
-- Returns the task id, or false when the dead-letter entry no longer exists or holds no task
-- of that id and queue (a stale index entry or record pointer, or an entry not ours).
local found = redis.pcall('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if found['err'] or #found == 0 then
  if redis.call('HGET', KEYS[4], ARGV[2]) == ARGV[1] then
    redis.call('HDEL', KEYS[4], ARGV[2])
  end
  return false
end
local fields = found[1][2]
local f = {}
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
if not f['type'] or f['type'] == '' or f['id'] ~= ARGV[2] or not f['policy']
    or f['queue'] ~= ARGV[3] then
  return false  -- a malformed entry: there is no task to run
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('DEL', KEYS[2])
local entry = redis.call('XADD', KEYS[3], '*', 'id', f['id'])
redis.call('HSET', KEYS[2],
  'id', f['id'], 'type', f['type'], 'queue', f['queue'], 'payload', f['payload'] or '',
  'status', 'queued', 'attempts', 0, 'prior_attempts', 0,
  'policy', f['policy'],
  'created_at', f['created_at'] or '', 'replayed_at', now, 'entry', entry)
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[2])
feed_open(KEYS[5])
feed(f['id'], f['queue'], f['type'], 'queued', 0)
return f['id']
