-- Read a durable stream from position `from` (GET), or only its record (HEAD: `touch`
-- empty, the TTL is not restarted). A fork's data before its fork position comes from
-- its source (and its source's source...), then its own.
-- Returns {status, tail, closed, content type, ttl, expires-at, entries...} where status
-- is 'ok', 'missing' or 'gone', and entries are flat (end position, data, encoding, lo,
-- hi) quintuples: the caller keeps the part of each entry inside [lo, hi).
local meta, user_streams, user_bytes = KEYS[1], KEYS[2], KEYS[3]
local prefix, id, now, from, max_entries, touch = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
-- #include ds

now = tonumber(now)
local status, m = ds_find(prefix, user_streams, user_bytes, id, now)
if status ~= 'ok' then return {status} end
if touch == '1' then ds_touch(prefix, user_streams, user_bytes, id, m, now) end
local out = {status, m.tail, m.closed or '', m.ct, m.ttl or '', m.exp_raw or ''}
from = tonumber(from)
local budget = tonumber(max_entries)
if from < 0 or budget <= 0 then return out end

-- Entries of stream `sid` ending after `lo`, up to the one that reaches `hi` (nil: all).
local function collect(sid, sm, lo, hi)
  local fpos = tonumber(sm.fpos or '0')
  if (sm.src or '') ~= '' and lo < fpos then
    local src = ds_load(ds_key(prefix, sm.src, 'meta'))
    if src then collect(sm.src, src, lo, (hi and hi < fpos) and hi or fpos) end
    lo = fpos
  end
  if budget <= 0 or (hi and lo >= hi) then return end
  local got = redis.call('XRANGE', ds_key(prefix, sid, 'data'), '(0-' .. lo, '+', 'COUNT', budget)
  for _, e in ipairs(got) do
    local eid, f = e[1], e[2]
    if string.sub(eid, 1, 2) ~= '0-' then return end -- the close record
    local stop = tonumber(string.sub(eid, 3))
    local d, enc = '', ''
    for i = 1, #f, 2 do
      if f[i] == 'd' then d = f[i + 1] elseif f[i] == 'e' then enc = f[i + 1] end
    end
    out[#out + 1] = tostring(stop); out[#out + 1] = d; out[#out + 1] = enc
    out[#out + 1] = tostring(lo); out[#out + 1] = hi and tostring(hi) or ''
    budget = budget - 1
    if budget <= 0 or (hi and stop >= hi) then return end
  end
end
collect(id, m, from, nil)
return out
