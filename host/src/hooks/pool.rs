//! The hook worker pool.
