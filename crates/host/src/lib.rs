//! Start a program under the shim on this host, and drive it through the
//! region it shares with the shim. The `ferry` CLI (record, replay, exec)
//! and `ferryd` (primaries and live replicas) both start programs this way.

pub mod checkpoint;
pub mod program;
pub mod region;
pub mod resolve;
pub mod shim;
pub mod spawn;
pub mod status;
pub mod sys;
