--[[ take_leased: take a leased task out of flight, fenced by its lock value.
An include, not a script: requeue.lua and dead_letter.lua pull it in with
`--- @include "take_leased"` (engine/scripts.py), then put the task where it
goes next. Every key is still one of the including script's KEYS.

lock      string  {P}:task_lock:<task_id>
inflight  hash    {P}:inflight:<type>
leases    zset    {P}:leases
holder    set     {P}:wtasks:<worker>, or nil when the holder is not known
expected  the caller's lock value; '' = the lock must be gone (recovery of a lapsed lease)
returns true when the task was taken (lock, in-flight entry, lease and holder
entry removed); false when the lease changed hands or the task is no longer in
flight (then a stale lease entry of a lapsed lock is dropped)
]]
local function take_leased(lock, inflight, leases, holder, expected, task_id, task_type)
  local held = redis.call('GET', lock) or ''
  local member = task_type .. ':' .. task_id
  if held ~= expected then
    return false
  end
  if redis.call('HEXISTS', inflight, task_id) == 0 then
    if held == '' then
      redis.call('ZREM', leases, member)  -- a stale lease entry of a task no longer in flight
    end
    return false
  end
  redis.call('HDEL', inflight, task_id)
  redis.call('DEL', lock)
  redis.call('ZREM', leases, member)
  if holder then
    redis.call('SREM', holder, member)
  end
  return true
end
