-- A pull-wake worker gives its claim back without acking (POST .../release): fenced
-- as an ack is; the wake ends, and pending work wakes it again (a new wake event).
-- Returns {'ok', the JSON of a delivery to make now or ''}, {'fenced', generation},
-- {'missing'} or {'wrong_type'}.
local sub, due = KEYS[1], KEYS[2]
local prefix, sid, token_gen, gen, wake_id, now, new_wake_id, hold_ms, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
-- #include ds
-- #include ds_sub

local s = sub_load(prefix, sid)
if not s then return {'missing'} end
if s.type ~= 'pull-wake' then return {'wrong_type'} end
now = tonumber(now)
if sub_fenced(s, token_gen, gen, wake_id, now) or s.holder == '' then
  return {'fenced', sub_num(s.gen)}
end
sub_clear_wake(s)
local _, take = sub_rewake(prefix, sid, s, new_wake_id, now, tonumber(hold_ms), nil)
sub_save(prefix, sid, s)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
if take then return {'ok', cjson.encode(take)} end
return {'ok', ''}
