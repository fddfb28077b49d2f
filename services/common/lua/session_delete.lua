-- Delete a session of user_id: its record, history and message list, and its entry in
-- the owner's session set, in one step. Refused while an answer is in progress (the
-- worker would write its end into a session that is gone). The answers' own keys
-- (meta, chunk cache) are named by message id and expire on their own.
-- Returns 'deleted', 'missing' (no such session; a stale set entry is removed),
-- 'forbidden' (another owner) or 'busy' (an answer is in progress).
local session, user_sessions, history, session_messages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local active = KEYS[5]
local user_id, session_id = ARGV[1], ARGV[2]

local owner = redis.call('HGET', session, 'owner')
if not owner then
  redis.call('SREM', user_sessions, session_id)
  return 'missing'
end
if owner ~= user_id then return 'forbidden' end
if redis.call('EXISTS', active) == 1 then return 'busy' end
redis.call('DEL', session, history, session_messages)
redis.call('SREM', user_sessions, session_id)
return 'deleted'
