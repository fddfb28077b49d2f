-- A delivery's outcome: 'ok' (the webhook took it, or the wake event is written);
-- 'done' (the webhook answered {"done": true}: the tails it was sent are acked, the
-- wake ends, and pending work wakes it again); 'fail' (retried at next_at, status
-- 'failed'). An outcome for a wake that is over, or already delivered, changes nothing.
-- Returns the JSON of a delivery the caller makes now, or ''.
local sub, due = KEYS[1], KEYS[2]
local prefix, sid, gen, wake_id, outcome, next_at, now, new_wake_id, hold_ms, sweep_ms = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
-- #include ds
-- #include ds_sub

local s = sub_load(prefix, sid)
if not s or sub_num(s.gen) ~= gen or s.wake_id ~= wake_id or s.deliver == 0 then return '' end
now = tonumber(now)
local take = nil
if outcome == 'fail' then
  s.attempts = s.attempts + 1
  s.status, s.next_at, s.inflight = 'failed', tonumber(next_at), 0
else
  s.attempts, s.status, s.next_at, s.deliver, s.inflight = 0, 'active', 0, 0, 0
  if outcome == 'done' then
    local lkey = sub_links_key(prefix, sid)
    if s.snap ~= '' then
      for path, tail in pairs(cjson.decode(s.snap)) do
        local v = redis.call('HGET', lkey, path)
        if v then
          local flags, acked, stream = link_parse(v)
          if tonumber(tail) > acked then
            redis.call('HSET', lkey, path, link_value(flags, tonumber(tail), stream))
          end
        end
      end
    end
    sub_clear_wake(s)
    local _
    _, take = sub_rewake(prefix, sid, s, new_wake_id, now, tonumber(hold_ms), nil)
  end
end
sub_save(prefix, sid, s)
sub_schedule(due, sid, s, now, tonumber(sweep_ms))
if take then return cjson.encode(take) end
return ''
