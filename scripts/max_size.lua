-- max_size.lua: rejects values larger than LIMIT bytes. Deletes are allowed.
--
--   ringkv hook deploy --name max-size --stage validate --prefix blobs/ \
--       --file scripts/max_size.lua

local LIMIT = 1024

function validate(key, value, ctx)
	if value == nil then
		return true
	end
	if #value > LIMIT then
		return false, string.format("value is %d bytes; the limit is %d bytes", #value, LIMIT)
	end
	return true
end
