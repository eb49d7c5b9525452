//! Lua hooks: a sandboxed Luau VM per hook worker thread.

use std::sync::Arc;

use super::{CompiledHook, HookSpec, Runtime};

/// Compiles and runs Lua (Luau) hooks.
pub struct LuaRuntime;

impl Runtime for LuaRuntime {
    fn compile(&self, spec: &HookSpec) -> Result<Arc<dyn CompiledHook>, String> {
        Err(format!("hook {}: the Lua runtime is not built yet", spec.name))
    }
}
