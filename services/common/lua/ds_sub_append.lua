-- An append landed in (or created) one of the user's streams. For each of the user's
-- subscriptions under the stream's root, given as (sub id, the stream's root-relative
-- path, '1' if the pattern matches it, a fresh wake id) quadruples: link the stream if
-- the pattern matches (at `before`, the position before the append: the append is
-- pending), and wake the subscription if it links the stream, is idle and the stream
-- has pending work. Returns a JSON array of the deliveries the caller makes now.
local user_subs, due = KEYS[1], KEYS[2]
local prefix, stream, before, now, hold_ms, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local subs = {unpack(ARGV, 7)}
-- #include ds
-- #include ds_sub

now, before, hold_ms, sweep_ms = tonumber(now), tonumber(before), tonumber(hold_ms), tonumber(sweep_ms)
local out = {}
for i = 1, #subs, 4 do
  local sid, rel, glob, wake_id = subs[i], subs[i + 1], subs[i + 2], subs[i + 3]
  local s = sub_load(prefix, sid)
  if not s then
    redis.call('HDEL', user_subs, sid)
  else
    local lkey = sub_links_key(prefix, sid)
    local v = redis.call('HGET', lkey, rel)
    local acked = nil
    if v then
      local flags, stored
      flags, stored = link_parse(v)
      acked = stored
      if glob == '1' and not string.find(flags, 'g', 1, true) then flags = flags .. 'g' end
      -- Positions only grow in a stream's life: an append that starts before the acked
      -- position is in a stream made anew at this path, whose data is all new.
      if before < acked then acked = before end
      local value = link_value(flags, acked, stream)
      if value ~= v then redis.call('HSET', lkey, rel, value) end
    elseif glob == '1' then
      acked = before
      redis.call('HSET', lkey, rel, link_value('g', acked, stream))
    end
    -- A linked subscription that is idle (or whose lease just ended) wakes if the stream
    -- has pending work; one with a wake in flight is left as it is.
    if acked then
      local expired = sub_expire(s, now)
      local changed = expired
      if s.wake_id == '' then
        local hint = nil
        if (sub_stream_tail(prefix, stream, now) or 0) > acked then hint = rel end
        if hint or expired then -- (after a lease ended, any link's pending work counts)
          local woke, take = sub_rewake(prefix, sid, s, wake_id, now, hold_ms, hint)
          if take then out[#out + 1] = take end
          changed = changed or woke
        end
      end
      if changed then
        sub_save(prefix, sid, s)
        sub_schedule(due, sid, s, now, sweep_ms)
      end
    end
  end
end
if #out == 0 then return '[]' end
return cjson.encode(out)
