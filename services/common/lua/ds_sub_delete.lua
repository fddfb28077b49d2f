-- Delete a subscription (DELETE): its record, links and schedule go at once, so any
-- callback, ack or release still in flight finds nothing and moves no cursor.
-- Returns 1 if there was one, else 0.
local sub, links, user_subs, due = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local sid = ARGV[1]

local found = redis.call('DEL', sub, links)
redis.call('HDEL', user_subs, sid)
redis.call('ZREM', due, sid)
if found > 0 then return 1 end
return 0
