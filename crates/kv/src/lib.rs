//! ferry-kv.
