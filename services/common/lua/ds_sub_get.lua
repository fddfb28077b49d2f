-- Read a subscription (GET): {its record, its links} as flat field/value lists, or an
-- empty reply when there is none.
local sub, links = KEYS[1], KEYS[2]

local record = redis.call('HGETALL', sub)
if #record == 0 then return {} end
return {record, redis.call('HGETALL', links)}
