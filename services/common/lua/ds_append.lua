-- Append to a durable stream (POST), and close it if asked, in one step with the
-- Stream-Seq check and the idempotent producer's check and state (PROTOCOL.md 5.2.1:
-- validation, append and producer state are atomic here).
-- Returns {status, tail, closed, a, b, subscribed}: subscribed is '1' when the user has
-- subscriptions (the caller then reports the append to them), and: 'ok' / 'closing' appended (and closed);
-- 'dup' (a producer's retry: nothing written, a = its last seq); 'closed' (409);
-- 'missing', 'gone', 'type_mismatch', 'stream_seq', 'stale_epoch' (a = the current
-- epoch), 'epoch_seq' (a new epoch must start at 0), 'seq_gap' (a = expected,
-- b = received), 'quota_bytes'.
local meta, data, producers, user_streams, user_bytes = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user_subs = KEYS[6]
local prefix, id, now, ctn, closing, stream_seq = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local producer, epoch, pseq, max_bytes = ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local entries = {unpack(ARGV, 11)}
-- #include ds

now = tonumber(now)
local status, m = ds_find(prefix, user_streams, user_bytes, id, now)
if status ~= 'ok' then return {status, '0', '', '', ''} end
local has_body = #entries > 0

if m.closed == '1' then
  local tuple = producer .. ' ' .. epoch .. ' ' .. pseq
  if producer ~= '' and m.closed_by == tuple then return {'dup', m.tail, '1', pseq, ''} end
  if closing == '1' and not has_body then return {'ok', m.tail, '1', '', ''} end
  return {'closed', m.tail, '1', '', ''}
end
if has_body and ctn ~= m.ctn then return {'type_mismatch', m.tail, '', '', ''} end

local state_epoch, state_seq = nil, nil
if producer ~= '' then
  local state = redis.call('HGET', producers, producer)
  epoch, pseq = tonumber(epoch), tonumber(pseq)
  if state then
    local sp = string.find(state, ' ')
    state_epoch, state_seq = tonumber(string.sub(state, 1, sp - 1)), tonumber(string.sub(state, sp + 1))
  end
  if not state then
    if pseq ~= 0 then return {'seq_gap', m.tail, '', '0', tostring(pseq)} end
  elseif epoch < state_epoch then
    return {'stale_epoch', m.tail, '', tostring(state_epoch), ''}
  elseif epoch > state_epoch then
    if pseq ~= 0 then return {'epoch_seq', m.tail, '', '', ''} end
  elseif pseq <= state_seq then
    return {'dup', m.tail, '', tostring(state_seq), ''}
  elseif pseq ~= state_seq + 1 then
    return {'seq_gap', m.tail, '', tostring(state_seq + 1), tostring(pseq)}
  end
end
if stream_seq ~= '' and (m.sseq or '') ~= '' and stream_seq <= m.sseq then
  return {'stream_seq', m.tail, '', '', ''}
end

local incoming = 0
for i = 1, #entries, 3 do incoming = incoming + tonumber(entries[i]) end
if incoming > 0 and tonumber(redis.call('HGET', user_bytes, '_total') or '0') + incoming > tonumber(max_bytes) then
  return {'quota_bytes', m.tail, '', '', ''}
end

local tail, bytes = ds_write(data, m, entries)
local fields = {'tail', tail}
if stream_seq ~= '' then fields[#fields + 1] = 'sseq'; fields[#fields + 1] = stream_seq end
if producer ~= '' then
  redis.call('HSET', producers, producer, epoch .. ' ' .. pseq)
  if closing == '1' then
    fields[#fields + 1] = 'closed_by'
    fields[#fields + 1] = producer .. ' ' .. epoch .. ' ' .. pseq
  end
end
redis.call('HSET', meta, unpack(fields))
if closing == '1' then ds_close(data, meta, tail) end
ds_quota_add(user_streams, user_bytes, id, m, bytes)
ds_touch(prefix, user_streams, user_bytes, id, m, now)
if (m.ttl or '') == '' and (m.exp or '') ~= '' then ds_set_key_ttl(prefix, id, m) end
local subscribed = redis.call('EXISTS', user_subs) == 1 and '1' or ''
return {'ok', tostring(tail), closing, producer ~= '' and tostring(pseq) or '', '', subscribed}
