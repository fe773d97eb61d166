-- watch: mark a task's record 'watched', so the scripts also publish its starts and its
-- failures with a retry to come (terminal changes are always published), for its event
-- stream (GET /tasks/{id}/events). A missing record is not created.
-- KEYS[1] the task's record
-- Returns 1 if marked, 0 if there is no such record (or the key holds another type).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'hash' then
  return 0
end
redis.call('HSET', KEYS[1], 'watched', '1')
return 1
