-- Goal 8 of the performance issue: exactly PUTS puts (default 2 000 000) of 256-byte values over KEYS
-- keys (default 1 000 000), key i % KEYS in turn, so each key is written PUTS / KEYS times; then stops.
-- Run with -t1 (the counter is per thread).
local value = string.rep("v", 256)
local puts = tonumber(os.getenv("PUTS") or "2000000")
local keys = tonumber(os.getenv("KEYS") or "1000000")
local sent, done = 0, 0
function request()
  local i = sent % keys
  sent = sent + 1
  local body = string.format('{"key":"key%07d","value":"%s"}', i, value)
  return wrk.format("POST", "/put", { ["Content-Type"] = "application/json" }, body)
end
function response(status, headers, body)
  done = done + 1
  if status ~= 200 then
    io.stderr:write("status " .. status .. ": " .. body .. "\n")
    wrk.thread:stop()
  end
  if done >= puts then wrk.thread:stop() end
end
