//! `replica switchover`: a planned role swap between a primary and its
//! streaming standby, losing no committed transaction.
//!
//! Both data directories must be on this machine (pgrelay runs where the
//! servers are) and are checked against the servers' own
//! `data_directory`. Steps:
//! 1. Checks, changing nothing: the primary is a primary, the standby is
//!    in recovery and streams from it, the new primary's pg_hba.conf will
//!    let the old one replicate ([`crate::probe`]).
//! 2. A physical slot for the old primary is created on the standby (it
//!    survives promotion and keeps the WAL the old primary will need).
//! 3. Writes stop: the old primary is shut down cleanly (`pg_ctl stop -m
//!    fast`). A clean shutdown makes every walsender send all WAL up to the
//!    shutdown checkpoint and wait for the standby's flush before exiting.
//!    The write downtime clock starts here.
//! 4. The final LSN is the shutdown checkpoint in the old primary's
//!    `global/pg_control`; pgrelay waits until the standby has *replayed*
//!    past it, so every transaction the old primary committed is on the
//!    standby. If that does not happen in time, the old primary is started
//!    again as primary and the switchover is abandoned.
//! 5. The standby is promoted (`pg_promote`) and the clock stops at the
//!    first committed write on it: that is the measured write downtime.
//! 6. The old primary becomes a standby of the new one: `pg_rewind` is
//!    needed only when its WAL goes past the point where the new timeline
//!    forked (never after a clean shutdown whose checkpoint the standby
//!    replayed; checked from pg_control and the new timeline's history
//!    file) and then keeps the old primary's own configuration files;
//!    primary_conninfo (the `--standby` URL's host, role and TLS settings,
//!    `application_name` = the old primary's new name), primary_slot_name
//!    and standby.signal are written; it is started and pgrelay waits until
//!    the new primary shows it streaming. Its stale slot for the former
//!    standby is dropped.
//! 7. Synchronous replication follows the roles: if the old primary's
//!    `synchronous_standby_names` named the standby, the new primary names
//!    the old primary instead (set once it streams, so rejoining never
//!    blocks commits).
//!
//! PostgreSQL docs: "Failover" (warm-standby-failover), "pg_rewind",
//! "Shutting Down the Server" (server-shutdown), "Synchronous Replication".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgrelay_source::Config;
use tokio_postgres::Client;

use crate::conf::{primary_conninfo, write_standby_config, StandbySettings};
use crate::create::wait_streaming;
use crate::os::{command_as, control_data, lsn_text, parse_lsn, run, PgCtl};
use crate::probe::{probe_physical_replication, HbaVerdict};
use crate::sync::{set_and_reload, SyncNames};
use crate::tools::ToolSearch;
use crate::{ReplicaError, Result};

/// The two servers and how to reach them.
#[derive(Debug, Clone)]
pub struct SwitchoverOptions {
    /// The current primary (superuser).
    pub primary: Config,
    /// Its data directory.
    pub primary_pgdata: PathBuf,
    /// The standby to promote (superuser; its role also becomes the old
    /// primary's replication role, so it needs REPLICATION).
    pub standby: Config,
    /// Its data directory.
    pub standby_pgdata: PathBuf,
    /// The standby's name (application_name); default: read from its
    /// `pg_stat_wal_receiver`.
    pub standby_name: Option<String>,
    /// Name (application_name and slot) of the old primary once it follows
    /// the new one.
    pub old_primary_name: String,
    /// Where pg_ctl and pg_rewind are.
    pub tools: ToolSearch,
    /// OS user (root only); default: each data directory's owner.
    pub os_user: Option<String>,
    /// Limit for each wait.
    pub timeout: Duration,
    /// The old primary's server log after its restart; default
    /// `<primary-pgdata>/pgrelay-server.log`.
    pub log_file: Option<PathBuf>,
}

/// What a switchover did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwitchoverReport {
    /// From the old primary refusing writes to the new one committing one.
    pub write_downtime_ms: u128,
    /// The old primary's shutdown checkpoint, replayed by the standby.
    pub final_lsn: String,
    /// The promoted standby's name.
    pub new_primary: String,
    /// The old primary's name as a standby.
    pub new_standby: String,
    /// Whether pg_rewind ran.
    pub rewound: bool,
    /// `synchronous_standby_names` on the new primary.
    pub synchronous_standby_names: String,
    /// Notes for the operator.
    pub notes: Vec<String>,
}

fn same_dir(a: &Path, b: &str) -> bool {
    match (a.canonicalize(), Path::new(b).canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == Path::new(b),
    }
}

async fn one<T>(client: &Client, sql: &str, what: &str) -> Result<T>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    client
        .query_one(sql, &[])
        .await
        .map_err(|e| ReplicaError::sql(what, &e))
        .map(|r| r.get(0))
}

fn app_name_of(conninfo: &str) -> Option<String> {
    let rest = &conninfo[conninfo.find("application_name=")? + 17..];
    let v: String = if let Some(q) = rest.strip_prefix('\'') {
        q.chars().take_while(|&c| c != '\'').collect()
    } else {
        rest.chars().take_while(|c| !c.is_whitespace()).collect()
    };
    (!v.is_empty()).then_some(v)
}

/// Where the newest timeline of `pgdata` forked from `parent_tli`, read
/// from the highest-numbered `pg_wal/*.history` file.
fn fork_point(pgdata: &Path, parent_tli: u32) -> Result<Option<u64>> {
    let wal = pgdata.join("pg_wal");
    let mut newest: Option<(u32, PathBuf)> = None;
    for entry in std::fs::read_dir(&wal)
        .map_err(|e| ReplicaError::io(format!("read {}", wal.display()), e))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(hex) = name.strip_suffix(".history") {
            if let Ok(tli) = u32::from_str_radix(hex, 16) {
                if newest.as_ref().is_none_or(|(n, _)| tli > *n) {
                    newest = Some((tli, entry.path()));
                }
            }
        }
    }
    let Some((_, file)) = newest else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| ReplicaError::io(format!("read {}", file.display()), e))?;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (f.next(), f.next()) else {
            continue;
        };
        if tli.parse::<u32>().ok() == Some(parent_tli) {
            return Ok(parse_lsn(lsn));
        }
    }
    Ok(None)
}

/// Runs the switchover (see the module docs); `progress` gets one line per
/// step.
pub async fn switchover(
    opts: &SwitchoverOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<SwitchoverReport> {
    let pc = pgrelay_source::connect_sql(&opts.primary).await?;
    let sc = pgrelay_source::connect_sql(&opts.standby).await?;
    if one::<bool>(&pc, "SELECT pg_is_in_recovery()", "checking the primary").await? {
        return Err(ReplicaError::Precondition(format!(
            "{} is in recovery: --primary must be the current primary",
            opts.primary.redacted()
        )));
    }
    if !one::<bool>(&sc, "SELECT pg_is_in_recovery()", "checking the standby").await? {
        return Err(ReplicaError::Precondition(format!(
            "{} is not in recovery: --standby must be a standby",
            opts.standby.redacted()
        )));
    }
    for (client, dir, flag) in [
        (&pc, &opts.primary_pgdata, "--primary-pgdata"),
        (&sc, &opts.standby_pgdata, "--standby-pgdata"),
    ] {
        let actual: String = one(
            client,
            "SELECT current_setting('data_directory')",
            "reading data_directory (needs a superuser)",
        )
        .await?;
        if !same_dir(dir, &actual) {
            return Err(ReplicaError::Precondition(format!(
                "{flag} {} is not that server's data directory ({actual})",
                dir.display()
            )));
        }
    }
    let receiver = sc
        .query_opt(
            "SELECT status, coalesce(slot_name, ''), coalesce(conninfo, '') FROM pg_stat_wal_receiver",
            &[],
        )
        .await
        .map_err(|e| ReplicaError::sql("reading pg_stat_wal_receiver", &e))?;
    let Some(receiver) = receiver else {
        return Err(ReplicaError::Precondition(
            "the standby is not streaming (no WAL receiver); it must stream from the primary"
                .into(),
        ));
    };
    let old_slot: String = receiver.get(1);
    let standby_name = match &opts.standby_name {
        Some(n) => n.clone(),
        None => app_name_of(&receiver.get::<_, String>(2)).ok_or_else(|| {
            ReplicaError::Precondition(
                "cannot read the standby's application_name from pg_stat_wal_receiver; pass \
                 --standby-name"
                    .into(),
            )
        })?,
    };
    crate::create::wait_streaming(&pc, &standby_name, None, Duration::from_secs(5))
        .await
        .map_err(|_| {
            ReplicaError::Precondition(format!(
                "standby {standby_name} is not streaming from the primary; a switchover needs it \
                 caught up and connected"
            ))
        })?;
    if let HbaVerdict::Rejected {
        message,
        line_to_add,
    } = probe_physical_replication(&opts.standby).await?
    {
        return Err(ReplicaError::Precondition(format!(
            "after the switchover the old primary must replicate from the standby, but its \
             pg_hba.conf refuses that ({message}); add to the standby's pg_hba.conf and reload:\n    \
             {line_to_add}"
        )));
    }
    let old_sync: String = one(
        &pc,
        "SELECT current_setting('synchronous_standby_names')",
        "reading synchronous_standby_names",
    )
    .await?;
    let old_ctl = PgCtl::for_data_dir(&opts.primary_pgdata, &opts.tools, opts.os_user.as_deref())?;
    let new_ctl = PgCtl::for_data_dir(&opts.standby_pgdata, &opts.tools, opts.os_user.as_deref())?;
    let major = crate::os::data_dir_major(&opts.primary_pgdata)?;
    progress(&format!(
        "primary {} and standby {standby_name} ({}) checked",
        opts.primary.redacted(),
        opts.standby.redacted()
    ));

    // 2. The old primary's future slot, on the standby.
    let made_slot: bool = sc
        .query_one(
            "SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = $1",
            &[&opts.old_primary_name],
        )
        .await
        .map_err(|e| ReplicaError::sql("reading the standby's slots", &e))?
        .get(0);
    if made_slot {
        sc.execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&opts.old_primary_name],
        )
        .await
        .map_err(|e| ReplicaError::sql("creating the old primary's slot on the standby", &e))?;
    }
    drop(pc);

    // 3. Stop writes.
    let stop_clock = Instant::now();
    progress("stopping the primary (fast shutdown: sessions end, all WAL goes to the standby)");
    old_ctl.stop_fast(opts.timeout).await?;
    let control = control_data(&opts.primary_pgdata)?;
    let final_lsn = control.checkpoint;
    let log = opts
        .log_file
        .clone()
        .unwrap_or_else(|| opts.primary_pgdata.join("pgrelay-server.log"));

    // 4. Wait for replay past the shutdown checkpoint.
    let deadline = Instant::now() + opts.timeout;
    let caught_up = loop {
        let replayed: Option<String> = one(
            &sc,
            "SELECT pg_last_wal_replay_lsn()::text",
            "reading the standby's replay position",
        )
        .await?;
        if replayed
            .as_deref()
            .and_then(parse_lsn)
            .is_some_and(|r| r > final_lsn)
        {
            break true;
        }
        if Instant::now() > deadline || !control.shut_down_cleanly() {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if !caught_up {
        progress("the standby did not replay everything; starting the old primary again");
        old_ctl.start(&log, opts.timeout).await?;
        if made_slot {
            let _ = sc
                .execute(
                    "SELECT pg_drop_replication_slot($1)",
                    &[&opts.old_primary_name],
                )
                .await;
        }
        return Err(ReplicaError::Timeout(format!(
            "switchover abandoned, nothing changed: the standby did not replay the primary's \
             final WAL ({}) within {} s (or the primary did not shut down cleanly); the old \
             primary runs again as primary",
            lsn_text(final_lsn),
            opts.timeout.as_secs()
        )));
    }
    progress(&format!(
        "standby replayed past the primary's final LSN {}",
        lsn_text(final_lsn)
    ));

    // 5. Promote.
    let secs = opts.timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
    let promoted: bool = sc
        .query_one("SELECT pg_promote(true, $1)", &[&secs])
        .await
        .map_err(|e| ReplicaError::sql("promoting the standby", &e))?
        .get(0);
    if !promoted {
        return Err(ReplicaError::Timeout(format!(
            "the standby did not finish promotion within {secs} s; the old primary is stopped \
             at {}: see the standby's server log",
            opts.primary_pgdata.display()
        )));
    }
    let inherited: String = one(
        &sc,
        "SELECT current_setting('synchronous_standby_names')",
        "reading synchronous_standby_names",
    )
    .await?;
    let mut notes = Vec::new();
    if !inherited.is_empty() {
        // Copied from the old primary by the base backup; it may name the
        // new primary itself and block every commit.
        set_and_reload(&sc, "synchronous_standby_names", "").await?;
    }
    crate::promote::wait_writable(&opts.standby, opts.timeout).await?;
    let downtime = stop_clock.elapsed();
    progress(&format!(
        "standby {standby_name} promoted; writes were refused for {} ms",
        downtime.as_millis()
    ));

    // 6. The old primary follows the new one.
    let after_error = |e: ReplicaError| {
        ReplicaError::Precondition(format!(
            "{standby_name} is now the primary, but the old primary ({}) could not be turned \
             into its standby: {e}",
            opts.primary_pgdata.display()
        ))
    };
    let fork = fork_point(&opts.standby_pgdata, control.timeline)?;
    let rewind = !(control.shut_down_cleanly() && fork.is_some_and(|f| f > final_lsn));
    if rewind {
        progress("the old primary's WAL diverged from the new timeline: running pg_rewind");
        rewind_old_primary(opts, major, &old_ctl)
            .await
            .map_err(after_error)?;
    }
    write_standby_config(
        &opts.primary_pgdata,
        &StandbySettings {
            primary_conninfo: primary_conninfo(&opts.standby, &opts.old_primary_name, true),
            slot: opts.old_primary_name.clone(),
            port: None,
            socket_dir: None,
        },
        old_ctl.user.as_ref(),
    )
    .map_err(after_error)?;
    old_ctl
        .start(&log, opts.timeout)
        .await
        .map_err(after_error)?;
    wait_streaming(
        &sc,
        &opts.old_primary_name,
        Some(&opts.old_primary_name),
        opts.timeout,
    )
    .await
    .map_err(after_error)?;
    progress(&format!(
        "old primary streams from {standby_name} as {}",
        opts.old_primary_name
    ));
    if !old_slot.is_empty() {
        let dropped = match pgrelay_source::connect_sql(&opts.primary).await {
            Ok(c) => c
                .execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                     WHERE slot_name = $1 AND NOT active",
                    &[&old_slot],
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = dropped {
            notes.push(format!(
                "could not drop the former standby's slot {old_slot} on the old primary ({e}); \
                 drop it there, it retains WAL"
            ));
        }
    }

    // 7. Synchronous replication follows the roles.
    let mut names = SyncNames::parse(&old_sync);
    let mut sync_now = String::new();
    if names
        .names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(&standby_name))
    {
        for n in names.names.iter_mut() {
            if n.eq_ignore_ascii_case(&standby_name) {
                *n = opts.old_primary_name.clone();
            }
        }
        sync_now = names.render();
        set_and_reload(&sc, "synchronous_standby_names", &sync_now).await?;
    } else if !old_sync.is_empty() {
        notes.push(format!(
            "the old primary had synchronous_standby_names = '{old_sync}', which does not name \
             {standby_name}; the new primary runs without synchronous standbys"
        ));
    }
    let _ = new_ctl;
    Ok(SwitchoverReport {
        write_downtime_ms: downtime.as_millis(),
        final_lsn: lsn_text(final_lsn),
        new_primary: standby_name,
        new_standby: opts.old_primary_name.clone(),
        rewound: rewind,
        synchronous_standby_names: sync_now,
        notes,
    })
}

/// pg_rewind of the old primary from the new one, keeping the old
/// primary's own configuration files (pg_rewind copies the source's).
async fn rewind_old_primary(opts: &SwitchoverOptions, major: u32, ctl: &PgCtl) -> Result<()> {
    let program = opts.tools.find("pg_rewind", major)?;
    const KEEP: [&str; 4] = [
        "postgresql.conf",
        "postgresql.auto.conf",
        "pg_hba.conf",
        "pg_ident.conf",
    ];
    let mut saved = Vec::new();
    for f in KEEP {
        if let Ok(bytes) = std::fs::read(opts.primary_pgdata.join(f)) {
            saved.push((f, bytes));
        }
    }
    let mut source = primary_conninfo(&opts.standby, "pgrelay_rewind", false);
    source.push_str(&format!(
        " dbname={}",
        crate::quote::conninfo_value(&opts.standby.dbname)
    ));
    let mut cmd = command_as(ctl.user.as_ref(), &program);
    cmd.arg("-D")
        .arg(&opts.primary_pgdata)
        .arg(format!("--source-server={source}"));
    if let Some(p) = &opts.standby.password {
        cmd.env("PGPASSWORD", p.expose());
    }
    run(cmd, "pg_rewind").await.map_err(|e| match e {
        ReplicaError::Command { what, detail } if detail.contains("wal_log_hints") => {
            ReplicaError::Command {
                what,
                detail: format!(
                    "{detail}; pg_rewind needs wal_log_hints = on or data checksums on the old \
                     primary; without them, recreate it as a standby with `pgrelay replica \
                     create`"
                ),
            }
        }
        other => other,
    })?;
    for (f, bytes) in saved {
        crate::conf::write_owned(&opts.primary_pgdata.join(f), &bytes, ctl.user.as_ref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_application_name() {
        assert_eq!(
            app_name_of("user=r host=h application_name=std_1 sslmode=prefer").as_deref(),
            Some("std_1")
        );
        assert_eq!(
            app_name_of("application_name='a b'").as_deref(),
            Some("a b")
        );
        assert_eq!(app_name_of("user=r"), None);
    }
}
