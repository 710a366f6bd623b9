--[[ dead_letter: the holder moves its leased task to the dead letters with the
reason (a permanent failure, exhausted retries, lost too many leases). Fenced,
replay-safe: a replayed call answers 1 again, so the caller's failure hook runs.

KEYS[1] string  {P:T}:task_lock:<task_id>
KEYS[2] hash    {P:T}:inflight
KEYS[3] zset    {P:T}:leases
KEYS[4] list    {P:T}:failed_tasks
KEYS[5] string  {P:T}:dedup:<cid>
KEYS[6] set     {P:T}:wtasks:<worker>
ARGV[1] the caller's lock value (<token>:<worker>)
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the dead-letter entry (JSON)
ARGV[5] replay window in ms
returns 1 dead-lettered (now or by this same call before), 0 the lease was lost
]]
--- @include "take_leased"
local token = string.match(ARGV[1], '^[^:]*')
local taken = take_leased(KEYS[1], KEYS[2], KEYS[3], KEYS[6], ARGV[1], '~dead:' .. token, ARGV[5], ARGV[2], ARGV[3])
if taken == 'taken' then
  if redis.call('GET', KEYS[5]) == ARGV[2] then
    redis.call('DEL', KEYS[5])
  end
  redis.call('RPUSH', KEYS[4], ARGV[4])
end
return (taken == 'lost') and 0 or 1
