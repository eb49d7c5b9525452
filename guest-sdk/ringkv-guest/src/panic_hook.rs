//! Reports a guest panic to the host: its message and where it happened go
//! to `ringkv.panic`, then `panic = "abort"` traps and the host answers
//! `guest panicked: <message>`. Without it the host would see only a bare
//! `unreachable` trap.

use std::panic::PanicHookInfo;
use std::sync::Once;

/// Installs the hook; cheap after the first call of an instance (every call
/// gets a fresh instance, so in practice it runs once per call).
pub(crate) fn install() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| std::panic::set_hook(Box::new(|info| crate::sys::panic(&message(info)))));
}

/// `<message> (at <file>:<line>:<column>)`.
fn message(info: &PanicHookInfo<'_>) -> String {
    let payload = info.payload();
    let text = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (None, Some(s)) => s.as_str(),
        (None, None) => "Box<dyn Any>",
    };
    match info.location() {
        Some(at) => format!("{text} (at {}:{}:{})", at.file(), at.line(), at.column()),
        None => text.to_owned(),
    }
}
