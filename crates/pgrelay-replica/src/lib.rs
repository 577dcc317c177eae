//! pgrelay-replica: physical streaming replicas and application roles,
//! driven from the outside with PostgreSQL's own tools.
//!
//! Job: everything `pgrelay replica` and `pgrelay users` do, as a library
//! the binary only wires to the command line: check a primary before a
//! standby is made from it ([`create`]), take the base backup with the
//! `pg_basebackup` of the primary's major ([`tools`]), write the standby
//! configuration ([`conf`]), start servers as the data directory's owner
//! ([`os`]), report and export replication state ([`status`]), manage
//! `synchronous_standby_names` ([`sync`]), promote ([`promote`]), run a
//! planned switchover without losing a committed transaction
//! ([`switchover`]), and manage login roles with SCRAM verifiers computed
//! client-side ([`users`]).
//!
//! Invariants: no password in any log line, error, status document or
//! printed connection string (see [`conf::redact_conninfo`]); every SQL
//! identifier or value built into a statement is quoted ([`quote`]); every
//! error says whether running the command again can help
//! ([`ReplicaError::is_transient`]) and what the operator should do.
//!
//! PostgreSQL docs: "High Availability, Load Balancing, and Replication"
//! (warm-standby, streaming replication, replication slots, synchronous
//! replication), "pg_basebackup", "pg_rewind", "pg_ctl", "Database Roles".

pub mod conf;
pub mod create;
mod error;
pub mod os;
pub mod probe;
pub mod promote;
pub mod quote;
pub mod status;
pub mod switchover;
pub mod sync;
pub mod tools;
pub mod users;

pub use error::ReplicaError;

/// Result type of this crate.
pub type Result<T, E = ReplicaError> = std::result::Result<T, E>;
