-- renew: keep this consumer's claim on deliveries it is still running, so none is reclaimed.
-- KEYS[1] shard stream   ARGV[1] group   ARGV[2] this consumer   ARGV[3..] entry ids
-- Returns how many claims were renewed. An entry another consumer has taken over is left alone.
local renewed = 0
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    -- JUSTID resets the idle time without counting another delivery.
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    renewed = renewed + 1
  end
end
return renewed
