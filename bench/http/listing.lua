-- The /v1 listing of 100 consecutive existing keys: GET /v1/kv?start=..&limit=100.
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  return wrk.format("GET", string.format("/v1/kv?start=key%05d&limit=100", math.random(0, 9899)))
end
