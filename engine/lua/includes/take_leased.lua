--[[ take_leased: take a leased task out of flight, fenced by the caller's lock value.
An include, not a script: ack, retry, requeue and dead_letter pull it in, then put
the task where it goes next. Every key is one of the including script's KEYS.

Replay-safe: the lock is not deleted but replaced by a tombstone,
`~<verb>:<token>`, that lives REPLAY ms. A call replayed by the client (its
answer was lost to a timeout) finds its own tombstone and reports success again
without doing anything twice. A tombstone is never a live lease: lease.lua and
recovery treat it as "no lock".

lock      string  {P:T}:task_lock:<task_id>
inflight  hash    {P:T}:inflight
leases    zset    {P:T}:leases
holder    set     {P:T}:wtasks:<worker>, or nil
expected  the caller's lock value, <token>:<worker>
tomb      the tombstone this call leaves, ~<verb>:<token>
returns 'taken' (lock, in-flight entry, lease and holder entry removed), 'replay'
(this very call already took it) or 'lost' (the lease changed hands or the task
is no longer in flight: nothing changed)
]]
local function take_leased(lock, inflight, leases, holder, expected, tomb, replay_ms, task_id, task_type)
  local held = redis.call('GET', lock)
  if held == tomb then
    return 'replay'
  end
  if held ~= expected or redis.call('HDEL', inflight, task_id) == 0 then
    return 'lost'
  end
  local member = task_type .. ':' .. task_id
  redis.call('SET', lock, tomb, 'PX', replay_ms)
  redis.call('ZREM', leases, member)
  if holder then
    redis.call('SREM', holder, member)
  end
  return 'taken'
end
