--[[ lease: phase 2 of a claim. Turn claimed payloads (already validated by the
caller) into leased, in-flight tasks, each under a lock value the CLIENT made
(<token>:<worker>, the token random): a replayed call finds its own lock and
answers success again instead of minting a token the worker never learns.

KEYS[1] list    {P:T}:claiming:<worker>
KEYS[2] zset    {P:T}:leases                 member <type>:<task_id>, score deadline (ms)
KEYS[3] set     {P:T}:wtasks:<worker>        what this worker holds
then per task i (i = 1..n), two keys:
KEYS[2+2i] hash    {P:T}:inflight     task_id -> payload
KEYS[3+2i] string  {P:T}:task_lock:<task_id> lease
ARGV[1] visibility timeout in ms
then per task i, four values:
ARGV[4i-2] raw payload (as in the claiming list)
ARGV[4i-1] task_id
ARGV[4i]   task_type
ARGV[4i+1] the lock value to take (<token>:<worker>)
returns one value per task: 1 leased (now, or by this same call before), 0
skipped: gone from the claiming list (recovery took it back) or already leased
under the same task_id by a live holder (a duplicate delivery: dropped, the
holder's copy in the in-flight hash stands for it)
]]
--- @include "server_time"
local vis = tonumber(ARGV[1])
local now = now_ms()
local out = {}
local n = (#KEYS - 3) / 2
for i = 1, n do
  local inflight, lock = KEYS[2 + 2 * i], KEYS[3 + 2 * i]
  local raw, id, ttype, value = ARGV[4 * i - 2], ARGV[4 * i - 1], ARGV[4 * i], ARGV[4 * i + 1]
  local held = redis.call('GET', lock)
  out[i] = 0
  if held == value then
    out[i] = 1
  elseif redis.call('LREM', KEYS[1], 1, raw) == 1 and not (held and string.sub(held, 1, 1) ~= '~') then
    redis.call('HSET', inflight, id, raw)
    redis.call('SET', lock, value, 'PX', vis)
    redis.call('ZADD', KEYS[2], now + vis, ttype .. ':' .. id)
    redis.call('SADD', KEYS[3], ttype .. ':' .. id)
    out[i] = 1
  end
end
return out
