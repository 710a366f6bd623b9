--[[ recover: recovery takes one leased task back — requeued at the front of its
ready list, or dead-lettered once it lost too many leases. It decides and acts in
this one call, so any number of recovery loops are safe; it never takes a lock it
did not see lapse:

- mode 'lapsed': only if the lock is gone (or a tombstone) AND the lease's deadline
  in {P:T}:leases has passed on the server clock;
- mode 'dead': only if the lock still holds the value recovery read (naming the
  holder it judged dead) AND the holder's liveness key still holds the value read
  with that judgement ('' = gone), AND the judgement is fresh on the server clock
  (a Redis stall after it, during which live workers could not beat, voids it).

Both: only if the in-flight payload is still the one the caller computed its
decision from (compare-and-set), so a payload changed meanwhile is left alone.
Replay-safe: the lock is replaced by the tombstone ~<action>:<op id>.

KEYS[1] string  {P:T}:task_lock:<task_id>
KEYS[2] hash    {P:T}:inflight
KEYS[3] zset    {P:T}:leases
KEYS[4] list    {P:T}:queue   (action requeue) or {P:T}:failed_tasks (action dead)
KEYS[5] string  {P:T}:dedup:<cid>
KEYS[6] set     {P:T}:wtasks:<worker>   (mode dead; in mode lapsed when the holder is known)
KEYS[7] string  {P:T}:worker:<worker>   the copy of its liveness key in this slot (mode dead)
ARGV[1] mode: 'lapsed' or 'dead'
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the in-flight payload the decision was made from
ARGV[5] action: 'requeue' or 'dead'
ARGV[6] what to push: the updated payload, or the dead-letter entry (JSON)
ARGV[7] operation id (client-made; names the tombstone)
ARGV[8] replay window in ms
mode dead only:
ARGV[9]  the lock value read (<token>:<worker>)
ARGV[10] the liveness value read with the judgement ('' = the key was gone)
ARGV[11] server time of the judgement, in ms
ARGV[12] how old the judgement may be, in ms
returns 1 done (now, or by this same call before), 0 not taken (nothing changed,
except that a lapsed lease entry of a task no longer in flight is dropped)
]]
--- @include "server_time"
local lock, inflight, leases = KEYS[1], KEYS[2], KEYS[3]
local id, ttype = ARGV[2], ARGV[3]
local member = ttype .. ':' .. id
local tomb = '~' .. ARGV[5] .. ':' .. ARGV[7]
local held = redis.call('GET', lock)
if held == tomb then
  return 1
end
local now = now_ms()
if ARGV[1] == 'dead' then
  if held ~= ARGV[9] then
    return 0
  end
  if (redis.call('GET', KEYS[7]) or '') ~= ARGV[10] then
    return 0
  end
  if now - tonumber(ARGV[11]) > tonumber(ARGV[12]) then
    return 0
  end
else
  if held and string.sub(held, 1, 1) ~= '~' then
    return 0
  end
  local deadline = redis.call('ZSCORE', leases, member)
  if not deadline or tonumber(deadline) > now then
    return 0
  end
end
local raw = redis.call('HGET', inflight, id)
if raw ~= ARGV[4] then
  if not raw and ARGV[1] == 'lapsed' then
    redis.call('ZREM', leases, member)
  end
  return 0
end
redis.call('HDEL', inflight, id)
redis.call('SET', lock, tomb, 'PX', ARGV[8])
redis.call('ZREM', leases, member)
if KEYS[6] then
  redis.call('SREM', KEYS[6], member)
end
if ARGV[5] == 'dead' and redis.call('GET', KEYS[5]) == id then
  redis.call('DEL', KEYS[5])
end
redis.call('RPUSH', KEYS[4], ARGV[6])
return 1
