//! `replica promote`: end recovery on a standby and wait until it takes
//! writes.
//!
//! With a URL, promotion is `SELECT pg_promote(wait => true)` (superuser or
//! a role granted EXECUTE on it); with a data directory, `pg_ctl promote`
//! run as its owner. Either way pgrelay then waits until
//! `pg_is_in_recovery()` is false and a transaction that writes WAL (it
//! takes a transaction id and commits, with `synchronous_commit = local`
//! so a synchronous-standby setting inherited from the old primary cannot
//! block it) succeeds: only then do applications get a primary.
//! PostgreSQL docs: "Failover" (warm-standby-failover), `pg_promote`
//! (functions-admin), "pg_ctl".

use std::path::PathBuf;
use std::time::{Duration, Instant};

use pgrelay_source::Config;

use crate::os::{postmaster, PgCtl, ServerUser};
use crate::tools::ToolSearch;
use crate::{ReplicaError, Result};

/// Which standby to promote.
#[derive(Debug, Clone)]
pub enum PromoteTarget {
    /// Connect and call `pg_promote()`.
    Url(Config),
    /// Run `pg_ctl promote` on a local data directory; `url` (optional)
    /// is used for the write check, else the server's Unix socket.
    DataDir {
        /// The standby's data directory.
        pgdata: PathBuf,
        /// Where pg_ctl is.
        tools: ToolSearch,
        /// OS user (root only).
        os_user: Option<String>,
        /// URL for the write check.
        url: Option<Config>,
    },
}

/// Promotes and waits (up to `timeout`) until a write commits; returns the
/// time that took.
pub async fn promote(target: &PromoteTarget, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    let config = match target {
        PromoteTarget::Url(config) => {
            let client = pgrelay_source::connect_sql(config).await?;
            let in_recovery: bool = client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .map_err(|e| ReplicaError::sql("checking recovery state", &e))?
                .get(0);
            if !in_recovery {
                return Err(ReplicaError::Precondition(format!(
                    "{} is not a standby (not in recovery); nothing to promote",
                    config.redacted()
                )));
            }
            let secs = timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
            let done: bool = client
                .query_one("SELECT pg_promote(true, $1)", &[&secs])
                .await
                .map_err(|e| ReplicaError::sql("pg_promote()", &e))?
                .get(0);
            if !done {
                return Err(ReplicaError::Timeout(format!(
                    "the standby did not finish promotion within {secs} s; see its server log"
                )));
            }
            config.clone()
        }
        PromoteTarget::DataDir {
            pgdata,
            tools,
            os_user,
            url,
        } => {
            let ctl = PgCtl::for_data_dir(pgdata, tools, os_user.as_deref())?;
            if !pgdata.join("standby.signal").exists() {
                return Err(ReplicaError::Precondition(format!(
                    "{} has no standby.signal: it is not a standby",
                    pgdata.display()
                )));
            }
            ctl.promote(timeout).await?;
            match url {
                Some(u) => u.clone(),
                None => local_config(pgdata, ctl.user.as_ref())?,
            }
        }
    };
    wait_writable(&config, timeout.saturating_sub(started.elapsed())).await?;
    Ok(started.elapsed())
}

/// A connection to the server running on `pgdata` through its Unix
/// socket (as its OS user's namesake role).
pub fn local_config(pgdata: &std::path::Path, user: Option<&ServerUser>) -> Result<Config> {
    let pm = postmaster(pgdata).ok_or_else(|| {
        ReplicaError::Precondition(format!("no server is running on {}", pgdata.display()))
    })?;
    let dir = pm.socket_dir.ok_or_else(|| {
        ReplicaError::Precondition(format!(
            "the server on {} has no Unix socket; pass its URL",
            pgdata.display()
        ))
    })?;
    let mut s = format!(
        "host={} port={} dbname=postgres",
        crate::quote::conninfo_value(&dir.to_string_lossy()),
        pm.port
    );
    if let Some(u) = user {
        s.push_str(&format!(" user={}", crate::quote::conninfo_value(&u.name)));
    }
    Ok(Config::parse(&s).map_err(pgrelay_source::SourceError::from)?)
}

/// Waits until the server of `config` is out of recovery and a
/// WAL-writing transaction commits.
pub async fn wait_writable(config: &Config, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match try_write(config).await {
            Ok(()) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(ReplicaError::Timeout(format!(
                "{} does not accept writes after {} s: {last}",
                config.redacted(),
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn try_write(config: &Config) -> Result<()> {
    let client = pgrelay_source::connect_sql(config).await?;
    client
        .batch_execute(
            "BEGIN; SET LOCAL synchronous_commit = local; SELECT pg_current_xact_id(); COMMIT",
        )
        .await
        .map_err(|e| ReplicaError::sql("write check", &e))
}
