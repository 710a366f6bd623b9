--[[ retry: move a leased task to its delayed set, due after a delay (a retry
with backoff, or a deferral for a rate limit). Fenced.

KEYS[1] string  {P}:task_lock:<task_id>
KEYS[2] hash    {P}:inflight:<type>
KEYS[3] zset    {P}:leases
KEYS[4] zset    {P}:delayed:<type>
KEYS[5] set     {P}:wtasks:<worker>
ARGV[1] the caller's lock value
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the payload to store (retry_count already updated by the caller)
ARGV[5] delay in ms
returns 1 scheduled, 0 the lease was lost
]]
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 0 then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local member = ARGV[3] .. ':' .. ARGV[2]
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], member)
redis.call('SREM', KEYS[5], member)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[5]), ARGV[4])
return 1
