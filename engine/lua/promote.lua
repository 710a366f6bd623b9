--[[ promote: move due tasks from delayed sets to the back of their ready lists.
Replay-safe through {P:T}:op:<id> (a replayed call answers the count of the first).

KEYS[1]     string  {P:T}:op:<op id>
KEYS[2i]    zset    {P:T}:delayed
KEYS[2i+1]  list    {P:T}:queue
ARGV[1] most payloads to move per delayed set
ARGV[2] replay window in ms
returns how many moved in all
]]
--- @include "server_time"
--- @include "once"
local done = once_done(KEYS[1])
if done then
  return done
end
local now = now_ms()
local moved = 0
for i = 2, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, payload in ipairs(due) do
    redis.call('ZREM', KEYS[i], payload)
    redis.call('LPUSH', KEYS[i + 1], payload)
    moved = moved + 1
  end
end
if moved == 0 then
  return 0
end
return once_record(KEYS[1], moved, ARGV[2])
