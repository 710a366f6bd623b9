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
if KEYS[6] then
  redis.call('SREM', KEYS[6], member)
end
if redis.call('GET', KEYS[5]) == ARGV[2] then
  redis.call('DEL', KEYS[5])
end
redis.call('RPUSH', KEYS[4], ARGV[4])
return 1
