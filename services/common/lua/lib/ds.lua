-- Durable streams (services/durable): a stream's record, its expiry, its removal and
-- the owner's quota. Included by `-- #include ds`; the callers pass every key name or
-- the bucket's key prefix (`prefix`): a fork's source is in its owner's bucket too.
local function ds_key(prefix, id, part)
  return prefix .. 'ds:' .. id .. ':' .. part
end

local function ds_load(meta)
  local raw = redis.call('HGETALL', meta)
  if #raw == 0 then return nil end
  local m = {}
  for i = 1, #raw, 2 do m[raw[i]] = raw[i + 1] end
  return m
end

-- When the stream expires (ms), or nil: Stream-Expires-At, or the last access + TTL.
local function ds_expiry(m)
  if (m.exp or '') ~= '' then return tonumber(m.exp) end
  if (m.ttl or '') ~= '' then return tonumber(m.seen) + tonumber(m.ttl) * 1000 end
  return nil
end

local function ds_expired(m, now)
  local at = ds_expiry(m)
  return at ~= nil and now >= at
end

-- A stream with forks keeps its keys (forks read its data); one without gets a key TTL
-- a day past its expiry (it is removed when seen expired, or by that TTL otherwise).
local function ds_set_key_ttl(prefix, id, m)
  local at = ds_expiry(m)
  for _, part in ipairs({'meta', 'data', 'producers'}) do
    local key = ds_key(prefix, id, part)
    if at == nil or tonumber(m.refs or '0') > 0 then
      redis.call('PERSIST', key)
    else
      redis.call('PEXPIREAT', key, at + 86400000)
    end
  end
end

-- The owner's quota: the stream counted with `bytes` more (and its expiry as score).
local function ds_quota_add(user_streams, user_bytes, id, m, bytes)
  local at = ds_expiry(m)
  redis.call('ZADD', user_streams, at or '+inf', id)
  if bytes ~= 0 then
    redis.call('HINCRBY', user_bytes, id, bytes)
    redis.call('HINCRBY', user_bytes, '_total', bytes)
  end
end

local function ds_quota_drop(user_streams, user_bytes, id)
  redis.call('ZREM', user_streams, id)
  local bytes = tonumber(redis.call('HGET', user_bytes, id) or '0')
  if bytes ~= 0 then redis.call('HINCRBY', user_bytes, '_total', -bytes) end
  redis.call('HDEL', user_bytes, id)
end

-- Remove a stream (deleted, or found expired). With forks reading it, it is kept,
-- soft-deleted (`how`: 'deleted' answers 410, 'expired' 404), until the last fork goes.
-- Then its source loses a fork, and goes too if it was waiting for that (cascade).
local function ds_remove(prefix, user_streams, user_bytes, id, m, how)
  while m do
    if tonumber(m.refs or '0') > 0 then
      redis.call('HSET', ds_key(prefix, id, 'meta'), 'deleted', how)
      return
    end
    redis.call('DEL', ds_key(prefix, id, 'meta'), ds_key(prefix, id, 'data'),
      ds_key(prefix, id, 'producers'))
    ds_quota_drop(user_streams, user_bytes, id)
    local src = m.src or ''
    if src == '' then return end
    local smeta = ds_key(prefix, src, 'meta')
    if redis.call('EXISTS', smeta) == 0 then return end
    local left = redis.call('HINCRBY', smeta, 'refs', -1)
    local sm = ds_load(smeta)
    if left > 0 or (sm.deleted or '') == '' then
      if left <= 0 then ds_set_key_ttl(prefix, src, sm) end
      return
    end
    id, m, how = src, sm, sm.deleted
  end
end

-- Drop the owner's streams that expired (so the quota counts live ones only).
local function ds_prune(prefix, user_streams, user_bytes, now)
  local gone = redis.call('ZRANGEBYSCORE', user_streams, '-inf', now, 'LIMIT', 0, 100)
  for _, id in ipairs(gone) do
    local m = ds_load(ds_key(prefix, id, 'meta'))
    if m and not ds_expired(m, now) then
      ds_quota_add(user_streams, user_bytes, id, m, 0) -- touched since: a new score
    elseif m and (m.deleted or '') == '' then
      ds_remove(prefix, user_streams, user_bytes, id, m, 'expired')
    elseif not m then
      ds_quota_drop(user_streams, user_bytes, id)
    end
  end
end

-- A stream as a request finds it: 'missing' (none, or expired: then removed), 'gone'
-- (soft-deleted), or 'ok' with its record.
local function ds_find(prefix, user_streams, user_bytes, id, now)
  local m = ds_load(ds_key(prefix, id, 'meta'))
  if not m then return 'missing', nil end
  if m.deleted == 'deleted' then return 'gone', m end
  if m.deleted == 'expired' then return 'missing', m end
  if ds_expired(m, now) then
    ds_remove(prefix, user_streams, user_bytes, id, m, 'expired')
    return 'missing', nil
  end
  return 'ok', m
end

-- A read or write restarts a sliding TTL.
local function ds_touch(prefix, user_streams, user_bytes, id, m, now)
  if (m.ttl or '') == '' then return end
  m.seen = tostring(now)
  redis.call('HSET', ds_key(prefix, id, 'meta'), 'seen', m.seen)
  ds_set_key_ttl(prefix, id, m)
  ds_quota_add(user_streams, user_bytes, id, m, 0)
end

-- Append entries (flat list of byte length, data, encoding triples) after `m.tail`;
-- JSON streams count messages, others bytes. Returns the new tail and bytes written.
local function ds_write(data, m, entries)
  local tail, bytes = tonumber(m.tail), 0
  for i = 1, #entries, 3 do
    local n = tonumber(entries[i])
    if m.json == '1' then tail = tail + 1 else tail = tail + n end
    bytes = bytes + n
    if entries[i + 2] == '' then
      redis.call('XADD', data, '0-' .. tail, 'd', entries[i + 1])
    else
      redis.call('XADD', data, '0-' .. tail, 'd', entries[i + 1], 'e', entries[i + 2])
    end
  end
  return tail, bytes
end

-- The close record: a message stream's final entry (`1-0`), which ends the node relay's
-- reading and tells every live reader.
local function ds_close(data, meta, tail)
  redis.call('XADD', data, '1-0', 'last_seq', tail, 'finish_reason', 'stop',
    'prompt_tokens', 0, 'completion_tokens', 0)
  redis.call('HSET', meta, 'closed', '1')
end
