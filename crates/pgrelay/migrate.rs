//! `pgrelay validate`, `init`, `verify` and `switchover`: the migration
//! commands around pgrelay-migrate, reading the same configuration as
//! `pgrelay stream` (the targets being the new servers).
//!
//! A configuration selecting several source databases is one pipeline per
//! database: `validate` and `verify` go through them in turn, `init`
//! plans them all, asks once and initializes them one after the other,
//! `switchover` cuts them over together (one fence). `init --interactive`
//! (crate::interactive) chooses databases and tables on the terminal.
//! Output for a single database is what it always was.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pgrelay_migrate::validate::{Check, ValidateOptions, Verdict};

use crate::stream::PipelineArgs;

/// `pgrelay validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Targets may lack the tables: `init` will copy the schema.
    #[arg(long)]
    schema_copy: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `pgrelay init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Drop and recreate the target databases first.
    #[arg(long)]
    drop_existing: bool,
    /// Also copy roles and their grants.
    #[arg(long)]
    roles: bool,
    /// Also copy large objects (logical replication does not carry them).
    #[arg(long)]
    large_objects: bool,
    /// Parallel connections per target for indexes and constraints.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Choose the databases and the tables to leave out on the terminal,
    /// see a summary, then confirm.
    #[arg(long, conflicts_with = "yes")]
    interactive: bool,
}

/// `pgrelay verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Parallel connections per side.
    #[arg(long, default_value_t = 0)]
    parallel: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `pgrelay switchover`.
#[derive(Debug, clap::Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Largest lag at which to start, in bytes (units allowed: 16MB).
    #[arg(long, default_value = "16MB")]
    max_lag: pgrelay_config::ByteSize,
    /// How long to wait for the lag to come under --max-lag before fencing
    /// (waiting costs no downtime).
    #[arg(long, default_value = "60s", value_parser = pgrelay_config::duration::parse)]
    lag_wait: Duration,
    /// Fence only this role (repeatable; default: every login role that is
    /// neither superuser nor replication).
    #[arg(long = "role", value_name = "ROLE")]
    roles: Vec<String>,
    /// Longest wait for the targets to apply everything.
    #[arg(long, default_value = "60s", value_parser = pgrelay_config::duration::parse)]
    drain_timeout: Duration,
    /// Skip the verification after draining.
    #[arg(long)]
    no_verify: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Then stream from the new primary back to the old source (which stays
    /// a ready fallback) until interrupted; ends the forward stream.
    #[arg(long)]
    reverse: bool,
    /// With --reverse: serve /metrics and /health of the reverse stream here.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

fn print_checks(checks: &[Check]) {
    let mut server = String::new();
    for c in checks {
        if c.server != server {
            server = c.server.clone();
            println!("{server}");
        }
        let mark = match c.verdict {
            Verdict::Pass => "✓",
            Verdict::Warn => "!",
            Verdict::Fail => "✗",
        };
        println!("  {mark} {}: {}", c.check, c.found);
        if let Some(fix) = &c.fix {
            println!("      fix: {fix}");
        }
    }
}

/// Runs the checklist (per database); exit 1 on any failure.
pub async fn validate(args: ValidateArgs) -> Result<()> {
    let configs = args.pipeline.load_all(None).await?;
    let several = configs.len() > 1;
    let missing = missing_slots(&configs).await;
    let mut failed = 0;
    let mut json = Vec::new();
    for config in &configs {
        let this = usize::from(missing.contains(&config.slot));
        let checks = pgrelay_migrate::validate::validate(
            config,
            ValidateOptions {
                schema_copy: args.schema_copy,
                copy_workers: config.apply.copy_workers,
                other_slots: missing.len() - this,
            },
        )
        .await;
        failed += checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
        if args.json {
            json.push((config.database.clone(), checks));
        } else {
            if let Some(db) = &config.database {
                println!("== database {db} ==");
            }
            print_checks(&checks);
        }
    }
    if args.json {
        if several {
            let docs: Vec<serde_json::Value> = json
                .iter()
                .map(|(db, checks)| serde_json::json!({"database": db, "checks": checks}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        } else {
            println!("{}", serde_json::to_string_pretty(&json[0].1)?);
        }
    }
    if failed > 0 {
        if !args.json {
            println!("{failed} check(s) failed");
        }
        std::process::exit(1);
    }
    Ok(())
}

/// The slots of several pipelines that do not exist yet (empty for one
/// pipeline, or when the source cannot be read: validate says why).
async fn missing_slots(configs: &[pgrelay_stream::StreamConfig]) -> Vec<String> {
    if configs.len() < 2 {
        return Vec::new();
    }
    let Ok(c) = pgrelay_source::connect_sql(&configs[0].source).await else {
        return Vec::new();
    };
    let Ok(rows) = c
        .query("SELECT slot_name::text FROM pg_replication_slots", &[])
        .await
    else {
        return Vec::new();
    };
    let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    configs
        .iter()
        .map(|c| c.slot.clone())
        .filter(|s| !existing.contains(s))
        .collect()
}

fn confirm(question: &str) -> Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!("{question} — not a terminal: pass --yes to confirm");
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .context("reading the answer")?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

/// `e` with the pipeline's database in front, for one of several.
fn in_db(config: &pgrelay_stream::StreamConfig, e: anyhow::Error) -> anyhow::Error {
    match &config.database {
        Some(db) => e.context(format!("database {db}")),
        None => e,
    }
}

/// A future that resolves when `rx` turns true (one per database's init).
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// Schema, data and post-data into the targets, database after database.
pub async fn init(
    args: InitArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let config = args.pipeline.load(None)?;
    let (configs, choice) = if args.interactive {
        crate::interactive::require_terminal()?;
        match crate::interactive::choose(&config).await? {
            Some(choice) => (choice.configs.clone(), Some(choice)),
            None => {
                println!("nothing selected; nothing changed");
                return Ok(());
            }
        }
    } else {
        (crate::stream::expand(&config).await?, None)
    };
    let several = configs.len() > 1;
    let mut plans = Vec::new();
    for c in &configs {
        let (plan, dump) = pgrelay_migrate::init::plan(c)
            .await
            .map_err(|e| in_db(c, e.into()))?;
        plans.push((plan, dump));
    }
    for (c, (plan, _)) in configs.iter().zip(&plans) {
        if let Some(db) = &c.database {
            println!("database {db}");
        }
        println!("{:<48} {:>14} {:>12}", "TABLE", "ROWS (est.)", "SIZE");
        for t in &plan.tables {
            println!(
                "{:<48} {:>14} {:>9.1} MB",
                t.table,
                t.rows,
                t.bytes as f64 / 1e6
            );
        }
        println!(
            "total {:.1} MB; measured source read rate {:.1} MB/s; estimated copy time {:.0} s; schema from {}",
            plan.total_bytes as f64 / 1e6,
            plan.measured_rate / 1e6,
            plan.eta_seconds,
            plan.schema_source
        );
    }
    let tables: usize = plans.iter().map(|(p, _)| p.tables.len()).sum();
    let bytes: i64 = plans.iter().map(|(p, _)| p.total_bytes).sum();
    let eta: f64 = plans.iter().map(|(p, _)| p.eta_seconds).sum();
    let targets = configs.first().map_or(0, |c| c.targets.len());
    if several || choice.is_some() {
        let names: Vec<&str> = configs.iter().map(|c| c.source.dbname.as_str()).collect();
        println!(
            "summary: {} database(s) ({}), {tables} table(s), {:.1} MB, estimated copy time {eta:.0} s",
            configs.len(),
            names.join(", "),
            bytes as f64 / 1e6
        );
        if let Some(choice) = &choice {
            if !choice.excluded.is_empty() {
                println!("left out: {}", choice.excluded.join(", "));
            }
        }
    }
    let what = format!(
        "copy the schema and data of {tables} tables{} into {targets} target(s){}",
        if several {
            format!(" in {} databases", configs.len())
        } else {
            String::new()
        },
        if args.drop_existing {
            ", DROPPING the existing target databases"
        } else {
            ""
        }
    );
    let go = if args.yes {
        true
    } else if choice.is_some() {
        crate::interactive::confirm(&format!("{what}?"))?
    } else {
        confirm(&format!("{what}?"))?
    };
    if !go {
        println!("nothing changed");
        return Ok(());
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let options = pgrelay_migrate::init::InitOptions {
        drop_existing: args.drop_existing,
        roles: args.roles,
        large_objects: args.large_objects,
        parallel: args.parallel,
    };
    let mut initialized: Vec<&str> = Vec::new();
    for (c, (_, dump)) in configs.iter().zip(&plans) {
        let prefix = crate::stream::db_prefix(c);
        let report = pgrelay_migrate::init::init(c, dump, &options, stopped(stop_rx.clone()))
            .await
            .map_err(|e| {
                if initialized.is_empty() {
                    return in_db(c, e.into());
                }
                // Rerunning would trip over the finished databases' schema.
                anyhow::Error::from(e).context(format!(
                    "database {} (already initialized: {}; after the fix run init again with --exclude-database for each of those, or with --drop-existing to redo all)",
                    c.source.dbname,
                    initialized.join(", ")
                ))
            })?;
        initialized.push(&c.source.dbname);
        for (phase, secs) in &report.phases {
            println!("  {prefix}{phase}: {secs:.1} s");
        }
        let done = format!(
            "{prefix}initialized: {} pre-data and {} post-data statements, {} large objects",
            report.pre_data, report.post_data, report.large_objects
        );
        if several || choice.is_some() {
            println!("{done}");
        } else {
            println!("{done}; now run `pgrelay stream` (same configuration)");
        }
    }
    match &choice {
        Some(choice) if !choice.flags.is_empty() => println!(
            "now run `pgrelay stream {}` (same configuration); pass the same flags to verify, status, switchover and cleanup",
            choice.flags.join(" ")
        ),
        _ if several || choice.is_some() => {
            println!("now run `pgrelay stream` (same configuration)")
        }
        _ => {}
    }
    Ok(())
}

/// Compares every table of every selected database; exit 1 on a difference.
pub async fn verify(args: VerifyArgs) -> Result<()> {
    let configs = args.pipeline.load_all(None).await?;
    let mut all_equal = true;
    let mut json = Vec::new();
    for config in &configs {
        for t in &config.targets {
            let results = pgrelay_migrate::verify::verify_target(config, t, args.parallel)
                .await
                .map_err(|e| in_db(config, e.into()))?;
            for r in &results {
                all_equal &= r.equal;
                if !args.json {
                    let mark = if r.equal { "✓" } else { "✗" };
                    println!(
                        "{mark} {}: {}.{}: {} rows on the source, {} on the target ({:.1} s)",
                        t.name,
                        r.schema,
                        r.name,
                        r.source_rows,
                        r.target_rows,
                        r.elapsed.as_secs_f64()
                    );
                    for range in &r.mismatched_ranges {
                        println!("      differs in {range:?}");
                    }
                }
            }
            json.push(serde_json::json!({"target": t.name, "tables": results.iter().map(|r| serde_json::json!({
                "schema": r.schema, "table": r.name, "equal": r.equal, "source_rows": r.source_rows,
                "target_rows": r.target_rows, "mismatched_ranges": format!("{:?}", r.mismatched_ranges),
                "seconds": r.elapsed.as_secs_f64()})).collect::<Vec<_>>()}));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json)?);
    }
    if !all_equal {
        if !args.json {
            println!("differences found");
        }
        std::process::exit(1);
    }
    Ok(())
}

/// The cutover (of every selected database at once).
pub async fn switchover(
    args: SwitchoverArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let configs = args.pipeline.load_all(None).await?;
    let question = if configs.len() > 1 {
        format!(
            "fence writes on the source and switch over {} databases to the targets?",
            configs.len()
        )
    } else {
        "fence writes on the source and switch over to the targets?".to_owned()
    };
    if !args.yes && !confirm(&question)? {
        println!("nothing changed");
        return Ok(());
    }
    let report = pgrelay_migrate::switchover::switchover_all(
        &configs,
        &pgrelay_migrate::switchover::SwitchoverOptions {
            max_lag_bytes: args.max_lag.0,
            lag_wait: args.lag_wait,
            roles: args.roles,
            drain_timeout: args.drain_timeout,
            verify: !args.no_verify,
        },
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for (step, ms) in &report.steps {
            println!("  {step}: {ms} ms");
        }
        println!(
            "switched over at {}: fenced {} role(s), terminated {} session(s), {} sequence(s) copied, {} table(s) verified",
            report.final_lsn,
            report.fenced_roles.len(),
            report.terminated_sessions,
            report.sequences,
            report.tables_verified
        );
        println!(
            "write downtime: {:.3} s (the source stays read-only for the fenced roles)",
            report.write_downtime_ms as f64 / 1000.0
        );
    }
    if args.reverse {
        use std::io::Write as _;
        let mut reverse = Vec::new();
        for config in &configs {
            let mut r = pgrelay_migrate::switchover::prepare_reverse(config)
                .await
                .map_err(|e| in_db(config, e.into()))?;
            if let Some(d) = &config.database {
                for t in &mut r.targets {
                    t.name = format!("{}/{d}", t.name);
                }
            }
            reverse.push(r);
        }
        if let Some(l) = &args.listen {
            reverse[0].listen = Some(
                l.parse()
                    .with_context(|| format!("--listen {l}: expected HOST:PORT"))?,
            );
        }
        let slots: Vec<&str> = reverse.iter().map(|r| r.slot.as_str()).collect();
        println!(
            "streaming back from the new primary to the old source (slot {}); stop with Ctrl-C",
            slots.join(", ")
        );
        let _ = std::io::stdout().flush();
        crate::stream::run_configs(reverse, shutdown).await?;
    }
    Ok(())
}
