//! pgrelay-source: a tokio client for PostgreSQL's logical replication
//! protocol, written for throughput and for operators.
//!
//! Layering (as in rust-postgres and mini-redis):
//! * [`config`]: libpq-compatible connection strings, environment and
//!   defaults; `pgpass` for the password file.
//! * `connection`: buffered frame I/O over TCP, a Unix socket or TLS
//!   (`tls`); pgrelay-wire's `FrameDecoder` reads, `postgres-protocol`
//!   writes startup/authentication/query messages.
//! * `connect`: host list, SSLRequest, startup and authentication (trust,
//!   password, md5, SCRAM-SHA-256, SCRAM-SHA-256-PLUS).
//! * [`ReplicationClient`]: replication commands and simple SQL on a
//!   `replication=database` connection, with per-major syntax
//!   ([`command`]).
//! * [`connect_sql`]: an ordinary tokio-postgres connection from the same
//!   [`Config`] (prepared statements, pipelining, COPY).
//! * [`LogicalStream`]: the CopyBoth stream, yielding XLogData and sending
//!   standby status updates.
//!
//! ```no_run
//! # async fn run() -> Result<(), pgrelay_source::SourceError> {
//! use pgrelay_source::*;
//! let config = Config::parse("host=db user=repl dbname=app sslmode=verify-full")?;
//! let mut client = ReplicationClient::connect(&config).await?;
//! let _slot = client.create_replication_slot("pgrelay", &CreateSlotOptions::default()).await?;
//! let options = PgOutputOptions::new(["pgrelay_pub"]);
//! let mut stream = client
//!     .start_logical_replication("pgrelay", Lsn::INVALID, &options, FeedbackSettings::default())
//!     .await?;
//! while let Some(msg) = stream.next().await? {
//!     // decode msg.data with pgrelay-pgoutput, apply, then:
//!     stream.set_flushed(msg.wal_start);
//! }
//! # Ok(()) }
//! ```
//!
//! Invariants: no password in any log line, error or `Debug` output; every
//! error says whether retrying can help ([`SourceError::is_transient`]);
//! every long-running call documents its cancel safety.
//!
//! PostgreSQL reference: "Streaming Replication Protocol"
//! (protocol-replication), "Message Flow" (protocol-flow), "SASL
//! Authentication" (sasl-authentication), libpq "Connection Strings"
//! (libpq-connstring), "The Password File" (libpq-pgpass), "SSL Support"
//! (libpq-ssl).

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod command;
pub mod config;
mod connect;
mod connection;
mod error;
mod pgpass;
mod sql;
mod stream;
mod tls;

pub use client::{CreatedSlot, QueryResult, ReplicationClient, SystemIdentity};
pub use command::{
    max_proto_version, CreateSlotOptions, OriginFilter, PgOutputOptions, SnapshotAction, Streaming,
};
pub use config::{
    ChannelBinding, Config, ConfigError, Host, Password, SslMode, Target, DEFAULT_PORT,
};
pub use error::{ConnectAttempt, SourceError};
pub use pgrelay_types::Lsn;
pub use pgrelay_wire::{SqlState, XLogData};
pub use sql::{connect_sql, is_transient_sql_error};
pub use stream::{FeedbackSettings, LogicalStream};

/// The rustls configuration this crate uses for `target` under `config`'s
/// `sslmode`, `sslrootcert`, `sslcert`/`sslkey` and `sslsni` rules
/// (verify-ca without the host name check, require without a root
/// certificate unverified, ALPN `postgresql`), for ordinary SQL
/// connections made with another client such as tokio-postgres-rustls.
/// Whether to use TLS at all (disable/allow/prefer) stays the caller's
/// decision; Unix socket targets are refused.
pub fn rustls_client_config(
    config: &Config,
    target: &Target,
) -> Result<std::sync::Arc<rustls::ClientConfig>, SourceError> {
    tls::setup(config, target).map(|setup| setup.config)
}
