-- paused: the queues an operator paused, read in the batch of a worker's due-task check (one
-- round trip for both). A script, not SMEMBERS, because a batch fails on its first error
-- reply: a paused-set key of another type must read as no queue paused, not stop promotions.
-- KEYS[1] the paused set
-- Returns the set's members (untrusted: the caller keeps only queue names).
local members = redis.pcall('SMEMBERS', KEYS[1])
if type(members) ~= 'table' or members.err then
  return {}
end
return members
