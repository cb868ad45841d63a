//! ferry-kv: a key-value server for Ferry to protect, and the clients that
//! check it lost nothing.
//!
//! - [`server`]: the `ferry-kv` server, an ordinary threaded Linux program
//!   that knows nothing about Ferry;
//! - [`protocol`]: its line protocol (docs/KV.md);
//! - [`client`]: a client with timeouts and an optional reconnecting mode;
//! - [`workload`]: concurrent writers that remember every acknowledged
//!   write, and the check that none was lost;
//! - [`load`]: the load generator behind `ferry-kv-load`.

pub mod client;
pub mod digest;
pub mod load;
pub mod protocol;
pub mod server;
pub mod signals;
pub mod stats;
pub mod store;
pub mod workload;

pub use client::{Client, ClientError, Reconnect};
pub use protocol::{Request, Response};
pub use server::{Config, Server, ServerError};
pub use workload::{Stop, VerifyReport, Workload, WorkloadConfig, WorkloadReport};
