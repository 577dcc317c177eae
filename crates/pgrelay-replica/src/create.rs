//! `replica create`: a new streaming standby of a running primary.
//!
//! Steps, each a precondition of the next:
//! 1. Check the primary ([`check_primary`]): `wal_level` replica or logical,
//!    two free WAL senders (pg_basebackup streams WAL on a second
//!    connection), a free slot, a role with REPLICATION, and a pg_hba.conf
//!    line for physical replication from this host ([`crate::probe`]). Every
//!    problem is reported at once with the setting or line to change.
//! 2. Create the physical slot (reserving WAL now, so nothing the backup
//!    needs is removed before the standby connects), or reuse an inactive
//!    physical slot of that name.
//! 3. `pg_basebackup -X stream -c fast -S <slot>` of the primary's major
//!    ([`crate::tools`]). As root it writes root-owned files: the directory
//!    is then given to the server's OS user with mode 0700
//!    ([`crate::os::hand_over_data_dir`]).
//! 4. Write the standby configuration ([`crate::conf`]): primary_conninfo
//!    with `application_name` = the standby's name and the URL's TLS
//!    settings, primary_slot_name, hot_standby, port and socket directory,
//!    standby.signal.
//! 5. Optionally start it (pg_ctl as the data directory's owner) and wait
//!    until `pg_stat_replication` on the primary shows it `streaming`; only
//!    then, with `--sync`, add it to `synchronous_standby_names` (earlier
//!    would block every commit on the primary until it connects).
//!
//! On failure after the slot was created, the slot is dropped and a data
//! directory pgrelay created is removed, so the command can simply be run
//! again. PostgreSQL docs: "Streaming Replication", "Replication Slots",
//! "pg_basebackup".

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgrelay_source::Config;
use tokio_postgres::Client;

use crate::conf::{primary_conninfo, redact_conninfo, write_standby_config, StandbySettings};
use crate::os::{command_as, hand_over_data_dir, run, PgCtl, ServerUser};
use crate::probe::{probe_physical_replication, HbaVerdict};
use crate::sync::{set_sync_mode, SyncChange};
use crate::tools::ToolSearch;
use crate::{ReplicaError, Result};

/// How to make the standby.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// The primary, as a libpq URL (its user needs REPLICATION).
    pub primary: Config,
    /// The new data directory (absent or empty).
    pub pgdata: PathBuf,
    /// The standby's name: its `application_name` on the primary.
    pub name: String,
    /// The physical slot on the primary.
    pub slot: String,
    /// Add the standby to `synchronous_standby_names` once it streams.
    pub sync: bool,
    /// Start the standby and wait until it streams.
    pub start: bool,
    /// `port` of the standby (written to its configuration).
    pub port: Option<u16>,
    /// `unix_socket_directories` of the standby; default: as copied from
    /// the primary. Never inside a data directory: pg_rewind and
    /// pg_basebackup would try to copy the socket.
    pub socket_dir: Option<PathBuf>,
    /// Server log for `--start`; default `<pgdata>/pgrelay-server.log`.
    pub log_file: Option<PathBuf>,
    /// Where to find pg_basebackup and pg_ctl.
    pub tools: ToolSearch,
    /// OS user to run the server as (root only); default: see
    /// [`ServerUser::for_data_dir`].
    pub os_user: Option<String>,
    /// Limit for starting and for reaching `streaming`.
    pub wait_timeout: Duration,
}

/// What `replica create` made.
#[derive(Debug, Clone)]
pub struct CreatedStandby {
    /// Major version of primary and standby.
    pub major: u32,
    /// The data directory.
    pub pgdata: PathBuf,
    /// The standby's name.
    pub name: String,
    /// Its slot.
    pub slot: String,
    /// primary_conninfo with the password redacted.
    pub primary_conninfo: String,
    /// Whether it was started (and streams).
    pub started: bool,
    /// Its log file when started.
    pub log_file: Option<PathBuf>,
    /// The new `synchronous_standby_names`, with `--sync`.
    pub synchronous_standby_names: Option<String>,
    /// The OS user owning the data directory (root runs only).
    pub os_user: Option<String>,
}

/// What the primary looks like.
#[derive(Debug, Clone)]
pub struct PrimaryFacts {
    /// Server major version.
    pub major: u32,
    /// The slot exists already (inactive, physical: it will be reused).
    pub reuse_slot: bool,
}

/// Checks everything a standby needs from the primary; the error lists
/// every problem with its fix.
pub async fn check_primary(config: &Config, client: &Client, slot: &str) -> Result<PrimaryFacts> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('wal_level'), \
                    current_setting('max_wal_senders')::int, \
                    (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender'), \
                    current_setting('max_replication_slots')::int, \
                    (SELECT count(*)::int FROM pg_replication_slots), \
                    coalesce((SELECT rolreplication OR rolsuper FROM pg_roles \
                              WHERE rolname = current_user), false), \
                    current_user::text, \
                    (SELECT slot_type || ':' || active::text FROM pg_replication_slots \
                     WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(|e| ReplicaError::sql("checking the primary's settings", &e))?;
    let version: i32 = row.get(0);
    let major = (version / 10000) as u32;
    let wal_level: String = row.get(1);
    let max_senders: i32 = row.get(2);
    let senders: i32 = row.get(3);
    let max_slots: i32 = row.get(4);
    let slots: i32 = row.get(5);
    let can_replicate: bool = row.get(6);
    let user: String = row.get(7);
    let existing: Option<String> = row.get(8);
    let mut problems = Vec::new();
    if wal_level != "replica" && wal_level != "logical" {
        problems.push(format!(
            "wal_level is {wal_level}: run ALTER SYSTEM SET wal_level = replica on the primary \
             and restart it"
        ));
    }
    if max_senders - senders < 2 {
        problems.push(format!(
            "max_wal_senders is {max_senders} with {senders} in use; the base backup needs 2 \
             free (then the standby 1): ALTER SYSTEM SET max_wal_senders = {} and restart the \
             primary",
            senders + 3
        ));
    }
    let mut reuse_slot = false;
    match existing.as_deref() {
        None => {
            if max_slots - slots < 1 {
                problems.push(format!(
                    "max_replication_slots is {max_slots} and all are used: ALTER SYSTEM SET \
                     max_replication_slots = {} and restart the primary, or drop an unused slot",
                    slots + 2
                ));
            }
        }
        Some("physical:false") => reuse_slot = true,
        Some(other) => problems.push(format!(
            "replication slot {slot} already exists ({}); choose another --slot or drop it",
            other
                .replace(":true", ", active")
                .replace(":false", ", inactive")
        )),
    }
    if !can_replicate {
        problems.push(format!(
            "role {user} may not replicate: ALTER ROLE {} REPLICATION (or use a role that has it)",
            crate::quote::ident(&user)
        ));
    }
    if let HbaVerdict::Rejected {
        message,
        line_to_add,
    } = probe_physical_replication(config).await?
    {
        problems.push(format!(
            "pg_hba.conf on the primary allows no physical replication connection for {user} \
             from here (server: {message}); add this line before any matching `reject` line and \
             reload (SELECT pg_reload_conf()):\n    {line_to_add}"
        ));
    }
    if problems.is_empty() {
        Ok(PrimaryFacts { major, reuse_slot })
    } else {
        Err(ReplicaError::Precondition(format!(
            "the primary {} is not ready for a standby:\n  - {}",
            config.redacted(),
            problems.join("\n  - ")
        )))
    }
}

/// Waits until `pg_stat_replication` on `client`'s server shows `name`
/// streaming. A role without `pg_read_all_stats` (e.g. a plain REPLICATION
/// role) sees only NULL states there; then a connected walsender for
/// `name` whose slot `slot` is active counts as streaming.
pub async fn wait_streaming(
    client: &Client,
    name: &str,
    slot: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_opt(
                "SELECT r.state, coalesce((SELECT active FROM pg_replication_slots \
                                           WHERE slot_name = $2), false) \
                 FROM pg_stat_replication r WHERE lower(r.application_name) = lower($1) \
                 ORDER BY r.state = 'streaming' DESC NULLS LAST LIMIT 1",
                &[&name, &slot.unwrap_or("")],
            )
            .await
            .map_err(|e| ReplicaError::sql("reading pg_stat_replication", &e))?;
        let (state, slot_active) = match &row {
            Some(r) => (r.get::<_, Option<String>>(0), r.get::<_, bool>(1)),
            None => (None, false),
        };
        if state.as_deref() == Some("streaming")
            || (row.is_some() && state.is_none() && slot_active)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ReplicaError::Timeout(format!(
                "standby {name} is not streaming after {} s (state: {}); see its server log",
                timeout.as_secs(),
                match (&row, state) {
                    (None, _) => "not connected".to_string(),
                    (Some(_), Some(s)) => s,
                    (Some(_), None) => "connected, slot not active".to_string(),
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn dir_is_empty(p: &Path) -> Result<Option<bool>> {
    match std::fs::read_dir(p) {
        Ok(mut entries) => Ok(Some(entries.next().is_none())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReplicaError::io(format!("read {}", p.display()), e)),
    }
}

/// Creates the standby (see the module docs); `progress` receives one line
/// per step.
pub async fn create_standby(
    opts: &CreateOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<CreatedStandby> {
    if !crate::quote::is_valid_slot_name(&opts.slot) {
        return Err(ReplicaError::Precondition(format!(
            "slot name {:?} is invalid: use lower-case letters, digits and underscores (--slot)",
            opts.slot
        )));
    }
    let pgdata = if opts.pgdata.is_absolute() {
        opts.pgdata.clone()
    } else {
        std::env::current_dir()
            .map_err(|e| ReplicaError::io("current directory", e))?
            .join(&opts.pgdata)
    };
    let existed = match dir_is_empty(&pgdata)? {
        Some(false) => {
            return Err(ReplicaError::Precondition(format!(
                "{} is not empty; pg_basebackup needs a new or empty directory",
                pgdata.display()
            )))
        }
        Some(true) => true,
        None => false,
    };
    let owner = ServerUser::for_data_dir(&pgdata, opts.os_user.as_deref())?;
    let client = pgrelay_source::connect_sql(&opts.primary).await?;
    let facts = check_primary(&opts.primary, &client, &opts.slot).await?;
    progress(&format!(
        "primary {} (PostgreSQL {}) is ready for a standby",
        opts.primary.redacted(),
        facts.major
    ));
    let basebackup = opts.tools.find("pg_basebackup", facts.major)?;
    let pg_ctl = if opts.start {
        Some(opts.tools.find("pg_ctl", facts.major)?)
    } else {
        None
    };
    if facts.reuse_slot {
        progress(&format!("reusing the inactive physical slot {}", opts.slot));
    } else {
        client
            .execute(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[&opts.slot],
            )
            .await
            .map_err(|e| ReplicaError::sql(format!("creating slot {}", opts.slot), &e))?;
        tracing::info!(slot = %opts.slot, "created physical replication slot");
        progress(&format!("created physical replication slot {}", opts.slot));
    }
    let result = async {
        let mut cmd = command_as(None, &basebackup);
        cmd.arg("-D")
            .arg(&pgdata)
            .args(["-X", "stream", "-c", "fast", "-w", "-S", &opts.slot, "-d"])
            .arg(primary_conninfo(&opts.primary, "pgrelay_basebackup", false));
        if let Some(p) = &opts.primary.password {
            cmd.env("PGPASSWORD", p.expose());
        } else if let Some(f) = &opts.primary.passfile {
            cmd.env("PGPASSFILE", f);
        }
        progress(&format!(
            "taking the base backup with {} into {}",
            basebackup.display(),
            pgdata.display()
        ));
        run(cmd, "pg_basebackup").await.map_err(basebackup_hint)?;
        hand_over_data_dir(&pgdata, owner.as_ref()).await?;
        let conninfo = primary_conninfo(&opts.primary, &opts.name, true);
        write_standby_config(
            &pgdata,
            &StandbySettings {
                primary_conninfo: conninfo.clone(),
                slot: opts.slot.clone(),
                port: opts.port,
                socket_dir: opts.socket_dir.clone(),
            },
            owner.as_ref(),
        )?;
        progress(&format!(
            "wrote standby.signal and primary_conninfo = '{}', primary_slot_name = '{}'",
            redact_conninfo(&conninfo),
            opts.slot
        ));
        Ok::<String, ReplicaError>(conninfo)
    }
    .await;
    let conninfo = match result {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(slot = %opts.slot, error = %e, "standby creation failed; cleaning up");
            if !facts.reuse_slot {
                let _ = client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&opts.slot])
                    .await;
            }
            if existed {
                if let Ok(entries) = std::fs::read_dir(&pgdata) {
                    for entry in entries.flatten() {
                        let p = entry.path();
                        let _ = if p.is_dir() {
                            std::fs::remove_dir_all(&p)
                        } else {
                            std::fs::remove_file(&p)
                        };
                    }
                }
            } else {
                let _ = std::fs::remove_dir_all(&pgdata);
            }
            return Err(e);
        }
    };
    let mut created = CreatedStandby {
        major: facts.major,
        pgdata: pgdata.clone(),
        name: opts.name.clone(),
        slot: opts.slot.clone(),
        primary_conninfo: redact_conninfo(&conninfo),
        started: false,
        log_file: None,
        synchronous_standby_names: None,
        os_user: owner.as_ref().map(|u| u.name.clone()),
    };
    if let Some(program) = pg_ctl {
        let ctl = PgCtl {
            program,
            pgdata: pgdata.clone(),
            user: owner.clone(),
        };
        let log = opts
            .log_file
            .clone()
            .unwrap_or_else(|| pgdata.join("pgrelay-server.log"));
        progress(&format!("starting the standby (log: {})", log.display()));
        ctl.start(&log, opts.wait_timeout).await?;
        wait_streaming(&client, &opts.name, Some(&opts.slot), opts.wait_timeout).await?;
        tracing::info!(standby = %opts.name, slot = %opts.slot, "standby is streaming");
        progress(&format!("standby {} is streaming", opts.name));
        created.started = true;
        created.log_file = Some(log);
        if opts.sync {
            let (_, new) = set_sync_mode(&client, &SyncChange::On(vec![opts.name.clone()])).await?;
            progress(&format!("synchronous_standby_names = '{new}'"));
            created.synchronous_standby_names = Some(new);
        }
    }
    Ok(created)
}

/// Adds a hint to the pg_basebackup failures that have a known fix.
fn basebackup_hint(e: ReplicaError) -> ReplicaError {
    let ReplicaError::Command { what, detail } = e else {
        return e;
    };
    let hint = if detail.contains("not compiled in") || detail.contains("SSL support") {
        "; this pg_basebackup was built without TLS: use one that has it (Debian package \
         postgresql-client-<major>) with --pg-bin, or connect without TLS (sslmode=disable)"
    } else if detail.contains("password authentication failed") {
        "; check the password in the primary URL (or the passfile)"
    } else if detail.contains("pg_hba.conf") {
        "; add a `host replication <user> <client-ip>/32 scram-sha-256` line to the primary's \
         pg_hba.conf and reload it"
    } else {
        ""
    };
    ReplicaError::Command {
        what,
        detail: format!("{detail}{hint}"),
    }
}
