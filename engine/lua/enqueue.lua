--[[ enqueue: add a task unless (type, campaign) already has a live one.
The dedup key lives exactly as long as its task (no TTL): ack and dead-letter
delete it. Replay-safe: a replayed call finds its own task_id there and answers 1.

KEYS[1] list    {P}:queue:<type>       ready list (LPUSH: the back)
KEYS[2] zset    {P}:delayed:<type>     delayed set, scored by due time (ms)
KEYS[3] string  {P}:dedup:<type>:<cid> task_id of the live task
ARGV[1] payload (JSON)
ARGV[2] task_id
ARGV[3] delay in ms (0: ready now)
returns 1 enqueued (now or by this same call before), 0 a live task already exists
]]
--- @include "server_time"
local live = redis.call('GET', KEYS[3])
if live == ARGV[2] then
  return 1
end
if live then
  return 0
end
redis.call('SET', KEYS[3], ARGV[2])
local delay = tonumber(ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now_ms() + delay, ARGV[1])
else
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
return 1
