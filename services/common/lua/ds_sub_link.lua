-- Add explicit links (POST .../streams), (path, stream id) pairs: a new one at its
-- stream's current tail (0 for a stream not made yet); a stream linked already keeps
-- its cursor. Returns 'ok', 'missing' or 'quota' (past max_links explicit links).
local sub, links = KEYS[1], KEYS[2]
local prefix, now, max_links = ARGV[1], ARGV[2], ARGV[3]
local adding = {unpack(ARGV, 4)}
-- #include ds
-- #include ds_sub

if redis.call('EXISTS', sub) == 0 then return 'missing' end
now = tonumber(now)
local explicit = 0
for _, v in ipairs(redis.call('HVALS', links)) do
  if string.find(v, '^%a*e') then explicit = explicit + 1 end
end
local writes = {}
for i = 1, #adding, 2 do
  local path, stream = adding[i], adding[i + 1]
  local v = redis.call('HGET', links, path)
  if v then
    local flags, acked = link_parse(v)
    if not string.find(flags, 'e', 1, true) then
      writes[#writes + 1] = {path, link_value(flags .. 'e', acked, stream)}
      explicit = explicit + 1
    end
  else
    writes[#writes + 1] = {path, link_value('e', sub_stream_tail(prefix, stream, now) or 0, stream)}
    explicit = explicit + 1
  end
end
if explicit > tonumber(max_links) then return 'quota' end
for _, w in ipairs(writes) do redis.call('HSET', links, w[1], w[2]) end
return 'ok'
