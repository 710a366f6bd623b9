--[[ ack: these tasks are done. Settles several leases in one call (a worker acks
what its handlers finished since the last call). Fenced per task: each task is
settled only while its lease holds the caller's token; a stale one changes
nothing and the others are still settled.

KEYS[1] zset    {P}:leases
then per task i (i = 1..n), four keys:
KEYS[4i-2] string  {P}:task_lock:<task_id>
KEYS[4i-1] hash    {P}:inflight:<type>
KEYS[4i]   string  {P}:dedup:<type>:<cid>
KEYS[4i+1] set     {P}:wtasks:<worker>
per task i, three values:
ARGV[3i-2] the caller's lock value (<token>:<worker>)
ARGV[3i-1] task_id
ARGV[3i]   task_type
returns one value per task: 1 acknowledged, 0 the lease was lost (nothing changed for it)
]]
local out = {}
local n = (#KEYS - 1) / 4
for i = 1, n do
  local lock, inflight, dedup, wtasks = KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i], KEYS[4 * i + 1]
  local token, id = ARGV[3 * i - 2], ARGV[3 * i - 1]
  if redis.call('GET', lock) == token and redis.call('HDEL', inflight, id) == 1 then
    local member = ARGV[3 * i] .. ':' .. id
    redis.call('DEL', lock)
    redis.call('ZREM', KEYS[1], member)
    redis.call('SREM', wtasks, member)
    if redis.call('GET', dedup) == id then
      redis.call('DEL', dedup)
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
