-- due: the ids whose due time has come (read-only; the server clock decides).
-- KEYS[1] due set   ARGV[1] at most this many ids
-- Returns a list of task ids.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
