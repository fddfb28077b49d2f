-- Create a durable stream (PUT), or a fork of another of the owner's streams, with its
-- first entries; idempotent: the same configuration again answers 'exists'.
-- Returns {status, tail, closed, content type, subscribed} (subscribed: '1' when the user
-- has subscriptions, to report a new stream to); status 'created', 'exists', 'conflict'
-- (another configuration), 'gone' (a soft-deleted stream holds the path), 'no_source',
-- 'source_gone', 'fork_range' (the fork offset is past the source's tail),
-- 'type_mismatch', 'quota_streams' or 'quota_bytes'.
local meta, data, user_streams, user_bytes, user_subs = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local prefix, id, path, now, ct, ctn = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local json, ttl, exp, exp_raw, closing, src = ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
local fork_offset, fork_sub, max_streams, max_bytes = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local entries = {unpack(ARGV, 17)}
-- #include ds

now = tonumber(now)
local status, m = ds_find(prefix, user_streams, user_bytes, id, now)
if status == 'gone' or (status == 'missing' and m) then return {'gone', m.tail, m.closed or '', m.ct} end
if status == 'ok' then
  local same = m.ttl == ttl and m.exp == exp and (m.closed or '') == closing
    and (m.src or '') == src and (src == '' or (m.fork_req == fork_offset and m.fork_sub == fork_sub))
    and (ctn == '' or m.ctn == ctn)
  if not same then return {'conflict', m.tail, m.closed or '', m.ct} end
  return {'exists', m.tail, m.closed or '', m.ct}
end

local new = {path = path, ct = ct, ctn = ctn, json = json, ttl = ttl, exp = exp, exp_raw = exp_raw,
  seen = tostring(now), tail = '0', refs = '0', src = src, fork_req = fork_offset,
  fork_sub = fork_sub}
if src ~= '' then
  local sstatus, sm = ds_find(prefix, user_streams, user_bytes, src, now)
  if sstatus == 'missing' then return {'no_source', '0', '', ''} end
  if sstatus == 'gone' then return {'source_gone', '0', '', ''} end
  if ctn ~= '' and ctn ~= sm.ctn then return {'type_mismatch', '0', '', ''} end
  local at = tonumber(sm.tail)
  if fork_offset ~= '' then at = tonumber(fork_offset) end
  at = at + tonumber(fork_sub)
  if at > tonumber(sm.tail) then return {'fork_range', sm.tail, '', ''} end
  new.ct, new.ctn, new.json, new.tail, new.fpos = sm.ct, sm.ctn, sm.json, tostring(at), tostring(at)
  if ttl == '' and exp == '' then
    new.ttl, new.exp, new.exp_raw = sm.ttl or '', sm.exp or '', sm.exp_raw or ''
  end
  redis.call('HINCRBY', ds_key(prefix, src, 'meta'), 'refs', 1)
  sm.refs = '1'
  ds_set_key_ttl(prefix, src, sm) -- kept while a fork reads it
end

ds_prune(prefix, user_streams, user_bytes, now)
if redis.call('ZCARD', user_streams) >= tonumber(max_streams) then
  if src ~= '' then redis.call('HINCRBY', ds_key(prefix, src, 'meta'), 'refs', -1) end
  return {'quota_streams', '0', '', ''}
end
local incoming = 0
for i = 1, #entries, 3 do incoming = incoming + tonumber(entries[i]) end
if tonumber(redis.call('HGET', user_bytes, '_total') or '0') + incoming > tonumber(max_bytes) then
  if src ~= '' then redis.call('HINCRBY', ds_key(prefix, src, 'meta'), 'refs', -1) end
  return {'quota_bytes', '0', '', ''}
end

local flat = {}
for k, v in pairs(new) do flat[#flat + 1] = k; flat[#flat + 1] = v end
redis.call('HSET', meta, unpack(flat))
local tail, bytes = ds_write(data, new, entries)
redis.call('HSET', meta, 'tail', tail)
if closing == '1' then ds_close(data, meta, tail) end
new.tail = tostring(tail)
ds_set_key_ttl(prefix, id, new)
ds_quota_add(user_streams, user_bytes, id, new, bytes)
local subscribed = redis.call('EXISTS', user_subs) == 1 and '1' or ''
return {'created', tostring(tail), closing, new.ct, subscribed}
