--[[ reject: move a malformed payload from a claiming list to the dead letters.

KEYS[1] list  {P}:claiming:<worker>
KEYS[2] list  {P}:failed_tasks
ARGV[1] the raw payload, exactly as found
ARGV[2] the dead-letter entry (JSON with the reason)
returns 1 moved, 0 the payload was no longer there (recovery took it)
]]
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
