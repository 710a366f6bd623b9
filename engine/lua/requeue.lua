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
local held = redis.call('GET', KEYS[1]) or ''
local member = ARGV[3] .. ':' .. ARGV[2]
if held ~= ARGV[1] then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  if held == '' then
    redis.call('ZREM', KEYS[3], member)  -- a stale lease entry of a task no longer in flight
  end
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], member)
if KEYS[5] then
  redis.call('SREM', KEYS[5], member)
end
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
