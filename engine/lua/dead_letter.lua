--[[ dead_letter: move a leased task to the dead letters with its reason. Fenced.

KEYS[1] string  {P}:task_lock:<task_id>
KEYS[2] hash    {P}:inflight:<type>
KEYS[3] zset    {P}:leases
KEYS[4] list    {P}:failed_tasks
KEYS[5] string  {P}:dedup:<type>:<cid>
KEYS[6] set     {P}:wtasks:<worker>   (optional: the holder, when known)
ARGV[1] expected lock value; '' = the lock must be gone (recovery of a lapsed lease)
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the dead-letter entry (JSON)
returns 1 dead-lettered, 0 the lease was lost
]]
--- @include "take_leased"
if not take_leased(KEYS[1], KEYS[2], KEYS[3], KEYS[6], ARGV[1], ARGV[2], ARGV[3]) then
  return 0
end
if redis.call('GET', KEYS[5]) == ARGV[2] then
  redis.call('DEL', KEYS[5])
end
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
