-- Create a subscription (PUT {root}/__ds/subscriptions/:id), or re-confirm it: the same
-- configuration hash again answers 'exists', another one 'conflict'. Links its explicit
-- streams and the existing streams its pattern matches (the caller lists both, as
-- (path, stream id, 'e' or 'g') triples), each at its stream's current tail, so nothing
-- written before the subscription is replayed; a pattern's stream that is gone by now
-- is not linked. Returns 'created', 'exists', 'conflict' or 'quota' (max_subs held).
local sub, user_subs, due = KEYS[1], KEYS[2], KEYS[3]
local prefix, sid, hash, config, index, now, max_subs, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local links = {unpack(ARGV, 9)}
-- #include ds
-- #include ds_sub

local existing = redis.call('HGET', sub, 'hash')
if existing then
  if existing == hash then return 'exists' end
  return 'conflict'
end
if redis.call('HLEN', user_subs) >= tonumber(max_subs) then return 'quota' end
now = tonumber(now)
local fields = {'hash', hash}
for k, v in pairs(cjson.decode(config)) do
  fields[#fields + 1] = k
  fields[#fields + 1] = v
end
redis.call('HSET', sub, unpack(fields))
local lkey = sub_links_key(prefix, sid)
for i = 1, #links, 3 do
  local path, stream, flag = links[i], links[i + 1], links[i + 2]
  local tail = sub_stream_tail(prefix, stream, now)
  if tail or flag == 'e' then
    local v = redis.call('HGET', lkey, path)
    if v then
      local flags, acked = link_parse(v)
      if not string.find(flags, flag, 1, true) then flags = flags .. flag end
      redis.call('HSET', lkey, path, link_value(flags, acked, stream))
    else
      redis.call('HSET', lkey, path, link_value(flag, tail or 0, stream))
    end
  end
end
local s = sub_load(prefix, sid)
sub_clear_wake(s)
s.gen, s.next_at, s.attempts, s.status, s.trigger = 0, 0, 0, 'active', ''
sub_save(prefix, sid, s)
redis.call('HSET', user_subs, sid, index)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
return 'created'
