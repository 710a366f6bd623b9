--[[ retry: move a leased task to its delayed set, due after a delay (a retry
with backoff, or a deferral for a rate limit or an outage). Fenced, replay-safe.

KEYS[1] string  {P:T}:task_lock:<task_id>
KEYS[2] hash    {P:T}:inflight
KEYS[3] zset    {P:T}:leases
KEYS[4] zset    {P:T}:delayed
KEYS[5] set     {P:T}:wtasks:<worker>
ARGV[1] the caller's lock value (<token>:<worker>)
ARGV[2] task_id
ARGV[3] task_type
ARGV[4] the payload to store (counters already updated by the caller)
ARGV[5] delay in ms
ARGV[6] replay window in ms
returns 1 scheduled (now or by this same call before), 0 the lease was lost
]]
--- @include "server_time"
--- @include "take_leased"
local token = string.match(ARGV[1], '^[^:]*')
local taken = take_leased(KEYS[1], KEYS[2], KEYS[3], KEYS[5], ARGV[1], '~retry:' .. token, ARGV[6], ARGV[2], ARGV[3])
if taken == 'taken' then
  redis.call('ZADD', KEYS[4], now_ms() + tonumber(ARGV[5]), ARGV[4])
end
return (taken == 'lost') and 0 or 1
