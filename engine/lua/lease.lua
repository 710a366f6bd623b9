--[[ lease: phase 2 of a claim. Turn claimed payloads (already validated by the
caller) into leased, in-flight tasks with a fencing token each.

KEYS[1] list    {P}:claiming:<worker>
KEYS[2] zset    {P}:leases                 member <type>:<task_id>, score deadline (ms)
KEYS[3] set     {P}:wtasks:<worker>        what this worker holds
KEYS[4] string  {P}:fence                  token counter
then per task i (i = 1..n), two keys:
KEYS[3+2i] hash    {P}:inflight:<type>     task_id -> payload
KEYS[4+2i] string  {P}:task_lock:<task_id> lease, value <token>:<worker>
ARGV[1] visibility timeout in ms
ARGV[2] worker id
then per task i, three values:
ARGV[3i]   raw payload (as in the claiming list)
ARGV[3i+1] task_id
ARGV[3i+2] task_type
returns one lock value per task, or 0 when that task was skipped: gone from the
claiming list (recovery took it) or already leased under the same task_id by a
live holder (a duplicate delivery; the holder's copy in the in-flight hash
stands for it)
]]
local vis = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local n = (#KEYS - 4) / 2
for i = 1, n do
  local inflight, lock = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  local raw, id, ttype = ARGV[3 * i], ARGV[3 * i + 1], ARGV[3 * i + 2]
  out[i] = 0
  if redis.call('LREM', KEYS[1], 1, raw) == 1 and redis.call('EXISTS', lock) == 0 then
    local value = redis.call('INCR', KEYS[4]) .. ':' .. ARGV[2]
    redis.call('HSET', inflight, id, raw)
    redis.call('SET', lock, value, 'PX', vis)
    redis.call('ZADD', KEYS[2], now + vis, ttype .. ':' .. id)
    redis.call('SADD', KEYS[3], ttype .. ':' .. id)
    out[i] = value
  end
end
return out
