-- The Go system's PUT over the 10 000 preloaded keys (key00000 .. key09999): every write makes the
-- previous version garbage, so a long run rotates segments and triggers automatic compactions.
local value = string.rep("v", 256)
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  local body = string.format('{"key":"key%05d","value":"%s"}', math.random(0, 9999), value)
  return wrk.format("POST", "/put", { ["Content-Type"] = "application/json" }, body)
end
