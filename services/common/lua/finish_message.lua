-- Write an answer's final record (entry id done_entry_id), its history item, and
-- free the session for the next chat. token '' finishes only a message nobody leases,
-- or one whose lease is held by `evict` (a generator the caller found stalled past the
-- recovery timeout): the lease is then deleted, and the stored last_seq must still be
-- last_seq ('gap' otherwise: the holder moved on after all).
-- The history item is written only while the message's author still owns the session,
-- and the session's record, history and message list get the same TTL with it, so the
-- owner record never expires before its data.
-- A token whose lease lapsed with nobody taking it may still finish (Redis may have lost
-- the lease, or the worker paused); its last_seq must then follow the stored one.
-- Returns 'ok', 'lost' (another token holds the lease), 'leased' (token '' and
-- somebody holds it), 'done' (already finished; nothing written), 'gone' (the message
-- record expired; nothing written) or 'gap' (token given and the stored last_seq is not
-- last_seq: Redis lost chunks the worker must write again first).
-- 'ok' adds the `message.completed` event (event_json) to the outbox in this same step
-- (none when outbox_max is 0; counted in outbox_dropped when it is full); no other
-- outcome adds one. The answer stops counting against its author's answers in progress
-- (user_answers, built by the caller from the message's user_id).
local lease, stream, meta, session_active = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local history, session, session_messages, outbox = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local outbox_dropped, user_answers = KEYS[9], KEYS[10]
local token, message_id, stream_ttl_s, history_item_json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local history_max, last_seq, finish_reason, done_entry_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local now_iso, session_ttl_s, outbox_max, event_json = ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local evict = ARGV[13]
local done_fields = {unpack(ARGV, 14)}

-- #include outbox

local holder = redis.call('GET', lease)
local evicting = token == '' and evict ~= '' and holder == evict
if token == '' then
  if holder and not evicting then return 'leased' end
elseif holder and holder ~= token then
  return 'lost'
end
local status = redis.call('HGET', meta, 'status')
if not status then return 'gone' end
if status == 'done' then return 'done' end
if (token ~= '' or evicting)
    and tonumber(redis.call('HGET', meta, 'last_seq') or '0') ~= tonumber(last_seq) then
  return 'gap'
end
redis.call('XADD', stream, done_entry_id, unpack(done_fields))
redis.call('EXPIRE', stream, stream_ttl_s)
redis.call('HSET', meta, 'status', 'done', 'last_seq', last_seq, 'finish_reason', finish_reason)
if redis.call('GET', session_active) == message_id then redis.call('DEL', session_active) end
redis.call('ZREM', user_answers, message_id)
local author = redis.call('HGET', meta, 'user_id')
if author and redis.call('HGET', session, 'owner') == author then
  redis.call('RPUSH', history, history_item_json)
  redis.call('LTRIM', history, -tonumber(history_max), -1)
  redis.call('HSET', session, 'last_seen', now_iso)
  for _, key in ipairs({session, history, session_messages}) do
    redis.call('EXPIRE', key, session_ttl_s)
  end
end
if token ~= '' or evicting then redis.call('DEL', lease) end
add_event(outbox, outbox_dropped, outbox_max, event_json)
return 'ok'
