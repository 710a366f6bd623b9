--[[ advance_cursor: move reconcile's cursor forward, only within the generation it was read in.
If Redis lost its data since (the generation key is gone or new), the cursor is left
alone, so the next pass sees no generation and does the full sweep it must.
Replay-safe by nature (setting the same cursor twice is setting it once).

KEYS[1] string  {P}:generation
KEYS[2] string  {P}:reconciled_until
ARGV[1] the generation read at the start of the pass
ARGV[2] the new cursor
returns 1 moved, 0 the generation changed
]]
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
