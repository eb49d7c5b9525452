//! Rate-limited logging from hooks into tracing.
