--[[ unclaim: take one payload out of a worker's claiming list (claimed, never
leased) and put it back at the front of its ready list, or into the dead letters.
Used by recovery for a worker it judged dead — then only while the worker's
liveness key still holds the value read with that judgement, on a fresh
judgement — and by a worker for its own list at shutdown (no liveness key).
Replay-safe through {P:T}:op:<id>.

KEYS[1] list    {P:T}:claiming:<worker>
KEYS[2] list    {P:T}:queue (requeue) or {P:T}:failed_tasks (dead-letter)
KEYS[3] string  {P:T}:op:<op id>
KEYS[4] string  {P:T}:dedup:<cid>  (deleted when it names the task; '' key when dead-lettering nothing)
KEYS[5] string  {P:T}:worker:<worker>   the copy of its liveness key in this slot (optional: recovery only)
ARGV[1] the raw payload, exactly as in the claiming list
ARGV[2] what to push: the updated payload, or the dead-letter entry
ARGV[3] task_id whose dedup key may be deleted ('' = keep the dedup key)
ARGV[4] replay window in ms
ARGV[5] (with KEYS[5]) the liveness value read with the judgement ('' = gone)
ARGV[6] (with KEYS[5]) server time of the judgement, in ms
ARGV[7] (with KEYS[5]) how old the judgement may be, in ms
returns 1 moved (now or by this same call before), 0 not moved
]]
--- @include "server_time"
--- @include "once"
local done = once_done(KEYS[3])
if done then
  return done
end
if KEYS[5] then
  if (redis.call('GET', KEYS[5]) or '') ~= ARGV[5] or now_ms() - tonumber(ARGV[6]) > tonumber(ARGV[7]) then
    return 0
  end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[4]) == ARGV[3] then
  redis.call('DEL', KEYS[4])
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return once_record(KEYS[3], 1, ARGV[4])
