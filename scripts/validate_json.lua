-- validate_json.lua: values must be JSON objects with a numeric "id" and a
-- string "name". Deletes are always allowed.
--
--   ringkv hook deploy --name json-records --stage validate --prefix users/ \
--       --file scripts/validate_json.lua
--
-- Rejections say what is wrong: not JSON, not an object, a missing field, or
-- a field of the wrong type.

-- The fields every value must have, and the Lua type each must decode to.
local REQUIRED = {
	{ name = "id", type = "number" },
	{ name = "name", type = "string" },
}

-- How a decoded JSON value is called in messages.
local function kind_of(v, source)
	if v == json.null then
		return "null"
	elseif type(v) == "table" then
		-- json.decode turns both objects and arrays into tables; the first
		-- character of the text tells them apart.
		return if string.find(source, "^%s*%[") then "array" else "object"
	else
		return type(v)
	end
end

function validate(key, value, ctx)
	if ctx.op == "delete" then
		return true
	end
	local ok, doc = pcall(json.decode, value)
	if not ok then
		-- The parser's message, e.g. "expected value at line 1 column 1":
		-- its first line, without the "json.decode:" it starts with.
		local why = string.match(tostring(doc), "^[^\n]*")
		why = string.match(why, "json%.decode: (.*)$") or why
		return false, `value is not JSON ({why})`
	end
	local kind = kind_of(doc, value)
	if kind ~= "object" then
		local article = if kind == "null" then "" elseif kind == "array" then "an " else "a "
		return false, `value is not a JSON object (it is {article}{kind})`
	end
	for _, field in ipairs(REQUIRED) do
		local v = doc[field.name]
		if v == nil then
			return false, `missing field "{field.name}"`
		end
		local got = kind_of(v, "")
		if got ~= field.type then
			return false, `field "{field.name}" must be a {field.type}, not {got}`
		end
	end
	return true
end
