//! The hook registry.
