-- feed_keep: make a shard's feed stream (feed.lua) exist for ARGV[1] ms more, for an API
-- process whose admins follow queue events. A new feed starts with one marker entry (no 'id'
-- field; readers skip it), so the feed's newest entry always exists: a reader that resumes
-- after entry X finds X unless the feed was trimmed past it or expired (a gap it reports).
-- KEYS[1] the feed stream   ARGV[1] its time to live (ms)
-- Returns {the id of the feed's newest entry, 1 if the feed was made now else 0}: a feed made
-- again while followed (it expired, Redis lost it) missed the changes in between.
local made = 0
if redis.call('TYPE', KEYS[1])['ok'] ~= 'stream' then
  redis.call('DEL', KEYS[1])  -- another type under our key name: not a feed, replaced
  redis.call('XADD', KEYS[1], '*', 'open', '1')
  made = 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #newest == 0 then
  return {redis.call('XADD', KEYS[1], '*', 'open', '1'), 1}  -- emptied by hand: marked again
end
return {newest[1][1], made}
