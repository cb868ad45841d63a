//! ferry-harness: Ferry's fault-injection harness (docs/HARNESS.md).
//!
//! It builds hosts on one machine (network namespaces on a bridge), runs
//! `ferryd` in each and the key-value server `ferry-kv` protected by Ferry,
//! writes to it from a client host while it injects faults, and checks that
//! no acknowledged write was lost, that two primaries never served in one
//! epoch, and that the replica's state equals the primary's.
//!
//! - [`topology`]: namespaces, veths, bridge, and their removal;
//! - [`netns`]: entering a namespace (the only unsafe code);
//! - [`fault`]: kill, freeze, cut, drop; the answer counters;
//! - [`status`]: reading `ferry status --json`;
//! - [`cluster`]: three `ferryd`, the protected server, the client: the API
//!   that `ferry-chaos` and the demo use;
//! - [`scenario`]: the scenarios and their checks;
//! - [`report`]: the table and the JSON.

pub mod cluster;
pub mod cmd;
pub mod fault;
pub mod guard;
pub mod monitor;
pub mod netns;
pub mod report;
pub mod scenario;
pub mod status;
pub mod topology;

pub use cluster::{Binaries, Cluster, ClusterConfig};
pub use report::{Report, RunResult};
pub use scenario::{Scenario, Settings};
pub use topology::Topology;
