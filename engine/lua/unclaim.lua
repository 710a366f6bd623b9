--[[ unclaim: take one payload out of a (dead) worker's claiming list and put it
back at the front of its ready list, or into the dead letters.

KEYS[1] list    {P}:claiming:<worker>
KEYS[2] list    {P}:queue:<type>  (requeue) or {P}:failed_tasks (dead-letter)
KEYS[3] string  {P}:dedup:<type>:<cid>  (optional: deleted when dead-lettering)
ARGV[1] the raw payload, exactly as in the claiming list
ARGV[2] what to push: the updated payload, or the dead-letter entry
ARGV[3] task_id (with KEYS[3])
returns 1 moved, 0 the payload was no longer there
]]
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if KEYS[3] and redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('DEL', KEYS[3])
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return 1
