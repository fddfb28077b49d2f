-- Extend a lease while `token` holds it, or take it back if it lapsed and nobody took
-- it meanwhile (a paused holder, or Redis lost the key), unless the answer is over: a
-- message whose record is finished (or gone) is not leased again, so a holder that was
-- evicted as stuck stays out. Returns 1, or 0 if another token holds it or the answer
-- is over (the lease is lost).
local lease, meta = KEYS[1], KEYS[2]
local token, ttl_ms = ARGV[1], ARGV[2]

local holder = redis.call('GET', lease)
if holder == token then
  redis.call('PEXPIRE', lease, ttl_ms)
  return 1
end
if not holder and token ~= '' then
  local status = redis.call('HGET', meta, 'status')
  if not status or status == 'done' then return 0 end
  redis.call('SET', lease, token, 'PX', ttl_ms)
  return 1
end
return 0
