--[[ enqueue: add tasks of one type, each unless its (type, campaign) already has a
live one. One call takes a whole batch (the producer's, reconcile's): Redis loops,
the client sends one command. The dedup key lives exactly as long as its task (no
TTL): ack and dead-letter delete it. Replay-safe: a replayed call finds each task's
own id in its dedup key and answers 1 for it again.

KEYS[1]     list    {P:T}:queue       ready list (LPUSH: the back)
KEYS[2]     zset    {P:T}:delayed     delayed set, scored by due time (ms)
KEYS[2+i]   string  {P:T}:dedup:<cid> task_id of the live task, per task i (i = 1..n)
ARGV[1]     delay in ms (0: ready now)
ARGV[2i]    payload (JSON) of task i
ARGV[2i+1]  task_id of task i
returns one value per task: 1 enqueued (now or by this same call before), 0 a live task already exists
]]
--- @include "server_time"
local delay = tonumber(ARGV[1])
local due = 0
if delay > 0 then
  due = now_ms() + delay
end
local out = {}
for i = 1, #KEYS - 2 do
  local dedup, payload, id = KEYS[2 + i], ARGV[2 * i], ARGV[2 * i + 1]
  local live = redis.call('GET', dedup)
  if live == id then
    out[i] = 1
  elseif live then
    out[i] = 0
  else
    redis.call('SET', dedup, id)
    if delay > 0 then
      redis.call('ZADD', KEYS[2], due, payload)
    else
      redis.call('LPUSH', KEYS[1], payload)
    end
    out[i] = 1
  end
end
return out
