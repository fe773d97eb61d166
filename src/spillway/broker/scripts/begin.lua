-- begin: turn a batch of deliveries of one shard's stream into runs, counting attempts from the
-- PEL (start.lua decides each: what it returns is this script's reply, one item per delivery).
-- KEYS[1] shard stream   KEYS[2] dead-letter stream   KEYS[3] the shard's outcome counters
-- KEYS[4] the dead-letter index (hash: task id -> dead-letter entry id)
-- KEYS[5] the shard's due callbacks (zset): a task ended here with a 'callback' joins it
-- KEYS[6] the shard's feed (feed.lua)   KEYS[7..] the task record of each delivery
-- ARGV[1] group   ARGV[2] result TTL (ms)   ARGV[3] completion channel prefix
-- ARGV[4] '1' when every delivery is fresh (read with XREADGROUP '>': delivered once, to this
--   consumer, just now), so its delivery count is 1 and the PEL is not asked; '' for
--   reclaimed ones, whose count is read
-- ARGV[5..] the stream entry id of each delivery, in the order of KEYS[7..]
-- The worker's reads under load use take.lua, which reads and starts in one call; this one
-- starts what a blocking read or a reclaim (XAUTOCLAIM) delivered.
local stream, dead, index, fresh = KEYS[1], KEYS[2], KEYS[4], ARGV[4] == '1'
start_open(KEYS[3], KEYS[5], ARGV[1], ARGV[2], ARGV[3])
feed_open(KEYS[6])
local out = {}
for i = 7, #KEYS do
  out[#out + 1] = start(stream, dead, index, KEYS[i], ARGV[i - 2], fresh)
end
return out
