-- feed: prepended to every script that changes a task's status (spillway.broker.scripts).
-- While an admin follows a queue's events (GET /queues/{name}/events, spillway.feed), the
-- shard's feed stream exists: a listening API process creates it and keeps it alive with a
-- TTL (feed_keep.lua), and each status change is appended to it, capped at about 10,000
-- entries. Otherwise the whole cost is one TYPE call per script call. A key of another type
-- under its name (not written by Spillway) reads as no feed.
local feed_key = false
local function feed_open(key)
  if redis.call('TYPE', key)['ok'] == 'stream' then
    feed_key = key
  end
end
local function feed(id, queue, task_type, status, attempts)
  if feed_key and id ~= '' then
    redis.call('XADD', feed_key, 'MAXLEN', '~', 10000, '*', 'id', id, 'queue', queue,
      'type', task_type, 'status', status, 'attempts', attempts)
  end
end
