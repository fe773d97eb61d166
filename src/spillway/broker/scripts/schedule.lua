-- schedule: record a schedule's state unless a newer tick is recorded already. Workers run a
-- schedule side by side; one that was slow must not set its state back to an older tick.
-- The stored state is read as untrusted: one that does not decode, or whose tick is not a
-- number below ARGV[4] (a day past the writer's clock), is overwritten.
-- KEYS[1] the schedules hash
-- ARGV[1] schedule name   ARGV[2] the newest tick seen (ms)   ARGV[3] the state (JSON)
-- ARGV[4] the latest tick (ms) a stored state may believably hold
-- Returns 1 if written, 0 if a newer tick was there.
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if raw then
  local ok, state = pcall(cjson.decode, raw)
  if ok and type(state) == 'table' then
    local seen = tonumber(state['seen_ms'])
    if seen and seen <= tonumber(ARGV[4]) and seen > tonumber(ARGV[2]) then
      return 0
    end
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
