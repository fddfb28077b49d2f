-- Durable stream subscriptions (services/durable/subscriptions.py, PROTOCOL.md 6-7): a
-- subscription's record and links, its wakes, lease and delivery schedule. Included
-- after `ds` (it reads the linked streams' records with ds_key, ds_load, ds_expired).
-- Key names are built from the bucket's prefix as keys.py's ds_sub / ds_sub_links do;
-- a user's subscriptions and streams share the user's bucket (one slot).
--
-- State fields of the record: gen (the wake generation), wake_id ('' when no wake is
-- in flight), holder (the pull-wake worker), lease (ms when it ends, 0: none), deliver
-- (1 while the wake's webhook call or wake event is still to make), next_at (ms, not
-- before: the retry schedule), inflight (ms: a node is making the delivery until then),
-- attempts (failed deliveries in a row), status (active / failed), snap (JSON path ->
-- tail of the last webhook sent: what `done` acks), trigger (the stream that woke it).

local SUB_STATE = {'gen', 'wake_id', 'holder', 'lease', 'deliver', 'next_at', 'inflight',
  'attempts', 'status', 'snap', 'trigger'}
local SUB_NUMBERS = {'gen', 'lease', 'deliver', 'next_at', 'inflight', 'attempts'}

local function sub_num(x)
  return string.format('%d', x)
end

local function sub_key(prefix, sid)
  return prefix .. 'ds:sub:' .. sid
end

local function sub_links_key(prefix, sid)
  return prefix .. 'ds:sub:' .. sid .. ':links'
end

local function sub_load(prefix, sid)
  local s = ds_load(sub_key(prefix, sid))
  if not s then return nil end
  for _, f in ipairs(SUB_NUMBERS) do s[f] = tonumber(s[f] or '0') end
  s.wake_id, s.holder = s.wake_id or '', s.holder or ''
  s.status, s.snap, s.trigger = s.status or 'active', s.snap or '', s.trigger or ''
  s.lease_ms = tonumber(s.lease_ms)
  return s
end

local function sub_save(prefix, sid, s)
  local flat = {}
  for _, f in ipairs(SUB_STATE) do
    local v = s[f]
    if type(v) == 'number' then v = sub_num(v) end
    flat[#flat + 1] = f
    flat[#flat + 1] = v
  end
  redis.call('HSET', sub_key(prefix, sid), unpack(flat))
end

-- A link's value: "<flags> <acked position> <stream id>", flags 'e' and/or 'g'.
local function link_parse(v)
  local flags, acked, stream = string.match(v, '^(%a+) (%d+) (%S+)$')
  return flags, tonumber(acked), stream
end

local function link_value(flags, acked, stream)
  return flags .. ' ' .. sub_num(acked) .. ' ' .. stream
end

-- A linked stream's tail, or nil when it is missing, deleted or expired.
local function sub_stream_tail(prefix, stream, now)
  local f = redis.call('HMGET', ds_key(prefix, stream, 'meta'), 'tail', 'deleted', 'exp', 'ttl', 'seen')
  if not f[1] or (f[2] or '') ~= '' then return nil end
  if ds_expired({exp = f[3] or '', ttl = f[4] or '', seen = f[5] or '0'}, now) then return nil end
  return tonumber(f[1])
end

-- Every link with its stream's tail, by path. A pattern's link to a stream that is
-- gone is dropped (a stream made again there is linked again by its first append); an
-- explicit one stays, at tail 0, until removed.
local function sub_infos(prefix, sid, now)
  local lkey = sub_links_key(prefix, sid)
  local raw = redis.call('HGETALL', lkey)
  local out = {}
  for i = 1, #raw, 2 do
    local flags, acked, stream = link_parse(raw[i + 1])
    local tail = sub_stream_tail(prefix, stream, now)
    if tail == nil and flags == 'g' then
      redis.call('HDEL', lkey, raw[i])
    else
      out[#out + 1] = {path = raw[i], flags = flags, acked = acked, tail = tail or 0}
    end
  end
  table.sort(out, function(a, b) return a.path < b.path end)
  return out
end

local function sub_first_pending(infos)
  for _, l in ipairs(infos) do
    if l.tail > l.acked then return l.path end
  end
  return nil
end

-- The infos as the JSON the caller serializes (positions as strings: no float).
local function sub_streams_json(infos)
  local out = {}
  for _, l in ipairs(infos) do
    out[#out + 1] = {l.path, l.flags, sub_num(l.acked), sub_num(l.tail)}
  end
  return out
end

local function sub_clear_wake(s)
  s.wake_id, s.holder, s.lease, s.deliver, s.inflight, s.snap = '', '', 0, 0, 0, ''
end

-- A lease that ended fences its holder and token: the wake is over.
local function sub_expire(s, now)
  if s.lease > 0 and s.lease <= now then
    sub_clear_wake(s)
    return true
  end
  return false
end

-- A new wake: the next generation. A webhook's lease starts now; a pull-wake's when a
-- worker claims it. A failing webhook keeps its retry schedule (next_at).
local function sub_new_wake(s, wake_id, trigger, now)
  s.gen = s.gen + 1
  s.wake_id, s.holder, s.trigger, s.snap = wake_id, '', trigger, ''
  if s.type == 'webhook' then s.lease = now + s.lease_ms else s.lease = 0 end
  s.deliver, s.inflight = 1, 0
  if s.status ~= 'failed' then s.next_at = now end
end

-- The caller makes the wake's delivery now (nobody else until `hold_ms` passed): what
-- it needs to, as a table for cjson. A webhook's payload lists every link, and that
-- snapshot is what a `done` answer acks.
local function sub_take(prefix, sid, s, now, hold_ms)
  s.inflight = now + hold_ms
  local out = {sid = sid, id = s.id, user = s.user, root = s.root, type = s.type,
    gen = sub_num(s.gen), wake_id = s.wake_id, trigger = s.trigger, base = s.base,
    attempts = sub_num(s.attempts),
    url = s.webhook or '', wake_stream = s.wake_stream or ''}
  if s.type == 'webhook' then
    local infos = sub_infos(prefix, sid, now)
    local snap = {}
    for _, l in ipairs(infos) do snap[l.path] = sub_num(l.tail) end
    s.snap = cjson.encode(snap)
    out.streams = sub_streams_json(infos)
  end
  return out
end

-- After a wake ended (or on a sweep): a new wake when a link has pending work; `hint`
-- is a path known to be pending (no need to look at every link). Returns whether it
-- woke, and the delivery to make now, if due.
local function sub_rewake(prefix, sid, s, wake_id, now, hold_ms, hint)
  local trigger = hint
  if not trigger then trigger = sub_first_pending(sub_infos(prefix, sid, now)) end
  if not trigger then return false, nil end
  sub_new_wake(s, wake_id, trigger, now)
  if s.next_at <= now then return true, sub_take(prefix, sid, s, now, hold_ms) end
  return true, nil
end

-- When a node must look at the subscription next: its lease's end, its delivery (or
-- retry), else a sweep for pending work an append did not report (a node died).
local function sub_schedule(due, sid, s, now, sweep_ms)
  local at = now + sweep_ms
  if s.lease > 0 and s.lease < at then at = s.lease end
  if s.deliver == 1 then
    local d = math.max(s.next_at, s.inflight)
    if d < at then at = d end
  end
  redis.call('ZADD', due, sub_num(at), sid)
end

-- Whether a callback, ack or release may act on the current wake: the token's and the
-- request's generation and wake id are the current ones, and the lease has not ended.
local function sub_fenced(s, token_gen, gen, wake_id, now)
  if s.wake_id == '' or s.wake_id ~= wake_id then return true end
  if sub_num(s.gen) ~= token_gen or sub_num(s.gen) ~= gen then return true end
  return s.lease > 0 and s.lease <= now
end

-- Apply acks (flat path, position pairs) all or nothing: each must name a link, not go
-- back, and not pass the stream's tail. Returns nil, or an error message.
local function sub_apply_acks(prefix, sid, acks, now)
  local lkey = sub_links_key(prefix, sid)
  local links = {}
  for i = 1, #acks, 2 do
    local path, pos = acks[i], tonumber(acks[i + 1])
    local v = redis.call('HGET', lkey, path)
    if not v then return 'the ack names a stream the subscription does not link: ' .. path end
    local flags, acked, stream = link_parse(v)
    if links[path] then acked = math.max(acked, links[path][2]) end
    if pos < acked then return 'the ack offset goes back past the acked one: ' .. path end
    if pos > (sub_stream_tail(prefix, stream, now) or 0) then
      return 'the ack offset is past the stream tail: ' .. path
    end
    links[path] = {flags, pos, stream}
  end
  for path, l in pairs(links) do
    redis.call('HSET', lkey, path, link_value(l[1], l[2], l[3]))
  end
  return nil
end
