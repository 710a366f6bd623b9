--[[ promote: move due tasks from delayed sets to the back of their ready lists.

KEYS[2i-1] zset  {P}:delayed:<type>
KEYS[2i]   list  {P}:queue:<type>
ARGV[1] most payloads to move per delayed set
returns how many moved in all
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for i = 1, #KEYS, 2 do
  local due = redis.call('ZRANGEBYSCORE', KEYS[i], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, payload in ipairs(due) do
    redis.call('ZREM', KEYS[i], payload)
    redis.call('LPUSH', KEYS[i + 1], payload)
    moved = moved + 1
  end
end
return moved
