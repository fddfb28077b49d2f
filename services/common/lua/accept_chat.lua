-- Accept a chat in a session: dedupe by client_msg_id, one answer at a time,
-- record the message, the user's history item and the session's current message.
-- Returns {'new', message_id}, {'dup', earlier_message_id} or {'busy', active_message_id}.
local client_msg, session_active, meta, session_messages = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local history, session = KEYS[5], KEYS[6]
local message_id, active_ttl_ms, client_msg_ttl_s = ARGV[1], ARGV[2], ARGV[3]
local meta_ttl_s, history_max, user_item_json, messages_max = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local now_iso = ARGV[8]
local meta_fields = {unpack(ARGV, 9)}

local existing = redis.call('GET', client_msg)
if existing then return {'dup', existing} end
if not redis.call('SET', session_active, message_id, 'NX', 'PX', active_ttl_ms) then
  return {'busy', redis.call('GET', session_active) or ''}
end
redis.call('SET', client_msg, message_id, 'EX', client_msg_ttl_s)
redis.call('HSET', meta, unpack(meta_fields))
redis.call('EXPIRE', meta, meta_ttl_s)
redis.call('RPUSH', session_messages, message_id)
redis.call('LTRIM', session_messages, -tonumber(messages_max), -1)
redis.call('RPUSH', history, user_item_json)
redis.call('LTRIM', history, -tonumber(history_max), -1)
redis.call('HSET', session, 'current_message', message_id, 'last_seen', now_iso)
return {'new', message_id}
