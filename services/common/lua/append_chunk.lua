-- Append chunk `seq` as the holder of the generator lease `token`, never after a cancel.
-- A token whose lease lapsed with nobody taking it takes it back (Redis may have lost it
-- in a restart, or the worker paused). `seq` must follow the stored last_seq: if Redis
-- came back with fewer chunks than the worker wrote, it answers 'gap' and the worker
-- writes the missing ones again (from memory, identically) before this one.
-- Returns 'ok', 'lost' (another token holds the lease, or the answer is finished),
-- 'cancelled', 'gone' (the message record expired: nothing is written, so no key is
-- revived without a TTL) or 'gap'.
local lease, stream, meta, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session_active = KEYS[5]
local token, entry_id, seq, delta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local written_ms, stream_ttl_s, active_ttl_ms, tokens = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local lease_ttl_ms = ARGV[9]

local holder = redis.call('GET', lease)
if token == '' or (holder and holder ~= token) then return 'lost' end
local status = redis.call('HGET', meta, 'status')
if not status then return 'gone' end
if status == 'done' then return 'lost' end
if tonumber(redis.call('HGET', meta, 'last_seq') or '0') + 1 ~= tonumber(seq) then
  return 'gap'
end
if redis.call('EXISTS', cancel) == 1 then return 'cancelled' end
if not holder then redis.call('SET', lease, token, 'PX', lease_ttl_ms) end
redis.call('XADD', stream, entry_id, 'd', delta, 't', written_ms)
redis.call('EXPIRE', stream, stream_ttl_s)
redis.call('HSET', meta, 'last_seq', seq, 'status', 'streaming')
redis.call('HINCRBY', meta, 'completion_tokens', tokens)
redis.call('PEXPIRE', session_active, active_ttl_ms)
return 'ok'
