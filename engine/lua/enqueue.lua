--[[ enqueue: add a task unless (type, campaign) already has a live one.

KEYS[1] list    {P}:queue:<type>       ready list (LPUSH: the back)
KEYS[2] zset    {P}:delayed:<type>     delayed set, scored by due time (ms)
KEYS[3] string  {P}:dedup:<type>:<cid> task_id of the live task
ARGV[1] payload (JSON)
ARGV[2] task_id
ARGV[3] delay in ms (0: ready now)
ARGV[4] dedup TTL in ms (a safety net only; ack and dead-letter delete the key)
returns 1 enqueued, 0 a live task already exists
]]
if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[4]) == false then
  return 0
end
local delay = tonumber(ARGV[3])
if delay > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZADD', KEYS[2], now + delay, ARGV[1])
else
  redis.call('LPUSH', KEYS[1], ARGV[1])
end
return 1
