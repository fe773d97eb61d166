-- release: hand back deliveries this consumer will not finish (shutdown), for prompt reclaim.
-- KEYS[1] shard stream   ARGV[1] group   ARGV[2] this consumer   ARGV[3] idle to set (ms)
-- ARGV[4..] entry ids
-- Returns how many were released. IDLE makes them look stale at once; JUSTID keeps the count.
local released = 0
for i = 4, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', ARGV[3], 'JUSTID')
    released = released + 1
  end
end
return released
