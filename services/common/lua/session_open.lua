-- Create a session owned by user_id, or touch an existing one.
-- Returns {owner, created_at, 1 if created now else 0}.
local session = KEYS[1]
local sessions_active = KEYS[2]
local user_sessions = KEYS[3]
local user_id = ARGV[1]
local now_iso = ARGV[2]
local ttl_s = ARGV[3]
local session_id = ARGV[4]

local owner = redis.call('HGET', session, 'owner')
if not owner then
  redis.call('HSET', session, 'owner', user_id, 'created_at', now_iso, 'last_seen', now_iso)
  redis.call('HSET', sessions_active, session_id, user_id)
  redis.call('SADD', user_sessions, session_id)
  redis.call('EXPIRE', session, ttl_s)
  return {user_id, now_iso, 1}
end
redis.call('HSET', session, 'last_seen', now_iso)
redis.call('EXPIRE', session, ttl_s)
return {owner, redis.call('HGET', session, 'created_at'), 0}
