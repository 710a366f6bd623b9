--[[ unregister: forget a dead worker once recovery has emptied what it held.

KEYS[1] hash    {P}:workers
KEYS[2] string  {P}:worker:<worker>      liveness key
KEYS[3] set     {P}:wtasks:<worker>
KEYS[4] list    {P}:claiming:<worker>
ARGV[1] worker id
returns 1 unregistered, 0 the worker is alive again or still holds something
]]
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('SCARD', KEYS[3]) > 0 or redis.call('LLEN', KEYS[4]) > 0 then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
