--[[ pause_bucket: shut an API's bucket for every worker (a provider said 429).

KEYS[1] string  P:ratelimit:{<api>}:paused_until  server time the bucket reopens (µs)
ARGV[1] pause length in ms
returns the server time (µs) the bucket reopens (a longer pause already set wins)
]]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local reopen = now + tonumber(ARGV[1]) * 1000
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > reopen then
  return current
end
redis.call('SET', KEYS[1], string.format('%d', reopen), 'PX', tonumber(ARGV[1]) + 1000)
return reopen
