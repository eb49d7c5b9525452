-- immutable_keys.lua: keys under audit/ can be created once and are then
-- never overwritten or deleted. Other keys are not affected.
--
--   ringkv hook deploy --name audit-immutable --stage validate --prefix audit/ \
--       --file scripts/immutable_keys.lua
--
-- Reading ctx.old_version makes the write conditional: it applies only if
-- the key still has the version the hook saw, and the leader runs the hook
-- again otherwise. So when many clients create the same audit key at once,
-- exactly one of them succeeds and the others are rejected.

local PREFIX = "audit/"

function validate(key, value, ctx)
	if string.sub(key, 1, #PREFIX) ~= PREFIX then
		return true
	end
	if ctx.op == "delete" then
		return false, `{key} is an audit key; audit keys are never deleted`
	end
	if ctx.old_version ~= 0 then
		return false, string.format("%s already exists (version %d); audit keys are never overwritten", key, ctx.old_version)
	end
	return true
end
