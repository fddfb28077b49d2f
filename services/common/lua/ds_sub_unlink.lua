-- Remove an explicit link (DELETE .../streams/:path); a link the pattern still makes
-- (keep_glob) stays, with its cursor. Removing an absent link is fine.
-- Returns 'ok' or 'missing' (no such subscription).
local sub, links = KEYS[1], KEYS[2]
local path, keep_glob = ARGV[1], ARGV[2]
-- #include ds
-- #include ds_sub

if redis.call('EXISTS', sub) == 0 then return 'missing' end
local v = redis.call('HGET', links, path)
if v then
  local flags, acked, stream = link_parse(v)
  flags = (string.gsub(flags, 'e', ''))
  if flags == '' and keep_glob == '1' then flags = 'g' end
  if flags == '' then
    redis.call('HDEL', links, path)
  else
    redis.call('HSET', links, path, link_value(flags, acked, stream))
  end
end
return 'ok'
