-- A pull-wake worker claims the subscription (POST .../claim). Returns {'claimed',
-- holder, generation} while another worker's lease runs; {'no_pending'}; {'missing'};
-- {'wrong_type'}; else the current wake (or a new generation) becomes the worker's,
-- its lease starting now: {'ok', generation, wake id, streams JSON, lease ms}.
local sub, due = KEYS[1], KEYS[2]
local prefix, sid, worker, now, wake_id, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- #include ds
-- #include ds_sub

local s = sub_load(prefix, sid)
if not s then return {'missing'} end
if s.type ~= 'pull-wake' then return {'wrong_type'} end
now = tonumber(now)
sub_expire(s, now)
local reply
if s.holder ~= '' then
  reply = {'claimed', s.holder, sub_num(s.gen)}
else
  local infos = sub_infos(prefix, sid, now)
  local first = sub_first_pending(infos)
  if not first then
    sub_clear_wake(s)
    reply = {'no_pending'}
  else
    if s.wake_id == '' then sub_new_wake(s, wake_id, first, now) end
    s.holder, s.lease, s.deliver, s.inflight = worker, now + s.lease_ms, 0, 0
    s.attempts, s.status, s.next_at = 0, 'active', 0
    reply = {'ok', sub_num(s.gen), s.wake_id, cjson.encode(sub_streams_json(infos)), sub_num(s.lease_ms)}
  end
end
sub_save(prefix, sid, s)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
return reply
