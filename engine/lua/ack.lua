--[[ ack: these tasks are done. Settles several leases in one call (a worker acks
what its handlers finished since the last call). Fenced per task: each task is
settled only while its lease holds the caller's lock value; a stale one changes
nothing and the others are still settled. Replay-safe (take_leased's tombstone).

KEYS[1] zset    {P:T}:leases
then per task i (i = 1..n), four keys:
KEYS[4i-2] string  {P:T}:task_lock:<task_id>
KEYS[4i-1] hash    {P:T}:inflight
KEYS[4i]   string  {P:T}:dedup:<cid>
KEYS[4i+1] set     {P:T}:wtasks:<worker>
ARGV[1] replay window in ms (how long the tombstone lives)
per task i, three values:
ARGV[3i-1] the caller's lock value (<token>:<worker>)
ARGV[3i]   task_id
ARGV[3i+1] task_type
returns one value per task: 1 acknowledged (now or by this same call before), 0 the lease was lost
]]
--- @include "take_leased"
local out = {}
local n = (#KEYS - 1) / 4
for i = 1, n do
  local lock, inflight, dedup, wtasks = KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i], KEYS[4 * i + 1]
  local value, id, ttype = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
  local token = string.match(value, '^[^:]*')
  local taken = take_leased(lock, inflight, KEYS[1], wtasks, value, '~ack:' .. token, ARGV[1], id, ttype)
  if taken == 'taken' and redis.call('GET', dedup) == id then
    redis.call('DEL', dedup)
  end
  out[i] = (taken == 'lost') and 0 or 1
end
return out
