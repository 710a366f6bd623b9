--[[ prime_bucket: open a bucket that has no keys now, empty (a new fleet's first worker does this,
so the buckets of a fleet that starts from nothing open at once instead of MAX_TOKEN_SLEEP later,
as acquire_token.lua opens a bucket whose keys were lost). A bucket that has keys is left alone.
Replay-safe by nature: the second call finds the keys.

KEYS[1] string  P:ratelimit:{<api>}:tokens
KEYS[2] string  P:ratelimit:{<api>}:last_refill
returns 1 primed, 0 the bucket existed
]]
--- @include "server_time"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('MSET', KEYS[1], '0', KEYS[2], string.format('%d', now_us()))
return 1
