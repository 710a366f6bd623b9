--[[ requeue: the holder puts its leased task back at the FRONT of its ready list
(a release at shutdown, or a task given up after its time limit). Fenced, replay-safe.
Recovery never uses this: it takes leases back with recover.lua.

KEYS[1] string  {P:T}:task_lock:<task_id>
KEYS[2] hash    {P:T}:inflight
KEYS[3] zset    {P:T}:leases
KEYS[4] list    {P:T}:queue
KEYS[5] set     {P:T}:wtasks:<worker>
ARGV[1] the caller's lock value (<token>:<worker>)
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the payload to requeue (counters already updated by the caller)
ARGV[5] replay window in ms
returns 1 requeued (now or by this same call before), 0 the lease was lost
]]
--- @include "take_leased"
local token = string.match(ARGV[1], '^[^:]*')
local taken = take_leased(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], '~requeue:' .. token, ARGV[5], ARGV[2], ARGV[3])
if taken == 'taken' then
  redis.call('RPUSH', KEYS[4], ARGV[4])
end
return (taken == 'lost') and 0 or 1
