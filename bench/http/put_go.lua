-- The Go system's PUT: POST /put with a JSON body, a 256-byte value under a random key.
local value = string.rep("v", 256)
local counter = 0
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  counter = counter + 1
  local body = string.format('{"key":"k%08x%08x","value":"%s"}', math.random(0, 0x7fffffff), counter, value)
  return wrk.format("POST", "/put", { ["Content-Type"] = "application/json" }, body)
end
