--[[ unclaim_all: empty an old claiming list (payloads a stopped worker took from
the ready lists and never leased): each payload goes where the caller decided —
the front (right end) of its type's new ready list, or, when it names no known
type, the dead letters with the reason — and the list is dropped, in one step
(campaignctl upgrade-redis; single node only: several hash tags).

Compare-and-set: the caller read the list, decided, and passes what it read; a
list that changed meanwhile is left alone (-1: read again). Entries are pushed
in the list's order, so the payload claimed first (rightmost) ends up frontmost.

KEYS[1]    list  {P}:claiming:<worker>  (old layout)
KEYS[2..]  list  where entries go: {P:<type>}:queue, {P}:failed_tasks
ARGV[1]    n, entries the caller read
ARGV[1+i]  entry i as read (i = 1..n, LRANGE order)
ARGV[n+2i]   index into KEYS of where entry i goes
ARGV[n+2i+1] what to push there: the payload, or its dead-letter entry (JSON)
returns n moved (0: nothing there), or -1 when the list is not what the caller read
]]
local n = tonumber(ARGV[1])
local now = redis.call('LRANGE', KEYS[1], 0, -1)
if #now ~= n then
  return -1
end
for i = 1, n do
  if now[i] ~= ARGV[1 + i] then
    return -1
  end
end
for i = 1, n do
  redis.call('RPUSH', KEYS[tonumber(ARGV[n + 2 * i])], ARGV[n + 2 * i + 1])
end
redis.call('DEL', KEYS[1])
return n
