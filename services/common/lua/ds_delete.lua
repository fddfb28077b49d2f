-- Delete a durable stream (DELETE): removed, or soft-deleted while forks read it.
-- Returns 'deleted', 'missing' or 'gone' (already soft-deleted).
local meta, user_streams, user_bytes = KEYS[1], KEYS[2], KEYS[3]
local prefix, id, now = ARGV[1], ARGV[2], ARGV[3]
-- #include ds

local status, m = ds_find(prefix, user_streams, user_bytes, id, tonumber(now))
if status ~= 'ok' then return status end
ds_remove(prefix, user_streams, user_bytes, id, m, 'deleted')
return 'deleted'
