--[[ ack: the task is done. Fenced: acts only while the lease holds the caller's token.

KEYS[1] string  {P}:task_lock:<task_id>
KEYS[2] hash    {P}:inflight:<type>
KEYS[3] zset    {P}:leases
KEYS[4] string  {P}:dedup:<type>:<cid>
KEYS[5] set     {P}:wtasks:<worker>
ARGV[1] the caller's lock value (<token>:<worker>)
ARGV[2] task_id
ARGV[3] task_type
returns 1 acknowledged, 0 the lease was lost (nothing changed)
]]
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  return 0
end
local member = ARGV[3] .. ':' .. ARGV[2]
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], member)
redis.call('SREM', KEYS[5], member)
if redis.call('GET', KEYS[4]) == ARGV[2] then
  redis.call('DEL', KEYS[4])
end
return 1
