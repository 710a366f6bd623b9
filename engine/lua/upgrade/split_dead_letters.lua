--[[ split_dead_letters: move each entry of the old dead letters whose task_type is
known to that type's dead letters; the rest (no known type, or not JSON) stay,
in their order, in {P}:failed_tasks, which the new layout keeps as the dead
letters of no known type (campaignctl upgrade-redis; single node only: several
hash tags). Moved entries keep their order and go ahead of any the new list
already holds (they are older: lists are oldest first). Idempotent: a second call
finds only entries of no known type and changes nothing.

KEYS[1]    list  {P}:failed_tasks               dead-letter entries (JSON), oldest first
KEYS[1+i]  list  {P:<type i>}:failed_tasks      (i = 1..k)
ARGV[i]    type i
returns {moved to type 1, ..., moved to type k}
]]
local where = {}
for i, task_type in ipairs(ARGV) do
  where[task_type] = i
end
local moved, keep, any = {}, {}, false
for i = 1, #ARGV do
  moved[i] = {}
end
for _, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local ok, entry = pcall(cjson.decode, raw)
  local i = ok and type(entry) == 'table' and type(entry.task_type) == 'string' and where[entry.task_type]
  if i then
    table.insert(moved[i], raw)
    any = true
  else
    table.insert(keep, raw)
  end
end
local counts = {}
for i = 1, #ARGV do
  counts[i] = #moved[i]
end
if not any then
  return counts
end
for i = 1, #ARGV do
  for j = #moved[i], 1, -1 do
    redis.call('LPUSH', KEYS[1 + i], moved[i][j])
  end
end
redis.call('DEL', KEYS[1])
for _, raw in ipairs(keep) do
  redis.call('RPUSH', KEYS[1], raw)
end
return counts
