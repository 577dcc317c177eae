//! `pgrelay switchover`: the cutover from the source to the targets.
//!
//! Steps, each reported with its duration: check that lag is small; fence
//! writes on the source (every login role that is not a superuser or a
//! replication role — or only `--role` ones — gets
//! `default_transaction_read_only = on`, and their sessions are
//! terminated); read the source's final WAL position; wait until the
//! pipeline's slot is confirmed past it, which means every target has
//! durably applied everything (the streamer confirms only what all
//! targets committed); copy every sequence's `last_value`/`is_called`;
//! verify every table at that quiescent point; report the write downtime
//! (fence to done). If a step fails, the fence is undone (each fenced
//! role's previous setting restored) and the error says what happened.
//! The source stays read-only on success. Several databases of one
//! source ([`switchover_all`]) share the fence, the final position and
//! the downtime; each pipeline is drained, its sequences copied and its
//! tables verified. With `--reverse`, a pipeline
//! from the new primary back to the old one is set up (slot, publication,
//! tables marked copied) so the old server stays a ready fallback.
//! PostgreSQL docs: "ALTER ROLE" (role-specific settings),
//! "pg_terminate_backend", "Sequence Manipulation Functions" (setval).

use std::time::{Duration, Instant};

use pgrelay_stream::select::{quote_ident, quote_literal};
use pgrelay_stream::StreamConfig;
use pgrelay_types::Lsn;
use serde::Serialize;
use tokio_postgres::Client;

use crate::MigrateError;

/// Switchover options.
#[derive(Debug, Clone)]
pub struct SwitchoverOptions {
    /// Largest lag (bytes) at which the cutover may start.
    pub max_lag_bytes: u64,
    /// How long to wait, before fencing anything, for the lag to come
    /// under `max_lag_bytes` (the drain after the fence, which is write
    /// downtime, is then short).
    pub lag_wait: Duration,
    /// Fence only these roles (default: every non-replication login role).
    pub roles: Vec<String>,
    /// How long to wait for the targets to drain.
    pub drain_timeout: Duration,
    /// Verify the tables after draining.
    pub verify: bool,
}

/// What happened.
#[derive(Debug, Serialize)]
pub struct SwitchoverReport {
    /// Roles made read-only on the source.
    pub fenced_roles: Vec<String>,
    /// Sessions terminated.
    pub terminated_sessions: i64,
    /// The source's last WAL position after the fence.
    pub final_lsn: String,
    /// Sequences copied per target (summed over databases).
    pub sequences: usize,
    /// Tables verified per target (summed over databases).
    pub tables_verified: usize,
    /// Milliseconds from the fence to the end.
    pub write_downtime_ms: u128,
    /// Per-step durations in milliseconds.
    pub steps: Vec<(String, u128)>,
}

struct Fence {
    /// (role, previous default_transaction_read_only setting or None)
    roles: Vec<(String, Option<String>)>,
}

async fn q(c: &Client, what: &str, sql: &str) -> Result<Vec<tokio_postgres::Row>, MigrateError> {
    c.query(sql, &[])
        .await
        .map_err(|e| MigrateError::sql(what, e))
}

/// Runs the cutover for `config`'s pipeline.
pub async fn switchover(
    config: &StreamConfig,
    options: &SwitchoverOptions,
) -> Result<SwitchoverReport, MigrateError> {
    switchover_all(std::slice::from_ref(config), options).await
}

/// `database NAME: ` for a pipeline of several, nothing otherwise.
fn db(config: &StreamConfig) -> String {
    config
        .database
        .as_ref()
        .map_or(String::new(), |d| format!("database {d}: "))
}

/// Runs the cutover of several pipelines of one source server at once
/// (the databases of a multi-database configuration): the fence, the final
/// WAL position and the downtime are the server's, shared; the drain waits
/// for every pipeline's slot; sequences are copied and tables verified
/// database by database. Any failure undoes the fence for all of them.
pub async fn switchover_all(
    configs: &[StreamConfig],
    options: &SwitchoverOptions,
) -> Result<SwitchoverReport, MigrateError> {
    let Some(first) = configs.first() else {
        return Err(MigrateError::Fatal("no pipeline to switch over".into()));
    };
    // Slots, roles and WAL are the server's: one connection sees them all.
    let source = pgrelay_source::connect_sql(&first.source).await?;
    let mut steps = Vec::new();
    let mut step = Instant::now();
    let mut mark = |name: &str, step: &mut Instant| {
        steps.push((name.to_owned(), step.elapsed().as_millis()));
        *step = Instant::now();
    };

    // 1. Lag must be small, and every streamer running (slot active).
    // Waiting here costs no downtime; every byte of lag left at the fence
    // is drained while writes are refused.
    let lag_deadline = Instant::now() + options.lag_wait;
    for config in configs {
        loop {
            let slot = source
            .query_opt(
                "SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
                   FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await
            .map_err(|e| MigrateError::sql("reading the slot", e))?
            .ok_or_else(|| {
                MigrateError::Fatal(format!(
                    "{}slot {} does not exist: run `pgrelay init` and `pgrelay stream` first",
                    db(config),
                    config.slot
                ))
            })?;
            let active: bool = slot.get(0);
            let lag: i64 = slot.get::<_, Option<i64>>(1).unwrap_or(0);
            if !active {
                return Err(MigrateError::Fatal(format!(
                "{}no `pgrelay stream` is streaming from slot {}: start it and wait until lag is small",
                db(config),
                config.slot
            )));
            }
            if lag as u64 <= options.max_lag_bytes {
                break;
            }
            if Instant::now() >= lag_deadline {
                return Err(MigrateError::Fatal(format!(
                "{}lag is {lag} bytes after waiting {:?}, more than --max-lag {}; nothing was fenced. Wait until the targets catch up (pgrelay status) or reduce the write load, then run switchover again",
                db(config),
                options.lag_wait,
                options.max_lag_bytes
            )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    mark("check lag", &mut step);

    // 2. Fence.
    let fence_started = Instant::now();
    let fence = fence(&source, &options.roles).await?;
    let result = async {
        let terminated: i64 = source
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE usename = ANY($1) AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[&fence.roles.iter().map(|r| r.0.clone()).collect::<Vec<_>>()],
            )
            .await
            .map_err(|e| MigrateError::sql("terminating sessions", e))?
            .get(0);
        // Transactions already committing finish; give them a moment.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let final_lsn: String = source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| MigrateError::sql("reading the final LSN", e))?
            .get(0);
        let final_lsn_v: Lsn = final_lsn.parse().unwrap_or(Lsn::INVALID);
        let mut steps_local = vec![("fence writes".to_owned(), fence_started.elapsed().as_millis())];
        let t = Instant::now();

        // 3. Drain: a slot is confirmed only up to what every target of
        // its pipeline committed, so this is "every target applied
        // everything", database after database.
        let deadline = Instant::now() + options.drain_timeout;
        for config in configs {
            loop {
                let confirmed: Option<String> = source
                    .query_one(
                        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                        &[&config.slot],
                    )
                    .await
                    .map_err(|e| MigrateError::sql("reading the slot", e))?
                    .get(0);
                let c: Lsn = confirmed.and_then(|s| s.parse().ok()).unwrap_or(Lsn::INVALID);
                if c >= final_lsn_v {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(MigrateError::Fatal(format!(
                        "{}the targets did not apply everything up to {final_lsn} within {:?} (slot confirmed at {c}); is `pgrelay stream` healthy?",
                        db(config),
                        options.drain_timeout
                    )));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        steps_local.push(("drain".to_owned(), t.elapsed().as_millis()));
        let t = Instant::now();

        // 4. Sequences, each database's from its own connection.
        let mut sequence_count = 0;
        let mut targets = Vec::new();
        for config in configs {
            let db_source = if configs.len() == 1 {
                None
            } else {
                Some(pgrelay_source::connect_sql(&config.source).await?)
            };
            let src = db_source.as_ref().unwrap_or(&source);
            let seqs = sequences(src, config).await?;
            sequence_count += seqs.len();
            for tc in &config.targets {
                let c = pgrelay_source::connect_sql(&tc.config).await?;
                copy_sequences(src, &c, &seqs)
                    .await
                    .map_err(|e| MigrateError::sql(&format!("target {}: copying sequences", tc.name), e))?;
                targets.push((config, c));
            }
        }
        steps_local.push(("sync sequences".to_owned(), t.elapsed().as_millis()));
        let t = Instant::now();

        // 5. Verify.
        let mut verified = 0;
        if options.verify {
            for config in configs {
                let mut per_target = 0;
                for tc in &config.targets {
                    let results = crate::verify::verify_target(config, tc, 0).await?;
                    let bad: Vec<String> = results.iter().filter(|r| !r.equal).map(|r| format!("{}.{}", r.schema, r.name)).collect();
                    if !bad.is_empty() {
                        return Err(MigrateError::Fatal(format!(
                            "target {} differs from the source in {}; run `pgrelay verify` for the ranges",
                            tc.name,
                            bad.join(", ")
                        )));
                    }
                    per_target = results.len();
                }
                verified += per_target;
            }
            steps_local.push(("verify".to_owned(), t.elapsed().as_millis()));
        }
        for (config, c) in &targets {
            let _ = crate::phase::set(c, &config.slot, "switched over", Some(&final_lsn)).await;
        }
        Ok((terminated, final_lsn, sequence_count, verified, steps_local))
    }
    .await;
    match result {
        Ok((terminated, final_lsn, sequences, tables_verified, more)) => {
            steps.extend(more);
            Ok(SwitchoverReport {
                fenced_roles: fence.roles.iter().map(|r| r.0.clone()).collect(),
                terminated_sessions: terminated,
                final_lsn,
                sequences,
                tables_verified,
                write_downtime_ms: fence_started.elapsed().as_millis(),
                steps,
            })
        }
        Err(e) => {
            let undo = unfence(&source, &fence).await;
            Err(MigrateError::Fatal(format!(
                "switchover failed, the source accepts writes again{}: {e}",
                match undo {
                    Ok(()) => String::new(),
                    Err(u) => format!(" (undoing the fence failed too: {u}; run ALTER ROLE … RESET default_transaction_read_only by hand)"),
                }
            )))
        }
    }
}

async fn fence(source: &Client, only: &[String]) -> Result<Fence, MigrateError> {
    let rows = q(
        source,
        "listing roles",
        "SELECT r.rolname::text,
                (SELECT option_value FROM pg_db_role_setting s, pg_options_to_table(s.setconfig)
                  WHERE s.setrole = r.oid AND s.setdatabase = 0 AND option_name = 'default_transaction_read_only')
           FROM pg_roles r
          WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolreplication AND r.rolname <> current_user
            AND r.rolname NOT LIKE 'pg\\_%'",
    )
    .await?;
    let mut fence = Fence { roles: Vec::new() };
    for r in rows {
        let name: String = r.get(0);
        if !only.is_empty() && !only.contains(&name) {
            continue;
        }
        source
            .batch_execute(&format!(
                "ALTER ROLE {} SET default_transaction_read_only = on",
                quote_ident(&name)
            ))
            .await
            .map_err(|e| MigrateError::sql("fencing a role", e))?;
        fence.roles.push((name, r.get(1)));
    }
    for want in only {
        if !fence.roles.iter().any(|r| &r.0 == want) {
            return Err(MigrateError::Fatal(format!("--role {want}: no such login role (superusers and replication roles cannot be fenced)")));
        }
    }
    Ok(fence)
}

async fn unfence(source: &Client, fence: &Fence) -> Result<(), tokio_postgres::Error> {
    for (role, previous) in &fence.roles {
        let sql = match previous {
            Some(v) => format!(
                "ALTER ROLE {} SET default_transaction_read_only = {}",
                quote_ident(role),
                quote_literal(v)
            ),
            None => format!(
                "ALTER ROLE {} RESET default_transaction_read_only",
                quote_ident(role)
            ),
        };
        source.batch_execute(&sql).await?;
    }
    Ok(())
}

/// Sequences in the schemas of the selected tables, but not those owned
/// by a table the selection leaves out (`init` did not create them).
async fn sequences(
    source: &Client,
    config: &StreamConfig,
) -> Result<Vec<(String, String)>, MigrateError> {
    let tables = config
        .tables
        .resolve(source)
        .await
        .map_err(|e| MigrateError::sql("listing tables", e))?;
    let schemas: Vec<String> = {
        let mut s: Vec<String> = tables.iter().map(|t| t.schema.clone()).collect();
        s.sort();
        s.dedup();
        s
    };
    let rows = source
        .query(
            "SELECT s.schemaname::text, s.sequencename::text, tn.nspname::text, t.relname::text
               FROM pg_sequences s
               JOIN pg_namespace sn ON sn.nspname = s.schemaname
               JOIN pg_class sc ON sc.relnamespace = sn.oid AND sc.relname = s.sequencename
               LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = sc.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
               LEFT JOIN pg_class t ON t.oid = d.refobjid
               LEFT JOIN pg_namespace tn ON tn.oid = t.relnamespace
              WHERE s.schemaname = ANY($1) ORDER BY 1, 2",
            &[&schemas],
        )
        .await
        .map_err(|e| MigrateError::sql("listing sequences", e))?;
    Ok(rows
        .iter()
        .filter(
            |r| match (r.get::<_, Option<String>>(2), r.get::<_, Option<String>>(3)) {
                (Some(s), Some(t)) => config.tables.matches(&s, &t),
                _ => true,
            },
        )
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Copies `last_value`/`is_called` of each sequence (setval on the target).
pub async fn copy_sequences(
    source: &Client,
    target: &Client,
    seqs: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    for (s, n) in seqs {
        let name = format!("{}.{}", quote_ident(s), quote_ident(n));
        let row = source
            .query_one(&format!("SELECT last_value, is_called FROM {name}"), &[])
            .await?;
        let last: i64 = row.get(0);
        let called: bool = row.get(1);
        target
            .execute(
                "SELECT setval($1::text::regclass, $2, $3)",
                &[&name, &last, &called],
            )
            .await?;
    }
    Ok(())
}

/// `--reverse`: after a switchover, a pipeline from the new primary (the
/// only target) back to the old source, so the old server stays a ready
/// fallback. The forward slot and publication are dropped first (their
/// streamer ends), or the changes streamed back would be streamed forward
/// again. No copy is needed: both sides are identical at this point, so
/// the reverse slot's consistent point is recorded as every table's
/// `sync_lsn` on the old source. Returns the reverse pipeline's
/// configuration, ready for `Pipeline::run`.
pub async fn prepare_reverse(config: &StreamConfig) -> Result<StreamConfig, MigrateError> {
    let [target] = config.targets.as_slice() else {
        return Err(MigrateError::Fatal(
            "--reverse needs exactly one target (the new primary)".into(),
        ));
    };
    let source = pgrelay_source::connect_sql(&config.source).await?;
    // End the forward stream: its walsender, its slot, its publication.
    for _ in 0..50 {
        let active: Option<Option<i32>> = source
            .query_opt(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
                &[&config.slot],
            )
            .await
            .map_err(|e| MigrateError::sql("reading the forward slot", e))?
            .map(|r| r.get(0));
        match active {
            None => break,
            Some(Some(pid)) => {
                source
                    .execute("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(|e| MigrateError::sql("ending the forward stream", e))?;
            }
            Some(None) => {
                match source
                    .execute("SELECT pg_drop_replication_slot($1)", &[&config.slot])
                    .await
                {
                    Ok(_) => break,
                    // The streamer reconnected in between: end it again.
                    Err(e) if e.code().map(|c| c.code()) == Some("55006") => {}
                    Err(e) => return Err(MigrateError::sql("dropping the forward slot", e)),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    source
        .batch_execute(&format!(
            "DROP PUBLICATION IF EXISTS {}",
            quote_ident(&config.publication)
        ))
        .await
        .map_err(|e| MigrateError::sql("dropping the forward publication", e))?;

    let mut reverse = config.clone();
    let base: String = config.slot.chars().take(55).collect();
    reverse.slot = format!("{base}_reverse");
    reverse.publication = reverse.slot.clone();
    reverse.source = target.config.clone();
    reverse.targets = vec![pgrelay_stream::config::TargetConfig {
        name: "old-source".into(),
        config: config.source.clone(),
        role: target.role,
    }];
    reverse.listen = None;

    let new_primary = pgrelay_source::connect_sql(&reverse.source).await?;
    let names = reverse
        .tables
        .resolve(&new_primary)
        .await
        .map_err(|e| MigrateError::sql("listing tables on the new primary", e))?;
    let pairs: Vec<(String, String)> = names
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let specs: Vec<_> = pgrelay_apply::check::describe_tables(&new_primary, &pairs)
        .await
        .map_err(|e| MigrateError::Fatal(format!("describing tables on the new primary: {e}")))?
        .into_iter()
        .flatten()
        .collect();
    pgrelay_stream::sync::ensure_publication(&new_primary, &reverse.publication, &specs).await?;
    let mut repl = pgrelay_source::ReplicationClient::connect(&reverse.source).await?;
    let created = match pgrelay_stream::sync::slot_position(&new_primary, &reverse.slot).await? {
        Some(lsn) => lsn,
        None => {
            repl.create_replication_slot(
                &reverse.slot,
                &pgrelay_source::CreateSlotOptions::default(),
            )
            .await?
            .consistent_point
        }
    };
    let _ = repl.close().await;
    pgrelay_apply::meta::ensure_schema(&source)
        .await
        .map_err(|e| MigrateError::Fatal(format!("old source: {e}")))?;
    for (schema, name) in &pairs {
        source
            .execute(
                "INSERT INTO pgrelay.table_sync (pipeline, schema_name, table_name, state, sync_lsn)
                 VALUES ($1, $2, $3, 'ready', $4::text::pg_lsn)
                 ON CONFLICT (pipeline, schema_name, table_name)
                 DO UPDATE SET state = 'ready', sync_lsn = EXCLUDED.sync_lsn, updated_at = now()",
                &[&reverse.slot, schema, name, &created.to_string()],
            )
            .await
            .map_err(|e| MigrateError::sql("recording the reverse pipeline's tables", e))?;
    }
    tracing::info!(slot = %reverse.slot, lsn = %created, "reverse pipeline ready");
    Ok(reverse)
}
