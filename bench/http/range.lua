-- readrange of 100 consecutive existing keys.
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  local s = math.random(0, 9899)
  return wrk.format("GET", string.format("/readrange?start=key%05d&end=key%05d", s, s + 99))
end
