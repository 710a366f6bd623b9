--[[ once: replay safety for the operations that hold no lease (unclaim, reject,
dlq_requeue, promote, pause_bucket, prime_bucket). The client makes an operation id;
the script stores its answer under {P:T}:op:<id> for REPLAY ms, and a replayed call
returns that answer without acting again.
An include, not a script. `op` is one of the including script's KEYS.
]]
local function once_done(op)
  local answer = redis.call('GET', op)
  if answer then
    return tonumber(answer)
  end
  return nil
end
local function once_record(op, answer, replay_ms)
  redis.call('SET', op, string.format('%d', answer), 'PX', replay_ms)
  return answer
end
