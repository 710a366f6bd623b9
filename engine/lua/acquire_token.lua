--[[ acquire_token: take one token from an API's bucket, on the Redis clock.

KEYS[1] string  P:ratelimit:{<api>}:tokens        tokens left (float)
KEYS[2] string  P:ratelimit:{<api>}:last_refill   server time of the last refill (µs)
KEYS[3] string  P:ratelimit:{<api>}:paused_until  server time the bucket reopens (µs)
ARGV[1] rate in tokens per second (already scaled)
ARGV[2] burst: bucket capacity in tokens
returns {granted 1|0, wait in µs (0 when granted), server time in µs}
]]
--- @include "server_time"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = now_us()
local paused = tonumber(redis.call('GET', KEYS[3]) or '0')
if paused > now then
  return {0, paused - now, now}
end
local tokens = tonumber(redis.call('GET', KEYS[1]) or ARGV[2])
local last = tonumber(redis.call('GET', KEYS[2]) or now)
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000000)
end
-- Numbers are written with format(): tostring() keeps only 14 digits, too few for µs.
-- Keys live as long as a refill from empty to full takes, then the bucket is full anyway.
local ttl = math.ceil(burst / rate * 1000) + 1000
if tokens >= 1 then
  redis.call('SET', KEYS[1], string.format('%.17g', tokens - 1), 'PX', ttl)
  redis.call('SET', KEYS[2], string.format('%d', now), 'PX', ttl)
  return {1, 0, now}
end
redis.call('SET', KEYS[1], string.format('%.17g', tokens), 'PX', ttl)
redis.call('SET', KEYS[2], string.format('%d', now), 'PX', ttl)
return {0, math.ceil((1 - tokens) / rate * 1000000), now}
