-- Accept a chat in a session: dedupe by client_msg_id, one answer at a time,
-- record the message, the user's history item and the session's current message.
-- The session's record, history and message list and the owner's session set get the
-- same TTL here, so the owner record never expires before its data. A session whose
-- record expired (or was lost) under an open connection is owned by its user again,
-- from scratch; one that another user owns by now is refused, with nothing written.
-- A new message adds its `message.accepted` event (event_json) to the outbox in this
-- same step (none when outbox_max is 0; counted in outbox_dropped when it is full);
-- a refused or duplicate chat adds none.
-- Per user, across connections and nodes: at most chats_per_minute chats a minute
-- ({'rate_limited', ms until the window ends}) and max_answers answers in progress
-- ({'too_many', ms to wait}); an answer stops counting when it finishes, or at the
-- latest answer_horizon_ms after it started.
-- Returns {'new', message_id}, {'dup', earlier_message_id}, {'busy', active_message_id},
-- {'forbidden', ''}, {'rate_limited', retry_ms} or {'too_many', retry_ms}.
local client_msg, session_active, meta, session_messages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local history, session, user_sessions, outbox = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local outbox_dropped, user_chats, user_answers = KEYS[9], KEYS[10], KEYS[11]
local message_id, active_ttl_ms, client_msg_ttl_s = ARGV[1], ARGV[2], ARGV[3]
local meta_ttl_s, history_max, user_item_json, messages_max = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local now_iso, user_id, session_id, session_ttl_s = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local outbox_max, event_json, chats_per_minute, max_answers = ARGV[12], ARGV[13], ARGV[14], ARGV[15]
local now_ms, answer_horizon_ms = ARGV[16], ARGV[17]
local meta_fields = {unpack(ARGV, 18)}

-- #include outbox

local owner = redis.call('HGET', session, 'owner')
if owner and owner ~= user_id then return {'forbidden', ''} end
local existing = redis.call('GET', client_msg)
if existing then return {'dup', existing} end
redis.call('ZREMRANGEBYSCORE', user_answers, '-inf', now_ms)
if redis.call('ZCARD', user_answers) >= tonumber(max_answers) then
  return {'too_many', '1000'}
end
if tonumber(redis.call('GET', user_chats) or '0') >= tonumber(chats_per_minute) then
  return {'rate_limited', tostring(math.max(redis.call('PTTL', user_chats), 1))}
end
if not redis.call('SET', session_active, message_id, 'NX', 'PX', active_ttl_ms) then
  return {'busy', redis.call('GET', session_active) or ''}
end
if not owner then
  redis.call('DEL', session, history, session_messages)
  redis.call('HSET', session, 'owner', user_id, 'created_at', now_iso)
end
if redis.call('INCR', user_chats) == 1 then redis.call('PEXPIRE', user_chats, 60000) end
redis.call('ZADD', user_answers, tonumber(now_ms) + tonumber(answer_horizon_ms), message_id)
redis.call('PEXPIRE', user_answers, answer_horizon_ms)
redis.call('SET', client_msg, message_id, 'EX', client_msg_ttl_s)
redis.call('HSET', meta, unpack(meta_fields))
redis.call('EXPIRE', meta, meta_ttl_s)
redis.call('RPUSH', session_messages, message_id)
redis.call('LTRIM', session_messages, -tonumber(messages_max), -1)
redis.call('RPUSH', history, user_item_json)
redis.call('LTRIM', history, -tonumber(history_max), -1)
redis.call('HSET', session, 'current_message', message_id, 'last_seen', now_iso)
redis.call('SADD', user_sessions, session_id)
for _, key in ipairs({session, user_sessions, history, session_messages}) do
  redis.call('EXPIRE', key, session_ttl_s)
end
add_event(outbox, outbox_dropped, outbox_max, event_json)
return {'new', message_id}
