-- batchput of 10 random keys with 256-byte values.
local value = string.rep("b", 256)
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  local parts = {}
  for i = 1, 10 do
    parts[i] = string.format('"b%08x%02d":"%s"', math.random(0, 0x7fffffff), i, value)
  end
  return wrk.format("POST", "/batchput", { ["Content-Type"] = "application/json" }, "{" .. table.concat(parts, ",") .. "}")
end
