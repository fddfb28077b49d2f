-- Append one chunk: only the lease holder may, and not after a cancel.
-- Returns 'ok', 'lost' (the token no longer holds the lease), 'cancelled', or 'gone'
-- (the message record expired: nothing is written, so no key is revived without a TTL).
local lease, stream, meta, cancel = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session_active = KEYS[5]
local token, entry_id, seq, delta = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local written_ms, stream_ttl_s, active_ttl_ms, tokens = ARGV[5], ARGV[6], ARGV[7], ARGV[8]

if redis.call('GET', lease) ~= token then return 'lost' end
if redis.call('EXISTS', meta) == 0 then return 'gone' end
if redis.call('EXISTS', cancel) == 1 then return 'cancelled' end
redis.call('XADD', stream, entry_id, 'd', delta, 't', written_ms)
redis.call('EXPIRE', stream, stream_ttl_s)
redis.call('HSET', meta, 'last_seq', seq, 'status', 'streaming')
redis.call('HINCRBY', meta, 'completion_tokens', tokens)
redis.call('PEXPIRE', session_active, active_ttl_ms)
return 'ok'
