-- renew: keep this consumer's claim on deliveries it is still running, so none is reclaimed,
-- and say which of their tasks were asked to stop (cancel.lua marks a running task's record).
-- KEYS[1] shard stream   KEYS[2..] the task record of each entry, in the order of ARGV[3..]
--   (optional: without them no cancel request is reported)
-- ARGV[1] group   ARGV[2] this consumer   ARGV[3..] entry ids
-- Returns {renewed, entry id...}: how many claims were renewed (an entry another consumer
-- has taken over is left alone), then the entries whose task's cancellation was requested.
local out = {0}  -- out[1]: renewed so far
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p > 0 and p[1][2] == ARGV[2] then
    -- JUSTID resets the idle time without counting another delivery.
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    out[1] = out[1] + 1
  end
  local record = KEYS[i - 1]
  if record then
    -- pcall: a key of another type under the task's name is read as no request.
    local mark = redis.pcall('HEXISTS', record, 'cancel_requested_at')
    if mark == 1 then
      out[#out + 1] = ARGV[i]
    end
  end
end
return out
