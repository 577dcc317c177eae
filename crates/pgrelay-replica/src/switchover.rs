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
//! [`rejoin`] is step 6 on its own, for after a failover (`replica
//! promote` while the old primary was still running or crashed): the
//! fork point then comes from the primary's timeline history file, and
//! pg_rewind runs when the old server's WAL went past it.
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
    tracing::info!(lsn = %lsn_text(final_lsn), "standby replayed the old primary's final WAL");
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
    tracing::info!(
        standby = %standby_name,
        downtime_ms = downtime.as_millis() as u64,
        "standby promoted and accepts writes"
    );
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
    follow(
        &Follow {
            pgdata: &opts.primary_pgdata,
            ctl: &old_ctl,
            primary: &opts.standby,
            primary_client: &sc,
            name: &opts.old_primary_name,
            slot: &opts.old_primary_name,
            rewind,
            major,
            tools: &opts.tools,
            log: &log,
            timeout: opts.timeout,
        },
        progress,
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

/// Everything needed to make a stopped former primary follow a new one.
struct Follow<'a> {
    pgdata: &'a Path,
    ctl: &'a PgCtl,
    primary: &'a Config,
    primary_client: &'a Client,
    name: &'a str,
    slot: &'a str,
    rewind: bool,
    major: u32,
    tools: &'a ToolSearch,
    log: &'a Path,
    timeout: Duration,
}

/// pg_rewind (when `f.rewind`), standby configuration, start, and the wait
/// for `streaming`. The server of `f.pgdata` must be stopped.
async fn follow(f: &Follow<'_>, progress: &mut (dyn FnMut(&str) + Send)) -> Result<()> {
    if f.rewind {
        tracing::info!(pgdata = %f.pgdata.display(), "running pg_rewind");
        progress("its WAL diverged from the new primary's timeline: running pg_rewind");
        rewind(f).await?;
    }
    write_standby_config(
        f.pgdata,
        &StandbySettings {
            primary_conninfo: primary_conninfo(f.primary, f.name, true),
            slot: f.slot.to_string(),
            port: None,
            socket_dir: None,
        },
        f.ctl.user.as_ref(),
    )?;
    // A primary's own slots would only pin WAL on a standby; they are
    // dropped by the caller once it runs (physical slots can be dropped in
    // recovery).
    f.ctl.start(f.log, f.timeout).await?;
    wait_streaming(f.primary_client, f.name, Some(f.slot), f.timeout).await
}

/// pg_rewind of `f.pgdata` from `f.primary`, keeping the target's own
/// configuration files (pg_rewind copies the source's).
async fn rewind(f: &Follow<'_>) -> Result<()> {
    let program = f.tools.find("pg_rewind", f.major)?;
    const KEEP: [&str; 4] = [
        "postgresql.conf",
        "postgresql.auto.conf",
        "pg_hba.conf",
        "pg_ident.conf",
    ];
    let mut saved = Vec::new();
    for name in KEEP {
        if let Ok(bytes) = std::fs::read(f.pgdata.join(name)) {
            saved.push((name, bytes));
        }
    }
    let mut source = primary_conninfo(f.primary, "pgrelay_rewind", false);
    source.push_str(&format!(
        " dbname={}",
        crate::quote::conninfo_value(&f.primary.dbname)
    ));
    let mut cmd = command_as(f.ctl.user.as_ref(), &program);
    cmd.arg("-D")
        .arg(f.pgdata)
        .arg(format!("--source-server={source}"));
    if let Some(p) = &f.primary.password {
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
        ReplicaError::Command { what, detail }
            if detail.contains("could not find previous WAL") =>
        {
            ReplicaError::Command {
                what,
                detail: format!(
                    "{detail}; the old primary no longer has the WAL back to the last checkpoint \
                     both servers share: keep more (wal_keep_size) or give it a \
                     restore_command, or recreate it with `pgrelay replica create`"
                ),
            }
        }
        other => other,
    })?;
    for (name, bytes) in saved {
        crate::conf::write_owned(&f.pgdata.join(name), &bytes, f.ctl.user.as_ref())?;
    }
    Ok(())
}

/// How to bring a former primary back as a standby.
#[derive(Debug, Clone)]
pub struct RejoinOptions {
    /// The former primary's local data directory.
    pub pgdata: PathBuf,
    /// The current primary (superuser: pg_rewind and the timeline history
    /// need it; its role is also the new standby's replication role).
    pub primary: Config,
    /// The standby's name (application_name) and, by default, slot.
    pub name: String,
    /// The physical slot on the primary.
    pub slot: String,
    /// Where pg_ctl and pg_rewind are.
    pub tools: ToolSearch,
    /// OS user (root only); default: the data directory's owner.
    pub os_user: Option<String>,
    /// Limit for each wait.
    pub timeout: Duration,
    /// Server log; default `<pgdata>/pgrelay-server.log`.
    pub log_file: Option<PathBuf>,
}

/// What `rejoin` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RejoinReport {
    /// Whether pg_rewind ran.
    pub rewound: bool,
    /// The old server's last checkpoint.
    pub last_checkpoint: String,
    /// Where the primary's timeline forked from the old one, if known.
    pub fork_lsn: Option<String>,
}

/// `replica rejoin`: after a failover (`replica promote` while the old
/// primary was still up, or crashed), make the former primary a streaming
/// standby of the new one. A running server is stopped cleanly first;
/// pg_rewind runs when its WAL went past the fork point of the primary's
/// timeline (read from the primary's history file with `pg_read_file`),
/// or when that cannot be established.
pub async fn rejoin(
    opts: &RejoinOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<RejoinReport> {
    let ctl = PgCtl::for_data_dir(&opts.pgdata, &opts.tools, opts.os_user.as_deref())?;
    let major = crate::os::data_dir_major(&opts.pgdata)?;
    let pc = pgrelay_source::connect_sql(&opts.primary).await?;
    if one::<bool>(&pc, "SELECT pg_is_in_recovery()", "checking the primary").await? {
        return Err(ReplicaError::Precondition(format!(
            "{} is in recovery: --primary must be the current primary",
            opts.primary.redacted()
        )));
    }
    if let HbaVerdict::Rejected {
        message,
        line_to_add,
    } = probe_physical_replication(&opts.primary).await?
    {
        return Err(ReplicaError::Precondition(format!(
            "the primary's pg_hba.conf refuses replication from here ({message}); add and \
             reload:\n    {line_to_add}"
        )));
    }
    if crate::os::postmaster(&opts.pgdata).is_some() {
        progress(&format!(
            "stopping the server running on {} (fast shutdown)",
            opts.pgdata.display()
        ));
        ctl.stop_fast(opts.timeout).await?;
    }
    let control = control_data(&opts.pgdata)?;
    let tli_row = pc
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int",
            &[],
        )
        .await
        .map_err(|e| ReplicaError::sql("reading the primary's timeline", &e))?;
    let primary_tli: i32 = tli_row.get(0);
    let (rewind, fork) = if primary_tli as u32 == control.timeline {
        // Same timeline: the old server never wrote past what the primary
        // has (it was a standby, or the primary is its continuation).
        (false, None)
    } else {
        let file = format!("pg_wal/{:08X}.history", primary_tli);
        let history: Option<String> = pc
            .query_one("SELECT pg_read_file($1)", &[&file])
            .await
            .ok()
            .map(|r| r.get(0));
        let fork = history.as_deref().and_then(|h| {
            h.lines().find_map(|line| {
                let mut f = line.split_whitespace();
                let tli: u32 = f.next()?.parse().ok()?;
                (tli == control.timeline).then(|| f.next().and_then(parse_lsn))?
            })
        });
        let clean_before_fork =
            control.shut_down_cleanly() && fork.is_some_and(|f| f > control.checkpoint);
        (!clean_before_fork, fork)
    };
    let slot_missing: bool = pc
        .query_one(
            "SELECT count(*) = 0 FROM pg_replication_slots WHERE slot_name = $1",
            &[&opts.slot],
        )
        .await
        .map_err(|e| ReplicaError::sql("reading the primary's slots", &e))?
        .get(0);
    if slot_missing {
        pc.execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&opts.slot],
        )
        .await
        .map_err(|e| ReplicaError::sql("creating the standby's slot", &e))?;
    }
    let log = opts
        .log_file
        .clone()
        .unwrap_or_else(|| opts.pgdata.join("pgrelay-server.log"));
    follow(
        &Follow {
            pgdata: &opts.pgdata,
            ctl: &ctl,
            primary: &opts.primary,
            primary_client: &pc,
            name: &opts.name,
            slot: &opts.slot,
            rewind,
            major,
            tools: &opts.tools,
            log: &log,
            timeout: opts.timeout,
        },
        progress,
    )
    .await?;
    progress(&format!("{} streams from the primary", opts.name));
    Ok(RejoinReport {
        rewound: rewind,
        last_checkpoint: lsn_text(control.checkpoint),
        fork_lsn: fork.map(lsn_text),
    })
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
