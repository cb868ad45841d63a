//! Ferry's replication protocol (roles, leases, epochs, acknowledgements, election) as a state machine with no sockets and no clock.

mod error;
pub mod history;
mod message;
mod node;
mod types;

pub use error::{CommandError, Refusal};
pub use history::{EpochStart, LogPosition};
pub use message::{Action, Input, Message};
pub use node::{AppStatus, BackupStatus, Node, PersistedApp, RestoredApp, Role};
pub use types::{Config, Epoch, Gseq, Member, Mode, NodeId, Time, Timings, MS};
