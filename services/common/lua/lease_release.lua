-- Drop a lease, only if `token` still holds it. Returns 1 if dropped, else 0.
local lease = KEYS[1]
local token = ARGV[1]

if redis.call('GET', lease) == token then return redis.call('DEL', lease) end
return 0
