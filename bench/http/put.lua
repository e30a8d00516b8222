-- PUT of a 256-byte value under a random key (raw binary-safe endpoint).
local body = string.rep("v", 256)
local counter = 0
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  counter = counter + 1
  return wrk.format("PUT", string.format("/v1/kv/k%08x%08x", math.random(0, 0x7fffffff), counter), nil, body)
end
