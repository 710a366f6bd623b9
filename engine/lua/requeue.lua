--[[ requeue: put a leased task back at the FRONT of its ready list (release,
or recovery of a lapsed lease / a dead worker's task). Fenced.

KEYS[1] string  {P}:task_lock:<task_id>
KEYS[2] hash    {P}:inflight:<type>
KEYS[3] zset    {P}:leases
KEYS[4] list    {P}:queue:<type>
KEYS[5] set     {P}:wtasks:<worker>   (optional: the holder, when known)
ARGV[1] expected lock value; '' = the lock must be gone (it lapsed)
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the payload to requeue (counters already updated by the caller)
returns 1 requeued, 0 the lease changed hands or the task is no longer in flight
]]
--- @include "take_leased"
if not take_leased(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], ARGV[2], ARGV[3]) then
  return 0
end
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
