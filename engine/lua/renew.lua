--[[ renew: extend the leases a worker holds on tasks of one type (its heartbeat
renews every lease it holds, one call per task type). Fenced per lease: a
zombie whose lease was taken cannot extend it. Replay-safe by nature (a second
extension from the same moment changes nothing).

KEYS[1]   zset    {P:T}:leases
KEYS[1+i] string  {P:T}:task_lock:<task_id>, per lease i (i = 1..n)
ARGV[1]       visibility timeout in ms
ARGV[2i]      the caller's lock value of lease i
ARGV[2i+1]    member T:<task_id> of lease i
returns one value per lease: 1 renewed, 0 the lease was lost
]]
--- @include "server_time"
local vis = tonumber(ARGV[1])
local deadline = now_ms() + vis
local out = {}
for i = 1, #KEYS - 1 do
  local lock = KEYS[1 + i]
  out[i] = 0
  if redis.call('GET', lock) == ARGV[2 * i] then
    redis.call('PEXPIRE', lock, vis)
    redis.call('ZADD', KEYS[1], deadline, ARGV[2 * i + 1])
    out[i] = 1
  end
end
return out
