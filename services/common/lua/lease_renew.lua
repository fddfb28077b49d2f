-- Extend a lease, only while `token` still holds it. Returns 1, or 0 if it is lost.
local lease = KEYS[1]
local token, ttl_ms = ARGV[1], ARGV[2]

if redis.call('GET', lease) == token then
  redis.call('PEXPIRE', lease, ttl_ms)
  return 1
end
return 0
