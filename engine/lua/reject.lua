--[[ reject: move a malformed payload from a claiming list to the dead letters.
Replay-safe through {P:T}:op:<id>.

KEYS[1] list    {P:T}:claiming:<worker>
KEYS[2] list    {P:T}:failed_tasks
KEYS[3] string  {P:T}:op:<op id>
ARGV[1] the raw payload, exactly as found
ARGV[2] the dead-letter entry (JSON with the reason)
ARGV[3] replay window in ms
returns 1 moved (now or by this same call before), 0 the payload was no longer there
]]
--- @include "once"
local done = once_done(KEYS[3])
if done then
  return done
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('RPUSH', KEYS[2], ARGV[2])
return once_record(KEYS[3], 1, ARGV[3])
