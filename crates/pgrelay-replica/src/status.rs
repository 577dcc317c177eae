//! Replication state as seen from the primary: one row per connected
//! standby (`pg_stat_replication`) and per replication slot
//! (`pg_replication_slots`), plus which standbys are *configured* and
//! missing.
//!
//! A configured standby is one the operator names with `--expect NAME`, or
//! one named in `synchronous_standby_names` (`*` names none). Health means:
//! every configured standby is connected with state `streaming`. A slot
//! warning is raised when an inactive slot retains more WAL than the
//! threshold (it will fill the primary's disk if its standby is gone);
//! warnings do not make the state unhealthy.
//!
//! Lag: bytes are the distance from the primary's current WAL position
//! (`pg_current_wal_lsn()`, or the last received position on a cascading
//! standby) to each of the standby's sent/write/flush/replay positions;
//! times are the server's own `write_lag`/`flush_lag`/`replay_lag`, which
//! are NULL once an idle standby has caught up (reported as `null`, and
//! as 0 in metrics when the byte lag is 0). Metrics recorded by
//! [`record_metrics`]: `pgrelay_replica_lag_bytes{standby}` and
//! `pgrelay_replica_lag_seconds{standby}` (replay), `pgrelay_replica_streaming{standby}`,
//! `pgrelay_slot_retained_bytes{slot}`.
//! PostgreSQL docs: "The Cumulative Statistics System" (pg_stat_replication),
//! "pg_replication_slots", "Synchronous Replication".

use serde::Serialize;
use tokio_postgres::Client;

use crate::sync::SyncNames;
use crate::{ReplicaError, Result};

/// One connected standby.
#[derive(Debug, Clone, Serialize)]
pub struct StandbyStatus {
    /// Its `application_name` (the standby's name).
    pub name: String,
    /// Client address (`null` for a Unix socket).
    pub address: Option<String>,
    /// `startup`, `catchup`, `streaming`, `backup` or `stopping`.
    pub state: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// Positions reported by the standby.
    pub sent_lsn: Option<String>,
    /// Written to the standby's disk.
    pub write_lsn: Option<String>,
    /// Flushed on the standby.
    pub flush_lsn: Option<String>,
    /// Replayed (visible to queries) on the standby.
    pub replay_lsn: Option<String>,
    /// Bytes not yet sent.
    pub sent_lag_bytes: Option<i64>,
    /// Bytes not yet written on the standby.
    pub write_lag_bytes: Option<i64>,
    /// Bytes not yet flushed on the standby.
    pub flush_lag_bytes: Option<i64>,
    /// Bytes not yet replayed on the standby.
    pub replay_lag_bytes: Option<i64>,
    /// `write_lag` in seconds.
    pub write_lag_seconds: Option<f64>,
    /// `flush_lag` in seconds.
    pub flush_lag_seconds: Option<f64>,
    /// `replay_lag` in seconds.
    pub replay_lag_seconds: Option<f64>,
}

/// One replication slot.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// Slot name.
    pub name: String,
    /// `physical` or `logical`.
    pub slot_type: String,
    /// Whether a connection uses it now.
    pub active: bool,
    /// Oldest WAL it needs.
    pub restart_lsn: Option<String>,
    /// Bytes of WAL it keeps (`current - restart_lsn`).
    pub retained_bytes: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Inactive and retaining more than the threshold.
    pub warning: bool,
}

/// Everything `replica status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct ReplicationStatus {
    /// The server asked is itself a standby (cascading).
    pub in_recovery: bool,
    /// Its current WAL position.
    pub current_lsn: Option<String>,
    /// `synchronous_standby_names` as set.
    pub synchronous_standby_names: String,
    /// Connected standbys.
    pub standbys: Vec<StandbyStatus>,
    /// Replication slots.
    pub slots: Vec<SlotStatus>,
    /// Standbys that must be streaming (`--expect` and synchronous ones).
    pub configured: Vec<String>,
    /// Configured standbys not streaming now.
    pub missing: Vec<String>,
    /// Human-readable warnings (slots retaining WAL).
    pub warnings: Vec<String>,
    /// No configured standby is missing.
    pub healthy: bool,
}

const STANDBYS: &str = "\
WITH cur AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                         ELSE pg_current_wal_lsn() END AS lsn) \
SELECT coalesce(application_name, ''), host(client_addr), coalesce(state, ''), \
       coalesce(sync_state, ''), \
       sent_lsn::text, write_lsn::text, flush_lsn::text, replay_lsn::text, \
       pg_wal_lsn_diff(cur.lsn, sent_lsn)::bigint, pg_wal_lsn_diff(cur.lsn, write_lsn)::bigint, \
       pg_wal_lsn_diff(cur.lsn, flush_lsn)::bigint, pg_wal_lsn_diff(cur.lsn, replay_lsn)::bigint, \
       extract(epoch FROM write_lag)::float8, extract(epoch FROM flush_lag)::float8, \
       extract(epoch FROM replay_lag)::float8 \
FROM pg_stat_replication, cur ORDER BY application_name, pid";

const SLOTS: &str = "\
WITH cur AS (SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                         ELSE pg_current_wal_lsn() END AS lsn) \
SELECT slot_name::text, slot_type, active, restart_lsn::text, \
       pg_wal_lsn_diff(cur.lsn, restart_lsn)::bigint, wal_status \
FROM pg_replication_slots, cur ORDER BY slot_name";

/// Reads the replication state from `client` (connected to the primary).
pub async fn replication_status(
    client: &Client,
    expect: &[String],
    slot_warn_bytes: u64,
) -> Result<ReplicationStatus> {
    let head = client
        .query_one(
            "SELECT pg_is_in_recovery(), (CASE WHEN pg_is_in_recovery() THEN \
             pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END)::text, \
             current_setting('synchronous_standby_names')",
            &[],
        )
        .await
        .map_err(|e| ReplicaError::sql("reading the primary's WAL position", &e))?;
    let in_recovery: bool = head.get(0);
    let current_lsn: Option<String> = head.get(1);
    let sync_names: String = head.get(2);
    let rows = client
        .query(STANDBYS, &[])
        .await
        .map_err(|e| ReplicaError::sql("reading pg_stat_replication", &e))?;
    let standbys: Vec<StandbyStatus> = rows
        .iter()
        .map(|r| StandbyStatus {
            name: r.get(0),
            address: r.get(1),
            state: r.get(2),
            sync_state: r.get(3),
            sent_lsn: r.get(4),
            write_lsn: r.get(5),
            flush_lsn: r.get(6),
            replay_lsn: r.get(7),
            sent_lag_bytes: r.get(8),
            write_lag_bytes: r.get(9),
            flush_lag_bytes: r.get(10),
            replay_lag_bytes: r.get(11),
            write_lag_seconds: r.get(12),
            flush_lag_seconds: r.get(13),
            replay_lag_seconds: r.get(14),
        })
        .collect();
    let rows = client
        .query(SLOTS, &[])
        .await
        .map_err(|e| ReplicaError::sql("reading pg_replication_slots", &e))?;
    let mut warnings = Vec::new();
    let slots: Vec<SlotStatus> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let active: bool = r.get(2);
            let retained: Option<i64> = r.get(4);
            let warning = !active && retained.is_some_and(|b| b > 0 && b as u64 > slot_warn_bytes);
            if warning {
                warnings.push(format!(
                    "inactive slot {name} retains {} of WAL (threshold {}); if its consumer is \
                     gone for good, drop it: SELECT pg_drop_replication_slot('{}')",
                    human_bytes(retained.unwrap_or(0) as u64),
                    human_bytes(slot_warn_bytes),
                    name.replace('\'', "''")
                ));
            }
            SlotStatus {
                name,
                slot_type: r.get(1),
                active,
                restart_lsn: r.get(3),
                retained_bytes: retained,
                wal_status: r.get(5),
                warning,
            }
        })
        .collect();
    if standbys.iter().any(|s| s.state.is_empty()) {
        warnings.push(
            "standby details are hidden from this role: connect as a superuser or a member of \
             pg_monitor (pg_read_all_stats) to see states and lag"
                .into(),
        );
    }
    let mut configured: Vec<String> = expect.to_vec();
    for n in SyncNames::parse(&sync_names).names {
        if n != "*" && !configured.iter().any(|c| c.eq_ignore_ascii_case(&n)) {
            configured.push(n);
        }
    }
    // application_name matching in synchronous_standby_names is
    // case-insensitive, so is ours.
    let missing: Vec<String> = configured
        .iter()
        .filter(|c| {
            !standbys
                .iter()
                .any(|s| s.name.eq_ignore_ascii_case(c) && s.state == "streaming")
        })
        .cloned()
        .collect();
    Ok(ReplicationStatus {
        in_recovery,
        current_lsn,
        synchronous_standby_names: sync_names,
        healthy: missing.is_empty(),
        standbys,
        slots,
        configured,
        missing,
        warnings,
    })
}

/// `1.5 GiB`-style size.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt_i(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn opt_s(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.3}s")).unwrap_or_else(|| "-".into())
}

/// The human-readable report `replica status` prints.
pub fn render_text(s: &ReplicationStatus) -> String {
    let mut rows = vec![vec![
        "STANDBY".to_string(),
        "ADDRESS".into(),
        "STATE".into(),
        "SYNC".into(),
        "SENT_LAG".into(),
        "WRITE_LAG".into(),
        "FLUSH_LAG".into(),
        "REPLAY_LAG".into(),
        "WRITE_TIME".into(),
        "FLUSH_TIME".into(),
        "REPLAY_TIME".into(),
    ]];
    for st in &s.standbys {
        rows.push(vec![
            st.name.clone(),
            st.address.clone().unwrap_or_else(|| "local".into()),
            st.state.clone(),
            st.sync_state.clone(),
            opt_i(st.sent_lag_bytes),
            opt_i(st.write_lag_bytes),
            opt_i(st.flush_lag_bytes),
            opt_i(st.replay_lag_bytes),
            opt_s(st.write_lag_seconds),
            opt_s(st.flush_lag_seconds),
            opt_s(st.replay_lag_seconds),
        ]);
    }
    let mut out = format!(
        "primary: current_lsn={} in_recovery={} synchronous_standby_names='{}'\n",
        s.current_lsn.as_deref().unwrap_or("-"),
        s.in_recovery,
        s.synchronous_standby_names
    );
    out.push_str(&table(&rows));
    let mut slots = vec![vec![
        "SLOT".to_string(),
        "TYPE".into(),
        "ACTIVE".into(),
        "RESTART_LSN".into(),
        "RETAINED_BYTES".into(),
        "WAL_STATUS".into(),
    ]];
    for sl in &s.slots {
        slots.push(vec![
            sl.name.clone(),
            sl.slot_type.clone(),
            sl.active.to_string(),
            sl.restart_lsn.clone().unwrap_or_else(|| "-".into()),
            opt_i(sl.retained_bytes),
            sl.wal_status.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&slots));
    for m in &s.missing {
        out.push_str(&format!("error: configured standby {m} is not streaming\n"));
    }
    for w in &s.warnings {
        out.push_str(&format!("warning: {w}\n"));
    }
    out
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map(Vec::len).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Sets the Prometheus gauges for one sample (see the module docs).
pub fn record_metrics(s: &ReplicationStatus) {
    for st in &s.standbys {
        let bytes = st.replay_lag_bytes.unwrap_or(0).max(0);
        let secs = st.replay_lag_seconds.unwrap_or(0.0);
        metrics::gauge!("pgrelay_replica_lag_bytes", "standby" => st.name.clone())
            .set(bytes as f64);
        metrics::gauge!("pgrelay_replica_lag_seconds", "standby" => st.name.clone()).set(secs);
    }
    let mut names: Vec<&str> = s.standbys.iter().map(|s| s.name.as_str()).collect();
    names.extend(s.configured.iter().map(String::as_str));
    for n in names {
        let up = s
            .standbys
            .iter()
            .any(|st| st.name == n && st.state == "streaming");
        metrics::gauge!("pgrelay_replica_streaming", "standby" => n.to_string()).set(if up {
            1.0
        } else {
            0.0
        });
    }
    for sl in &s.slots {
        metrics::gauge!("pgrelay_slot_retained_bytes", "slot" => sl.name.clone())
            .set(sl.retained_bytes.unwrap_or(0).max(0) as f64);
    }
}
