--[[ requeue_inflight: put every payload of an old in-flight hash back on the
front (the right end) of its type's new ready list, untouched (retry count and
lease losses as they were: the holders were stopped for the upgrade), and drop
the hash (campaignctl upgrade-redis; single node only: two hash tags).

The oldest task (by enqueued_at) ends up rightmost, taken first; a payload that
is not JSON with a numeric enqueued_at counts as oldest (the next claim
dead-letters it with the reason). Idempotent: a second call finds no hash.

KEYS[1]  hash  {P}:inflight:<type>   task_id -> payload (old layout)
KEYS[2]  list  {P:<type>}:queue      ready list (new layout)
returns how many payloads moved
]]
local payloads = redis.call('HVALS', KEYS[1])
if #payloads == 0 then
  return 0
end
local function enqueued_at(raw)
  local ok, task = pcall(cjson.decode, raw)
  if ok and type(task) == 'table' and type(task.enqueued_at) == 'number' then
    return task.enqueued_at
  end
  return -1
end
local order = {}
for i, raw in ipairs(payloads) do
  order[i] = {enqueued_at(raw), raw}
end
table.sort(order, function(a, b)
  if a[1] ~= b[1] then
    return a[1] > b[1]
  end
  return a[2] < b[2]
end)
for _, entry in ipairs(order) do
  redis.call('RPUSH', KEYS[2], entry[2])
end
redis.call('DEL', KEYS[1])
return #payloads
