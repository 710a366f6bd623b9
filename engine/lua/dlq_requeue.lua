--[[ dlq_requeue: take one entry out of the dead letters and enqueue a fresh task
for it (retry_count 0, new task_id, fresh dedup). Replay-safe through {P:T}:op:<id>.

KEYS[1] list    {P:T}:failed_tasks
KEYS[2] list    {P:T}:queue
KEYS[3] string  {P:T}:dedup:<cid>
KEYS[4] string  {P:T}:op:<op id>
ARGV[1] the dead-letter entry, exactly as stored
ARGV[2] the new payload
ARGV[3] the new task_id
ARGV[4] replay window in ms
returns 1 requeued, 2 entry removed but a live task for (type, campaign) already
exists, 0 the entry was no longer there (a replayed call answers as the first did)
]]
--- @include "once"
local done = once_done(KEYS[4])
if done then
  return done
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
if redis.call('SET', KEYS[3], ARGV[3], 'NX') == false then
  return once_record(KEYS[4], 2, ARGV[4])
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return once_record(KEYS[4], 1, ARGV[4])
