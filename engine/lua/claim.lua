--[[ claim: phase 1 of a claim. Move up to N payloads from the ready lists into
the worker's claiming list, without blocking, and return the whole claiming
list (including leftovers of an earlier claim that was never leased).

Nothing is lost if the worker dies after this: recovery requeues the claiming
list of a worker whose liveness key is gone.

KEYS[1]   list  {P:T}:claiming:<worker>
KEYS[2..] list  {P:T}:queue, in the order to drain them
ARGV[1]   N, most payloads to move
returns   the claiming list, oldest first
]]
local want = tonumber(ARGV[1]) - redis.call('LLEN', KEYS[1])
local i = 2
while want > 0 and i <= #KEYS do
  local moved = redis.call('LMOVE', KEYS[i], KEYS[1], 'RIGHT', 'LEFT')
  if moved then
    want = want - 1
  else
    i = i + 1
  end
end
return redis.call('LRANGE', KEYS[1], 0, -1)
