//! Ordinary (non-replication) SQL connections, made with tokio-postgres
//! from the same libpq-style [`Config`] the replication client uses.
//!
//! One way to connect in the whole codebase: a URL that works for
//! replication works here too, with the same sslmode, sslrootcert,
//! client-certificate and Unix-socket rules, and the extended query
//! protocol (prepared statements, pipelining, COPY) that a walsender does
//! not offer. Errors become [`SourceError::Sql`], which says whether a
//! retry can help, and never contain the password.
//! PostgreSQL docs: "Extended Query" (protocol-flow), libpq "Connection
//! Strings" (libpq-connstring).

use crate::config::{Config, Host, SslMode};
use crate::error::SourceError;
use pgrelay_wire::SqlState;

/// Connects to the first host of `config` that accepts, and drives the
/// connection on the current tokio runtime (it ends when the returned
/// client is dropped).
pub async fn connect_sql(config: &Config) -> Result<tokio_postgres::Client, SourceError> {
    let mut attempts = Vec::new();
    for target in &config.targets {
        match connect_one(config, target).await {
            Ok(client) => return Ok(client),
            Err(error) => attempts.push(crate::error::ConnectAttempt {
                target: target.to_string(),
                tls: false,
                error: Box::new(error),
            }),
        }
    }
    match attempts.len() {
        0 => Err(SourceError::invalid(
            "connection string",
            "it names no host; add host=… or a host to the URL",
        )),
        1 => Err(*attempts.pop().map(|a| a.error).expect("one attempt")),
        _ => Err(SourceError::ConnectFailed { attempts }),
    }
}

async fn connect_one(
    config: &Config,
    target: &crate::config::Target,
) -> Result<tokio_postgres::Client, SourceError> {
    let mut pg = tokio_postgres::Config::new();
    pg.user(&config.user)
        .dbname(&config.dbname)
        .port(target.port);
    pg.application_name(config.application_name.as_deref().unwrap_or("pgrelay"));
    if let Some(p) = &config.password {
        pg.password(p.expose());
    }
    if let Some(t) = config.connect_timeout {
        pg.connect_timeout(t);
    }
    // Dead peers must surface as errors, not hang an apply forever.
    pg.keepalives(true)
        .keepalives_idle(std::time::Duration::from_secs(30));
    let socket = target.socket_path();
    match (&target.host, &socket) {
        (_, Some(path)) => {
            let dir = path
                .parent()
                .map(|p| p.to_path_buf())
                .unwrap_or(path.clone());
            pg.host_path(dir);
        }
        (Host::Tcp(name), None) => {
            pg.host(name);
        }
        _ => {}
    }
    if let Some(addr) = target.hostaddr {
        pg.hostaddr(addr);
    }
    let where_ = target.to_string();
    let use_tls = socket.is_none() && config.sslmode != SslMode::Disable;
    let wrap = |e: tokio_postgres::Error| SourceError::from_sql(&where_, e);
    if use_tls {
        pg.ssl_mode(if config.sslmode.requires_tls() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Prefer
        });
        let tls = crate::rustls_client_config(config, target)?;
        let (client, conn) = pg
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(
                (*tls).clone(),
            ))
            .await
            .map_err(wrap)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SQL connection ended");
            }
        });
        Ok(client)
    } else {
        let (client, conn) = pg.connect(tokio_postgres::NoTls).await.map_err(wrap)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "SQL connection ended");
            }
        });
        Ok(client)
    }
}

/// Whether an error from a tokio-postgres call can go away by itself
/// (reconnect and retry): a lost connection, a server shutting down or
/// starting, too many connections, a serialization failure or deadlock.
pub fn is_transient_sql_error(e: &tokio_postgres::Error) -> bool {
    if let Some(code) = e.code() {
        return SqlState::new(code.code().as_bytes()).is_some_and(|s| s.is_transient());
    }
    // No SQLSTATE: the connection itself failed (I/O, closed, timeout).
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.to_string().contains("timed out")
}
