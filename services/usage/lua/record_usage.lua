-- Count one message.completed event in its user's usage totals, once.
-- `seen` marks the event id as counted and expires after seen_ttl_s, so the ids kept
-- are bounded by the events of that window; while it exists, the same event (a
-- redelivery: Kafka delivers at least once) changes nothing. Both keys carry the
-- user's hash tag (keys.py), so the script touches one slot.
-- Returns 1 if the event was counted now, 0 if it had been counted before.
local totals, seen = KEYS[1], KEYS[2]
local prompt_tokens, completion_tokens, seen_ttl_s = ARGV[1], ARGV[2], ARGV[3]

if not redis.call('SET', seen, '1', 'NX', 'EX', seen_ttl_s) then
  return 0
end
redis.call('HINCRBY', totals, 'prompt_tokens', prompt_tokens)
redis.call('HINCRBY', totals, 'completion_tokens', completion_tokens)
redis.call('HINCRBY', totals, 'answers', 1)
return 1
