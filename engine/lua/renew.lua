--[[ renew: extend a lease. Fenced: a zombie whose lease was taken cannot extend
it. Replay-safe by nature (a second extension from the same moment changes nothing).

KEYS[1] string  {P}:task_lock:<task_id>
KEYS[2] zset    {P}:leases
ARGV[1] the caller's lock value
ARGV[2] visibility timeout in ms
ARGV[3] member <type>:<task_id>
returns 1 renewed, 0 the lease was lost
]]
--- @include "server_time"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[2]), ARGV[3])
return 1
