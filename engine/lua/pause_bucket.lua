--[[ pause_bucket: shut an API's bucket for every worker (a provider said 429).
Replay-safe: the caller passes an operation id; a replayed call answers the reopen
time of the first instead of pushing it further.
acquire_token applies the pause the first time it sees it (the bucket empties and
refills from the reopen time), so paused_until outlives the reopen by as long as a
refill from empty to full takes: a pause no caller saw before the reopen still
empties the bucket then.

KEYS[1] string  P:ratelimit:{<api>}:paused_until  server time the bucket reopens (µs)
KEYS[2] string  P:ratelimit:{<api>}:op:<op id>
ARGV[1] pause length in ms
ARGV[2] replay window in ms
ARGV[3] how long paused_until outlives the reopen, ms (absent: 1000)
returns the server time (µs) the bucket reopens (a longer pause already set wins)
]]
--- @include "server_time"
--- @include "once"
local done = once_done(KEYS[2])
if done then
  return done
end
local reopen = now_us() + tonumber(ARGV[1]) * 1000
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current > reopen then
  return once_record(KEYS[2], current, ARGV[2])
end
redis.call('SET', KEYS[1], string.format('%d', reopen), 'PX', tonumber(ARGV[1]) + tonumber(ARGV[3] or '1000'))
return once_record(KEYS[2], reopen, ARGV[2])
