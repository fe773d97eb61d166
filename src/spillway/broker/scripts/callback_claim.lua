-- callback_claim: take the due completion webhooks of one shard for one delivery each.
-- KEYS[1] the shard's due callbacks (zset: task id -> when, ms)   KEYS[2..] the task records
-- ARGV[1] lease (ms): a claim not settled by then is due again (its worker died mid-delivery)
-- ARGV[2] the claim's token (callback_settle.lua writes only under it)
-- ARGV[3..] the task ids, in the order of KEYS[2..]
-- A task is claimed only if it is still due (another worker may have claimed it since it was
-- listed), its record exists, names a callback not yet settled, and is terminal; any other is
-- dropped from the zset. What the record holds is untrusted: the worker checks the URL again.
-- Returns one {id, field, value, ...} (the whole record) per claimed task.
local callbacks = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local terminal = {succeeded = true, dead = true, cancelled = true, expired = true}
local out = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local score = tonumber(redis.call('ZSCORE', callbacks, id))
  if score and score <= now then
    local r = redis.pcall('HMGET', KEYS[i], 'status', 'callback', 'callback_status')
    if r['err'] or not r[2] or r[2] == '' or not terminal[r[1] or '']
        or (r[3] and r[3] ~= 'pending') then
      redis.call('ZREM', callbacks, id)
    else
      redis.call('ZADD', callbacks, now + tonumber(ARGV[1]), id)
      redis.call('HSET', KEYS[i], 'callback_claim', ARGV[2])
      local item = redis.call('HGETALL', KEYS[i])
      table.insert(item, 1, id)
      out[#out + 1] = item
    end
  end
end
return out
