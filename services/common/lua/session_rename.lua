-- Set the title of a session, if user_id owns it. The TTLs are left as they are: a
-- rename is not activity.
-- Returns 'ok', 'missing' (no such session) or 'forbidden' (another owner).
local session = KEYS[1]
local user_id, title = ARGV[1], ARGV[2]

local owner = redis.call('HGET', session, 'owner')
if not owner then return 'missing' end
if owner ~= user_id then return 'forbidden' end
redis.call('HSET', session, 'title', title)
return 'ok'
