-- The event outbox (see services/common/event_outbox.py): a script that changes state
-- adds the event reporting the change in the same step. None when max is 0 (events
-- off); a full outbox (max entries) adds nothing and counts the event in dropped.
-- Included by `-- #include outbox`; takes its keys and args from the script's header.
local function add_event(outbox, dropped, max, event_json)
  if tonumber(max) <= 0 then return end
  if redis.call('XLEN', outbox) < tonumber(max) then
    redis.call('XADD', outbox, '*', 'event', event_json)
  else
    redis.call('INCR', dropped)
  end
end
