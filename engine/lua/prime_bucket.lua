--[[ prime_bucket: open a bucket that has no keys now, empty (a new fleet's first worker does this,
so the buckets of a fleet that starts from nothing open at once instead of MAX_TOKEN_SLEEP later,
as acquire_token.lua opens a bucket whose keys were lost). A bucket that has keys is left alone.
Replay-safe: the caller passes an operation id; a replayed call answers as the first did.

KEYS[1] string  P:ratelimit:{<api>}:tokens
KEYS[2] string  P:ratelimit:{<api>}:last_refill
KEYS[3] string  P:ratelimit:{<api>}:op:<op id>
ARGV[1] replay window in ms
returns 1 primed, 0 the bucket existed
]]
--- @include "server_time"
--- @include "once"
local done = once_done(KEYS[3])
if done then
  return done
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  return once_record(KEYS[3], 0, ARGV[1])
end
redis.call('MSET', KEYS[1], '0', KEYS[2], string.format('%d', now_us()))
return once_record(KEYS[3], 1, ARGV[1])
