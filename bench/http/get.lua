-- GET of a random existing key among the 10 000 preloaded (key00000 .. key09999).
function setup(thread) thread:set("seed", math.random(1, 1e9)) end
function init(args) math.randomseed(seed) end
function request()
  return wrk.format("GET", string.format("/read?key=key%05d", math.random(0, 9999)))
end
