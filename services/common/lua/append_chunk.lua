-- Append one chunk: only the lease holder may, and not after a cancel.
-- Returns 'ok', 'lost' (the token no longer holds the lease) or 'cancelled'.
local lease = KEYS[1]
local stream = KEYS[2]
local meta = KEYS[3]
local cancel = KEYS[4]
local session_active = KEYS[5]
local token = ARGV[1]
local entry_id = ARGV[2]
local seq = ARGV[3]
local delta = ARGV[4]
local written_ms = ARGV[5]
local stream_ttl_s = ARGV[6]
local active_ttl_ms = ARGV[7]
local tokens = ARGV[8]

if redis.call('GET', lease) ~= token then return 'lost' end
if redis.call('EXISTS', cancel) == 1 then return 'cancelled' end
redis.call('XADD', stream, entry_id, 'd', delta, 't', written_ms)
redis.call('EXPIRE', stream, stream_ttl_s)
redis.call('HSET', meta, 'last_seq', seq, 'status', 'streaming')
redis.call('HINCRBY', meta, 'completion_tokens', tokens)
redis.call('PEXPIRE', session_active, active_ttl_ms)
return 'ok'
