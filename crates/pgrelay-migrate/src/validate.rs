//! `pgrelay validate`: the preflight checklist for a migration or a
//! pipeline, run against the source and every target before anything is
//! created.
//!
//! Each check yields a line with a verdict (pass, warn, fail), the value
//! found, and — unless it passed — the exact fix. Nothing is changed on any
//! server. Connection failures are translated into the likely cause: a
//! missing pg_hba.conf line (printed ready to paste), a closed port or a
//! wrong host. PostgreSQL docs: "Logical Replication: Configuration
//! Settings" (logical-replication-config), "The pg_hba.conf File"
//! (auth-pg-hba-conf), "Replication slots" (warm-standby).

use serde::Serialize;
use tokio_postgres::Client;

use pgrelay_apply::check::{self, TableSpec};
use pgrelay_stream::config::TargetConfig;
use pgrelay_stream::StreamConfig;

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Fine.
    Pass,
    /// Works, but deserves attention.
    Warn,
    /// Must be fixed first.
    Fail,
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// `source` or `target NAME`.
    pub server: String,
    /// What was checked.
    pub check: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The value found.
    pub found: String,
    /// What to do, when not passed.
    pub fix: Option<String>,
}

/// What `validate` should expect of the targets.
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateOptions {
    /// `init` will copy the schema: targets may lack the tables.
    pub schema_copy: bool,
    /// Parallel copy connections the run will open per target.
    pub copy_workers: usize,
    /// Slots the other pipelines of the same run (the other databases of
    /// a multi-database configuration) will still create on this source:
    /// they need free slots and WAL senders too.
    pub other_slots: usize,
}

struct List {
    server: String,
    out: Vec<Check>,
}

impl List {
    fn push(
        &mut self,
        check: &str,
        verdict: Verdict,
        found: impl Into<String>,
        fix: Option<String>,
    ) {
        self.out.push(Check {
            server: self.server.clone(),
            check: check.to_owned(),
            verdict,
            found: found.into(),
            fix: if verdict == Verdict::Pass { None } else { fix },
        });
    }
}

async fn setting(c: &Client, name: &str) -> Option<String> {
    c.query_opt("SELECT setting FROM pg_settings WHERE name = $1", &[&name])
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

async fn int(c: &Client, q: &str) -> Option<i64> {
    c.query_one(q, &[]).await.ok().map(|r| r.get::<_, i64>(0))
}

/// Turns a connection failure into a cause and a fix.
pub fn connection_advice(
    config: &pgrelay_source::Config,
    e: &pgrelay_source::SourceError,
    replication: bool,
) -> String {
    let msg = e.to_string();
    let user = &config.user;
    let db = if replication {
        "replication".to_owned()
    } else {
        config.dbname.clone()
    };
    if msg.contains("pg_hba.conf") || msg.contains("28000") {
        format!(
            "the server's pg_hba.conf has no line for this client: add `host {db} {user} <this host's IP>/32 scram-sha-256` (the server log names the client address), then `SELECT pg_reload_conf()`"
        )
    } else if msg.contains("password authentication failed") || msg.contains("28P01") {
        format!("the password of role {user} is wrong: check the URL, PGPASSWORD or ~/.pgpass")
    } else if msg.contains("Connection refused") || msg.contains("refused") {
        "nothing listens there: check host and port, that the server runs, and listen_addresses in postgresql.conf".into()
    } else if msg.contains("timed out") || msg.contains("No route") {
        "the host does not answer: check the network path, firewalls and security groups for the PostgreSQL port".into()
    } else if msg.contains("does not exist") {
        "the database or role does not exist: check the URL's user and database name".into()
    } else {
        "check the URL, the network and the server's pg_hba.conf".into()
    }
}

/// Runs every check; the caller prints them and exits 1 on any failure.
pub async fn validate(config: &StreamConfig, options: ValidateOptions) -> Vec<Check> {
    let mut all = Vec::new();
    let mut src = List {
        server: "source".into(),
        out: Vec::new(),
    };
    let source = match pgrelay_source::connect_sql(&config.source).await {
        Ok(c) => {
            src.push("reachable", Verdict::Pass, config.source.redacted(), None);
            Some(c)
        }
        Err(e) => {
            let advice = connection_advice(&config.source, &e, false);
            src.push("reachable", Verdict::Fail, e.to_string(), Some(advice));
            None
        }
    };
    let mut source_specs: Vec<TableSpec> = Vec::new();
    let mut source_major = 0;
    if let Some(c) = &source {
        source_major = server_major(c).await;
        check_source(c, config, options, &mut src, &mut source_specs).await;
        // A replication connection needs its own pg_hba line.
        match pgrelay_source::ReplicationClient::connect(&config.source).await {
            Ok(r) => {
                let _ = r.close().await;
                src.push("replication connection", Verdict::Pass, "accepted", None);
            }
            Err(e) => {
                let advice = connection_advice(&config.source, &e, true);
                src.push(
                    "replication connection",
                    Verdict::Fail,
                    e.to_string(),
                    Some(advice),
                );
            }
        }
    }
    all.extend(src.out);
    for t in &config.targets {
        all.extend(check_target(t, &source_specs, source_major, options).await);
    }
    all
}

async fn server_major(c: &Client) -> u32 {
    int(c, "SELECT current_setting('server_version_num')::bigint")
        .await
        .map_or(0, |v| (v / 10000) as u32)
}

async fn check_source(
    c: &Client,
    config: &StreamConfig,
    options: ValidateOptions,
    l: &mut List,
    specs: &mut Vec<TableSpec>,
) {
    let wal = setting(c, "wal_level").await.unwrap_or_default();
    l.push(
        "wal_level",
        if wal == "logical" {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        wal.clone(),
        Some("ALTER SYSTEM SET wal_level = logical; then restart the server".into()),
    );
    let slots_max = setting(c, "max_replication_slots")
        .await
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let slots_used = int(c, "SELECT count(*) FROM pg_replication_slots")
        .await
        .unwrap_or(0);
    let slot_exists = c
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await
        .ok()
        .flatten()
        .is_some();
    // The pipeline's slot plus a temporary one for catch-up copies, and
    // the slots of the run's other pipelines not created yet.
    let others = options.other_slots as i64;
    let need = if slot_exists { 1 } else { 2 } + others;
    let free = slots_max - slots_used;
    l.push(
        "free replication slots",
        if free >= need {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        format!(
            "{free} free of max_replication_slots = {slots_max}{}",
            if slot_exists {
                " (the pipeline's slot exists)"
            } else {
                ""
            }
        ),
        Some(format!(
            "ALTER SYSTEM SET max_replication_slots = {}; then restart",
            slots_used + need + 2
        )),
    );
    let senders_max = setting(c, "max_wal_senders")
        .await
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let senders_used = int(c, "SELECT count(*) FROM pg_stat_replication")
        .await
        .unwrap_or(0);
    l.push(
        "free WAL senders",
        if senders_max - senders_used >= 2 + others {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        format!(
            "{} free of max_wal_senders = {senders_max}",
            senders_max - senders_used
        ),
        Some(format!(
            "ALTER SYSTEM SET max_wal_senders = {}; then restart",
            senders_used + 4 + others
        )),
    );
    let priv_row = c
        .query_one(
            "SELECT rolsuper OR rolreplication
                    OR EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname IN ('rds_replication','azure_pg_admin','cloudsqlsuperuser','alloydbsuperuser')
                               AND pg_has_role(current_user, r.oid, 'member')),
                    current_user::text
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await;
    if let Ok(r) = priv_row {
        let ok: bool = r.get(0);
        let user: String = r.get(1);
        l.push(
            "REPLICATION privilege",
            if ok { Verdict::Pass } else { Verdict::Fail },
            format!("role {user}"),
            Some(format!(
                "ALTER ROLE {user} REPLICATION; (on RDS: GRANT rds_replication TO {user})"
            )),
        );
    }
    let keep = setting(c, "max_slot_wal_keep_size")
        .await
        .unwrap_or_default();
    let db_size = int(c, "SELECT pg_database_size(current_database())")
        .await
        .unwrap_or(0);
    l.push(
        "max_slot_wal_keep_size",
        if keep == "-1" { Verdict::Warn } else { Verdict::Pass },
        if keep == "-1" { "unlimited".to_owned() } else { format!("{keep} MB") },
        Some(format!(
            "a stopped pipeline keeps WAL without limit: make sure the source's WAL disk has headroom (database is {} MB; plan at least that much free), or set max_slot_wal_keep_size",
            db_size / 1_000_000
        )),
    );
    match config.tables.resolve(c).await {
        Ok(names) => {
            let pairs: Vec<(String, String)> = names
                .iter()
                .map(|t| (t.schema.clone(), t.name.clone()))
                .collect();
            l.push(
                "selected tables",
                if pairs.is_empty() {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                },
                format!("{} tables", pairs.len()),
                Some("check tables.include/exclude".into()),
            );
            let mut no_select = Vec::new();
            for (s, t) in &pairs {
                let q = format!(
                    "{}.{}",
                    pgrelay_stream::select::quote_ident(s),
                    pgrelay_stream::select::quote_ident(t)
                );
                let ok = c
                    .query_one("SELECT has_table_privilege($1, 'SELECT')", &[&q])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .unwrap_or(false);
                if !ok {
                    no_select.push(q);
                }
            }
            l.push(
                "SELECT on selected tables",
                if no_select.is_empty() {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                if no_select.is_empty() {
                    "granted".to_owned()
                } else {
                    format!("missing on {}", no_select.join(", "))
                },
                Some(format!(
                    "GRANT SELECT ON {} TO <the source user>;",
                    no_select.join(", ")
                )),
            );
            if let Ok(found) = check::describe_tables(c, &pairs).await {
                *specs = found.into_iter().flatten().collect();
            }
            let without: Vec<&TableSpec> = specs
                .iter()
                .filter(|t| {
                    t.replica_identity == 'n' || (t.replica_identity == 'd' && !t.has_primary_key)
                })
                .collect();
            let fixes: Vec<String> = without
                .iter()
                .map(|t| {
                    format!(
                        "ALTER TABLE {} REPLICA IDENTITY FULL;",
                        pgrelay_types::sql::display_qualified(&t.schema, &t.name)
                    )
                })
                .collect();
            l.push(
                "replica identity",
                if without.is_empty() {
                    Verdict::Pass
                } else {
                    Verdict::Fail
                },
                if without.is_empty() {
                    "every table has a primary key or a replica identity".to_owned()
                } else {
                    format!(
                        "no primary key or replica identity: {}",
                        without
                            .iter()
                            .map(|t| format!("{}.{}", t.schema, t.name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
                Some(format!("add a primary key, or: {}", fixes.join(" "))),
            );
        }
        Err(e) => l.push(
            "selected tables",
            Verdict::Fail,
            e.to_string(),
            Some("check the source user's privileges".into()),
        ),
    }
}

async fn check_target(
    t: &TargetConfig,
    specs: &[TableSpec],
    source_major: u32,
    options: ValidateOptions,
) -> Vec<Check> {
    let mut l = List {
        server: format!("target {}", t.name),
        out: Vec::new(),
    };
    let c = match pgrelay_source::connect_sql(&t.config).await {
        Ok(c) => {
            l.push("reachable", Verdict::Pass, t.config.redacted(), None);
            c
        }
        Err(e)
            if options.schema_copy
                && e.to_string().contains("does not exist")
                && e.to_string().contains("database") =>
        {
            l.push(
                "reachable",
                Verdict::Pass,
                format!(
                    "server reachable; database {} will be created by init",
                    t.config.dbname
                ),
                None,
            );
            return l.out;
        }
        Err(e) => {
            let advice = connection_advice(&t.config, &e, false);
            l.push("reachable", Verdict::Fail, e.to_string(), Some(advice));
            return l.out;
        }
    };
    let major = server_major(&c).await;
    l.push(
        "version",
        if major >= source_major { Verdict::Pass } else { Verdict::Warn },
        format!("PostgreSQL {major} (source {source_major})"),
        Some("a target older than the source can reject newer syntax or types; upgrade the target or test carefully".into()),
    );
    let max_conn = setting(&c, "max_connections")
        .await
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    let used = int(
        &c,
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .await
    .unwrap_or(0);
    let need = options.copy_workers.max(1) as i64 + 2;
    l.push(
        "connection headroom",
        if max_conn - used >= need { Verdict::Pass } else { Verdict::Fail },
        format!("{} free of max_connections = {max_conn}, need {need}", max_conn - used),
        Some(format!("raise max_connections (ALTER SYSTEM SET max_connections = {}; restart) or lower apply.copy_workers", used + need + 10)),
    );
    let pairs: Vec<(String, String)> = specs
        .iter()
        .map(|s| (s.schema.clone(), s.name.clone()))
        .collect();
    match check::describe_tables(&c, &pairs).await {
        Ok(found) => {
            if options.schema_copy {
                let present: Vec<String> = found
                    .iter()
                    .flatten()
                    .map(|t| format!("{}.{}", t.schema, t.name))
                    .collect();
                l.push(
                    "tables (schema copy requested)",
                    if present.is_empty() { Verdict::Pass } else { Verdict::Warn },
                    if present.is_empty() { "none present yet".to_owned() } else { format!("already present: {}", present.join(", ")) },
                    Some("init will fail on existing tables: pass --drop-existing to recreate the target database, or drop them".into()),
                );
            } else {
                let problems: Vec<String> = check::compare(specs, &found)
                    .into_iter()
                    .map(|p| p.to_string())
                    .filter(|p| !p.contains("REPLICA IDENTITY"))
                    .collect();
                l.push(
                    "tables present and compatible",
                    if problems.is_empty() {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    },
                    if problems.is_empty() {
                        format!("{} tables match", specs.len())
                    } else {
                        problems.join("; ")
                    },
                    Some(
                        "fix each table as described, or run `pgrelay init` to copy the schema"
                            .into(),
                    ),
                );
            }
        }
        Err(e) => l.push(
            "tables",
            Verdict::Fail,
            e.to_string(),
            Some("check the target user's privileges".into()),
        ),
    }
    l.out
}
