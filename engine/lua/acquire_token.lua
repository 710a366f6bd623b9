--[[ acquire_token: reserve one token of an API's bucket, on the Redis clock.

A token bucket that reserves: `tokens` may go below zero, each token under zero
promised to a caller that sleeps until its slot, the server time its token
becomes its own. Slots of a busy bucket lie 1/rate apart, so each caller sleeps
once instead of asking again. A caller whose slot lies more than ARGV[3] away
reserves nothing (nothing is written unless a pause was applied) and learns
how far its slot would have been.

A pause (pause_bucket sets paused_until) takes effect here, the first time a
call finds paused_until later than last_refill: the bucket is emptied (tokens
0) and refills from the reopen time, or from the last slot already promised
when that is later, so callers after a pause line up at the rate from the
reopen on and never beside a promised slot. Slots promised before the pause
stand (their callers are asleep and cannot be told).

Replay: a replayed call reserves a second token that its caller never learns
of: one token wasted, never one granted too many.

KEYS[1] string  P:ratelimit:{<api>}:tokens        tokens at last_refill (float; below 0: promised)
KEYS[2] string  P:ratelimit:{<api>}:last_refill   server time the tokens are counted at (µs; after a
                                                  pause the reopen time, in the future)
KEYS[3] string  P:ratelimit:{<api>}:paused_until  server time the bucket reopens after a 429 (µs)
ARGV[1] rate in tokens per second (already scaled)
ARGV[2] burst: bucket capacity in tokens
ARGV[3] longest wait the caller will sleep, µs (absent or 0: a token free now, or nothing)
ARGV[4] how long after now a bucket without keys opens, µs: the longest wait any caller is ever
        promised (MAX_TOKEN_SLEEP), so that a slot promised before the keys were lost has passed
returns {reserved 1|0, wait in µs until the token is the caller's (refused: until it would have
been), server time of the decision in µs}
]]
--- @include "server_time"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3] or '0')
local fresh = tonumber(ARGV[4] or '0')
local now = now_us()
local state = redis.call('MGET', KEYS[1], KEYS[2], KEYS[3])
-- A bucket without keys is new or Redis lost it (a flush, a failover that lost the last writes).
-- Then callers may still sleep on slots it promised, up to MAX_TOKEN_SLEEP ahead, and nobody
-- knows how many calls the provider saw just before: it starts empty and opens only once every
-- such slot has passed (a new fleet's first worker primes its buckets to open now instead:
-- prime_bucket.lua). Written even when the caller is refused, so the next caller sees it.
local tokens = tonumber(state[1] or '0')
local last = tonumber(state[2] or (now + fresh))
local paused = tonumber(state[3] or '0')
local news = paused > last or state[1] == false
if news then
  last = math.max(paused, last + math.ceil(math.max(0, -tokens) / rate * 1000000))
  tokens = 0
end
if now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000000)
  last = now
end
tokens = tokens - 1
local wait = last - now
if tokens < 0 then
  wait = wait + math.ceil(-tokens / rate * 1000000)
end
local granted = wait <= max_wait
if not granted then
  tokens = tokens + 1
  if not news then
    return {0, wait, now}
  end
end
-- Numbers are written with format(): tostring() keeps only 14 digits, too few for µs.
-- No TTL: the two keys are the whole state of one API's bucket, exact at any age, and
-- one MSET without PX is the cheapest write (this script runs once per token).
redis.call('MSET', KEYS[1], string.format('%.17g', tokens), KEYS[2], string.format('%d', last))
return {granted and 1 or 0, wait, now}
