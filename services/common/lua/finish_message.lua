-- Write an answer's final record (entry id done_entry_id), its history item, and
-- free the session for the next chat. token '' finishes only a message nobody leases.
-- Returns 'ok', 'lost' (another token holds the lease), 'leased' (token '' and
-- somebody holds it), 'done' (already finished; nothing written) or 'gone' (the message
-- record expired; nothing written).
local lease, stream, meta, session_active = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local history = KEYS[5]
local token, message_id, stream_ttl_s, history_item_json = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local history_max, last_seq, finish_reason, done_entry_id = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local done_fields = {unpack(ARGV, 9)}

local holder = redis.call('GET', lease)
if token == '' then
  if holder then return 'leased' end
elseif holder ~= token then
  return 'lost'
end
local status = redis.call('HGET', meta, 'status')
if not status then return 'gone' end
if status == 'done' then return 'done' end
redis.call('XADD', stream, done_entry_id, unpack(done_fields))
redis.call('EXPIRE', stream, stream_ttl_s)
redis.call('HSET', meta, 'status', 'done', 'last_seq', last_seq, 'finish_reason', finish_reason)
if redis.call('GET', session_active) == message_id then redis.call('DEL', session_active) end
redis.call('RPUSH', history, history_item_json)
redis.call('LTRIM', history, -tonumber(history_max), -1)
if token ~= '' then redis.call('DEL', lease) end
return 'ok'
