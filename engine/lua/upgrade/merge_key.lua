--[[ merge_key: move one key of the single-tag layout to its name in the per-type
layout, merged into whatever the new name already holds (campaignctl upgrade-redis).

Single node only: the two keys carry different hash tags ({P} and {P:<type>}, or
none for the old controls), which Redis Cluster would refuse; the single-tag
layout never ran on a cluster. Idempotent: once the old key is gone a call does
nothing, so a replayed, interrupted or repeated upgrade is harmless. Every check
is made before the first write, so an error changes nothing.

KEYS[1]  the old key (any type; gone = nothing to do)
KEYS[2]  the new key (the same type, or absent)
ARGV[1]  how to merge when both exist:
         'append'    lists: the old entries end up to the right of the new ones, in
                     their order (workers take from the right: the old tasks, which
                     are older, go first)
         'min'       sorted sets: the union, the smaller score of a member in both
                     (one task: its earlier due time)
         'union'     sets: the union
         'keep_new'  hashes: field by field, a field the new key has wins;
                     strings: the new key wins and the old one is dropped
         'sum'       hashes of counters: summed field by field (a value that is
                     not a whole number: the new key's wins)
returns {n, outcome}: n = entries the old key held (list entries, members,
fields; 1 for a string), outcome 'none' (no old key), 'renamed' (no new key: a
RENAME), 'merged', or 'dropped' (a string whose new name already existed)
]]
local old, new, how = KEYS[1], KEYS[2], ARGV[1]
local kind = redis.call('TYPE', old)['ok']
if kind == 'none' then
  return {0, 'none'}
end
local have = redis.call('TYPE', new)['ok']
if have ~= 'none' and have ~= kind then
  return redis.error_reply('upgrade: ' .. new .. ' is a ' .. have .. ', ' .. old .. ' a ' .. kind)
end
local n = 1
if kind == 'list' then
  n = redis.call('LLEN', old)
elseif kind == 'zset' then
  n = redis.call('ZCARD', old)
elseif kind == 'set' then
  n = redis.call('SCARD', old)
elseif kind == 'hash' then
  n = redis.call('HLEN', old)
elseif kind ~= 'string' then
  return redis.error_reply('upgrade: ' .. old .. ' is a ' .. kind)
end
local fits = {append = {list = true}, min = {zset = true}, union = {set = true},
              keep_new = {hash = true, string = true}, sum = {hash = true}}
if not (fits[how] and fits[how][kind]) then
  return redis.error_reply('upgrade: cannot merge a ' .. kind .. ' with ' .. tostring(how))
end
if have == 'none' then
  redis.call('RENAME', old, new)
  return {n, 'renamed'}
end
if how == 'append' then
  -- Move the shorter list: the result is the same, the work the least.
  if redis.call('LLEN', new) < n then
    while redis.call('LMOVE', new, old, 'RIGHT', 'LEFT') do end
    redis.call('RENAME', old, new)
    return {n, 'merged'}
  end
  while redis.call('LMOVE', old, new, 'LEFT', 'RIGHT') do end
elseif how == 'min' then
  redis.call('ZUNIONSTORE', new, 2, new, old, 'AGGREGATE', 'MIN')
elseif how == 'union' then
  redis.call('SUNIONSTORE', new, new, old)
elseif kind == 'string' then
  redis.call('DEL', old)
  return {n, 'dropped'}
else
  local fields = redis.call('HGETALL', old)
  for i = 1, #fields, 2 do
    local field, value = fields[i], fields[i + 1]
    local mine = redis.call('HGET', new, field)
    if not mine then
      redis.call('HSET', new, field, value)
    elseif how == 'sum' and string.match(value, '^-?%d+$') and string.match(mine, '^-?%d+$') then
      redis.call('HINCRBY', new, field, value)
    end
  end
end
redis.call('DEL', old)
return {n, 'merged'}
