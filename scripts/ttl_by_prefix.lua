-- ttl_by_prefix.lua: expiry by key prefix, whatever the client asked for.
--   session/...  30 minutes
--   cache/...    60 seconds
--   other keys   the client's TTL (or none)
--
--   ringkv hook deploy --name ttl-by-prefix --stage ttl --file scripts/ttl_by_prefix.lua
--
-- Deployed without --prefix it runs on every put; keys it has no rule for
-- return nil, which keeps the client's TTL.

-- Seconds to live by prefix. Fractions are fine (0.5 is half a second).
local RULES = {
	{ prefix = "session/", seconds = 30 * 60 },
	{ prefix = "cache/", seconds = 60 },
}

function ttl(key, value, ctx)
	for _, rule in ipairs(RULES) do
		if string.sub(key, 1, #rule.prefix) == rule.prefix then
			return rule.seconds
		end
	end
	return nil
end
