-- The ceiling server's POST: a 256-byte body, empty 200.
local body = string.rep("v", 256)
function request() return wrk.format("POST", "/", nil, body) end
