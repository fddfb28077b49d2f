-- A webhook's callback (kind 'callback') or a pull-wake worker's ack (kind 'ack') for
-- the current wake: fenced unless the token's generation, the request's generation and
-- wake id are the current ones (and, for an ack, the wake is claimed) within the lease.
-- Applies the acks, (path, position) pairs, all or none; extends the lease; with
-- `done`, ends the wake and wakes again if work is pending. Returns {'ok', next wake
-- '1' or '', the JSON of a delivery to make now or ''}, {'fenced', generation},
-- {'invalid_offset', message}, {'missing'} or {'wrong_type'}.
local sub, due = KEYS[1], KEYS[2]
local prefix, sid, kind, token_gen, gen, wake_id, done, now, new_wake_id, hold_ms, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local acks = {unpack(ARGV, 12)}
-- #include ds
-- #include ds_sub

local s = sub_load(prefix, sid)
if not s then return {'missing'} end
local want = 'webhook'
if kind == 'ack' then want = 'pull-wake' end
if s.type ~= want then return {'wrong_type'} end
now = tonumber(now)
if sub_fenced(s, token_gen, gen, wake_id, now) or (kind == 'ack' and s.holder == '') then
  return {'fenced', sub_num(s.gen)}
end
local err = sub_apply_acks(prefix, sid, acks, now)
if err then return {'invalid_offset', err} end
s.lease = now + s.lease_ms
local woke, take = false, nil
if done == '1' then
  sub_clear_wake(s)
  s.attempts, s.status, s.next_at = 0, 'active', 0
  woke, take = sub_rewake(prefix, sid, s, new_wake_id, now, tonumber(hold_ms), nil)
end
sub_save(prefix, sid, s)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
local next_wake, delivery = '', ''
if woke then next_wake = '1' end
if take then delivery = cjson.encode(take) end
return {'ok', next_wake, delivery}
