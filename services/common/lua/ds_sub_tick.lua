-- A node's look at a subscription that is due (`ds_subs_due`): a lease that ended
-- ends its wake; an idle subscription with pending work gets a new wake (the sweep
-- that catches an append whose node died before reporting it); a delivery (or retry)
-- that is due and that no node is making is taken. Returns the JSON of the delivery
-- the caller makes now, or ''.
local sub, due = KEYS[1], KEYS[2]
local prefix, sid, now, wake_id, hold_ms, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- #include ds
-- #include ds_sub

local s = sub_load(prefix, sid)
if not s then
  redis.call('ZREM', due, sid)
  return ''
end
now = tonumber(now)
sub_expire(s, now)
local take = nil
if s.wake_id == '' then
  local _
  _, take = sub_rewake(prefix, sid, s, wake_id, now, tonumber(hold_ms), nil)
elseif s.deliver == 1 and s.next_at <= now and s.inflight <= now then
  take = sub_take(prefix, sid, s, now, tonumber(hold_ms))
end
sub_save(prefix, sid, s)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
if take then return cjson.encode(take) end
return ''
