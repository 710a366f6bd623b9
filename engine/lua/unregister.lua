--[[ unregister: forget a worker judged dead once recovery has emptied what it held
(the caller checked that each task type's held set and claiming list are empty:
they live in other slots). Only while its liveness key still holds the value
read with the judgement ('' = gone): a worker that beat since is alive and
stays registered. Replay-safe: a worker no longer registered answers 1 again.

KEYS[1] hash    {P}:workers
KEYS[2] string  {P}:worker:<worker>      liveness key
ARGV[1] worker id
ARGV[2] the liveness value read with the judgement ('' = gone)
returns 1 unregistered, 0 the worker is alive again
]]
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return 1
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[2])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
