-- Extend a lease while `token` holds it, or take it back if it lapsed and nobody took
-- it meanwhile (a paused holder, or Redis lost the key). Returns 1, or 0 if another
-- token holds it (the lease is lost).
local lease = KEYS[1]
local token, ttl_ms = ARGV[1], ARGV[2]

local holder = redis.call('GET', lease)
if holder == token then
  redis.call('PEXPIRE', lease, ttl_ms)
  return 1
end
if not holder and token ~= '' then
  redis.call('SET', lease, token, 'PX', ttl_ms)
  return 1
end
return 0
