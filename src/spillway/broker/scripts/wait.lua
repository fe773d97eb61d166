-- wait: a task's status for a caller about to wait for its end (spillway.broker.waiters, which
-- has subscribed to its completion channel first). Unless the task has ended, its record is
-- marked 'waited', from which point finish.lua publishes its end: a run's end is published only
-- for a record someone waits on or watches (watch.lua), as nobody else listens, so the tasks
-- nobody waits for cost no PUBLISH (one per task was a command of every finish, and on a
-- cluster a message to every node).
-- KEYS[1] the task's record
-- Returns {status, 1} when marked (or ended), {status, 0} when the mark could not be written
-- (a full Redis before 7.0, which has no allow-oom flag: the caller then polls), and
-- {false, 1} when there is no record. A key of another type fails as HGET does (WRONGTYPE).
local status = redis.call('HGET', KEYS[1], 'status')
if not status or status == 'succeeded' or status == 'dead' or status == 'cancelled'
    or status == 'expired' then
  return {status, 1}
end
local marked = redis.pcall('HSET', KEYS[1], 'waited', '1')
if type(marked) == 'table' and marked['err'] then
  return {status, 0}
end
return {status, 1}
