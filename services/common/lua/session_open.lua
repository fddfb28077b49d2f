-- Create a session owned by user_id, or touch an existing one. Only its owner touches
-- it: the record, its history and message list and the owner's session set get the
-- same TTL in this one step, so the owner record never expires before its data.
-- Another user's open changes nothing. A new owner never inherits a history or
-- message list left without an owner record (written before these keys expired).
-- A session created now adds its `session.opened` event (event_json) to the outbox in
-- this same step (none when outbox_max is 0; counted in outbox_dropped when it is full).
-- Returns {owner, created_at, 1 if created now else 0}.
local session, user_sessions, history, session_messages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local outbox, outbox_dropped = KEYS[5], KEYS[6]
local user_id, now_iso, ttl_s, session_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local outbox_max, event_json = ARGV[5], ARGV[6]

-- #include outbox

local owner = redis.call('HGET', session, 'owner')
local created = 0
if not owner then
  redis.call('DEL', session, history, session_messages)
  redis.call('HSET', session, 'owner', user_id, 'created_at', now_iso, 'last_seen', now_iso)
  owner, created = user_id, 1
elseif owner ~= user_id then
  return {owner, redis.call('HGET', session, 'created_at') or '', 0}
else
  redis.call('HSET', session, 'last_seen', now_iso)
end
redis.call('SADD', user_sessions, session_id)
for _, key in ipairs({session, user_sessions, history, session_messages}) do
  redis.call('EXPIRE', key, ttl_s)
end
if created == 1 then add_event(outbox, outbox_dropped, outbox_max, event_json) end
return {owner, redis.call('HGET', session, 'created_at') or '', created}
