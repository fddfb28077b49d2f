-- Create a session owned by user_id, or touch an existing one.
-- Returns {owner, created_at, 1 if created now else 0}.
local session, sessions_active, user_sessions = KEYS[1], KEYS[2], KEYS[3]
local user_id, now_iso, ttl_s, session_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

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
