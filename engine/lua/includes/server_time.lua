--[[ server_time: the Redis server's clock, the only clock deadlines are kept on.
An include, not a script (engine/scripts.py expands `--- @include "server_time"`).
now_ms() milliseconds, now_us() microseconds since the epoch.
]]
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function now_ms()
  return math.floor(now_us() / 1000)
end
