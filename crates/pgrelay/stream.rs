//! `pgrelay stream`, `pgrelay status` and `pgrelay cleanup`: the command
//! line around pgrelay-stream.
//!
//! Configuration comes from the YAML file (`--config`, `$PGRELAY_CONFIG`,
//! `./pgrelay.yml`, `/etc/pgrelay/pgrelay.yml`) and flags that replace or
//! extend it. `stream` serves `/metrics` and `/health` on `--listen` and
//! stops on SIGINT/SIGTERM after finishing in-flight batches. Nothing
//! printed here contains a password.
//!
//! A configuration that selects several source databases (`databases:`,
//! `--database`, `--exclude-database`) is one pipeline per database
//! (pgrelay_stream::databases): `stream` runs them concurrently in this
//! process behind one `/metrics` and `/health`, and stops them all when one
//! fails; `status` and `cleanup` go through them one after the other.

use std::future::Future;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pgrelay_stream::{config, Overrides, Pipeline, PipelineState, StreamConfig, StreamError};

use crate::http;

/// Where the pipeline is described: a file, flags, or both.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineArgs {
    /// Configuration file (default: $PGRELAY_CONFIG, ./pgrelay.yml, /etc/pgrelay/pgrelay.yml).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Source server URL (replaces source.url).
    #[arg(long, value_name = "URL")]
    source: Option<String>,
    /// A target as NAME=URL (repeatable; adds to or replaces the file's targets).
    #[arg(long = "target", value_name = "NAME=URL", value_parser = parse_target)]
    targets: Vec<(String, String)>,
    /// Replication slot; also names the pipeline on the targets (default: pgrelay).
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Publication (default: the slot name).
    #[arg(long, value_name = "NAME")]
    publication: Option<String>,
    /// Tables to replicate, as globs over schema.table or database.schema.table
    /// (repeatable; default: every user table).
    #[arg(long = "table", value_name = "PATTERN")]
    include: Vec<String>,
    /// Tables to leave out (repeatable).
    #[arg(long = "exclude", value_name = "PATTERN")]
    exclude: Vec<String>,
    /// Source databases to move, one pipeline each, as globs (repeatable;
    /// replaces databases.include; `postgres` only when named).
    #[arg(long = "database", value_name = "PATTERN")]
    databases: Vec<String>,
    /// Source databases to leave out (repeatable; adds to databases.exclude).
    #[arg(long = "exclude-database", value_name = "PATTERN")]
    exclude_databases: Vec<String>,
}

fn parse_target(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((n, u)) if !n.is_empty() && !u.is_empty() && !n.contains(' ') => {
            Ok((n.to_owned(), u.to_owned()))
        }
        _ => Err("expected NAME=URL, e.g. east=postgres://user@host/db".into()),
    }
}

impl PipelineArgs {
    /// The resolved configuration (file, then flags).
    pub fn load(&self, listen: Option<String>) -> Result<StreamConfig> {
        let file = config::locate(self.config.as_deref())?;
        let overrides = Overrides {
            source: self.source.clone(),
            targets: self.targets.clone(),
            slot: self.slot.clone(),
            publication: self.publication.clone(),
            include: self.include.clone(),
            exclude: self.exclude.clone(),
            databases: self.databases.clone(),
            exclude_databases: self.exclude_databases.clone(),
            listen,
        };
        Ok(config::load(file.as_deref(), &overrides)?)
    }

    /// One resolved configuration per selected source database (the one
    /// configuration when it selects no databases).
    pub async fn load_all(&self, listen: Option<String>) -> Result<Vec<StreamConfig>> {
        expand(&self.load(listen)?).await
    }
}

/// [`pgrelay_stream::databases::expand`], a bad selection kept a usage
/// error (exit 2).
pub async fn expand(config: &StreamConfig) -> Result<Vec<StreamConfig>> {
    match pgrelay_stream::databases::expand(config).await {
        Ok(v) => Ok(v),
        Err(StreamError::Config(c)) => Err(c.into()),
        Err(e) => Err(e.into()),
    }
}

/// `database NAME: ` for a pipeline of several, nothing otherwise.
pub fn db_prefix(config: &StreamConfig) -> String {
    config
        .database
        .as_ref()
        .map_or(String::new(), |d| format!("database {d}: "))
}

/// Puts the pipeline's database in front of an error: preflight problems
/// one by one (main prints them a line each), others as context.
pub fn in_database(config: &StreamConfig, e: StreamError) -> anyhow::Error {
    let prefix = db_prefix(config);
    match e {
        StreamError::Preflight(problems) if !prefix.is_empty() => StreamError::Preflight(
            problems
                .into_iter()
                .map(|p| format!("{prefix}{p}"))
                .collect(),
        )
        .into(),
        e if prefix.is_empty() => e.into(),
        e => anyhow::Error::from(e).context(prefix.trim_end_matches(": ").to_owned()),
    }
}

/// `pgrelay stream`.
#[derive(Debug, clap::Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Serve /metrics and /health here (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

/// `pgrelay status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Refresh every 2 seconds until interrupted.
    #[arg(long)]
    watch: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `pgrelay cleanup`.
#[derive(Debug, clap::Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pipeline: PipelineArgs,
    /// Do it without asking.
    #[arg(long)]
    yes: bool,
}

/// Runs the streamer until `shutdown`.
pub async fn run(
    args: StreamArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let configs = args.pipeline.load_all(args.listen.clone()).await?;
    run_configs(configs, shutdown).await
}

/// Runs one pipeline per configuration concurrently (the databases of a
/// multi-database configuration) behind one `/metrics` and `/health`,
/// until `shutdown`; the first pipeline to fail stops the others.
pub async fn run_configs(
    mut configs: Vec<StreamConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if configs.len() == 1 {
        let config = configs.pop().expect("one");
        return run_config(config, shutdown).await;
    }
    let listen = configs.first().and_then(|c| c.listen);
    let pipelines: Vec<(StreamConfig, Pipeline)> = configs
        .into_iter()
        .map(|c| (c.clone(), Pipeline::new(c)))
        .collect();
    let states: Vec<Arc<PipelineState>> = pipelines.iter().map(|(_, p)| p.state()).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
    }
    let (http_stop_tx, http_stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = listen {
        let mut rx = http_stop_rx.clone();
        let (local, serve) = http::bind(
            addr,
            Arc::new(move || combined_health(&states)),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        )
        .await?;
        tracing::info!(addr = %local, "serving /metrics and /health");
        tokio::spawn(serve);
    }
    let mut set = tokio::task::JoinSet::new();
    for (config, pipeline) in pipelines {
        let mut rx = stop_rx.clone();
        let state = pipeline.state();
        set.spawn(async move {
            let result = pipeline
                .run(async move {
                    let _ = rx.wait_for(|v| *v).await;
                })
                .await;
            (config, state, result)
        });
    }
    // A pipeline that fails during setup (preflight, copy) stops them all:
    // the configuration needs fixing. One that fails while streaming stops
    // alone: the other databases keep streaming, `/health` reports it
    // (503, its `error`), and pgrelay exits 1 with its error once the rest
    // stop.
    let mut first: Option<anyhow::Error> = None;
    while let Some(joined) = set.join_next().await {
        let (config, state, result) = joined.context("a pipeline task panicked")?;
        if let Err(e) = result {
            let database = config.database.clone().unwrap_or_default();
            if state.streamed() && !*stop_rx.borrow() {
                tracing::error!(%database, error = %e, "pipeline stopped; the other databases keep streaming; fix the cause and restart pgrelay (it resumes from the slot)");
                state.set_error(e.to_string());
            } else {
                tracing::error!(%database, error = %e, "pipeline stopped; stopping the other databases' pipelines");
                let _ = stop_tx.send(true);
            }
            first.get_or_insert(in_database(&config, e));
        }
    }
    let _ = http_stop_tx.send(true);
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `/health` of several pipelines: healthy when every one is; each
/// pipeline's own document (with its `database`) under `pipelines`.
fn combined_health(states: &[Arc<PipelineState>]) -> (bool, serde_json::Value) {
    let mut healthy = true;
    let docs: Vec<serde_json::Value> = states
        .iter()
        .map(|s| {
            let (ok, doc) = s.health();
            healthy &= ok;
            doc
        })
        .collect();
    (
        healthy,
        serde_json::json!({
            "status": if healthy { "ok" } else { "degraded" },
            "pipelines": docs,
        }),
    )
}

/// Runs the streamer for a resolved configuration (also `switchover
/// --reverse`) until `shutdown`, serving `/metrics` and `/health` on its
/// `listen` address.
pub async fn run_config(
    config: StreamConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let listen = config.listen;
    let pipeline = Pipeline::new(config);
    let state = pipeline.state();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    if let Some(addr) = listen {
        let health_state = state.clone();
        let mut rx = stop_rx.clone();
        let (local, serve) =
            http::bind(addr, Arc::new(move || health_state.health()), async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await?;
        tracing::info!(addr = %local, "serving /metrics and /health");
        tokio::spawn(serve);
    }
    let result = pipeline.run(shutdown).await;
    let _ = stop_tx.send(true);
    result.map_err(anyhow::Error::from)
}

/// Prints the pipeline's status once or until interrupted.
pub async fn status(args: StatusArgs, shutdown: impl Future<Output = ()>) -> Result<()> {
    let configs = args.pipeline.load_all(None).await?;
    let several = configs.len() > 1;
    tokio::pin!(shutdown);
    loop {
        let mut all = Vec::new();
        for config in &configs {
            let s = pgrelay_stream::status::status(config)
                .await
                .map_err(|e| in_database(config, e))?;
            all.push((config.database.clone(), s));
        }
        if args.json {
            if several {
                let docs: Vec<serde_json::Value> = all
                    .iter()
                    .map(|(db, s)| {
                        let mut v = serde_json::to_value(s).unwrap_or_default();
                        v["database"] = serde_json::json!(db);
                        v
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&docs)?);
            } else {
                println!("{}", serde_json::to_string_pretty(&all[0].1)?);
            }
        } else {
            if args.watch && std::io::stdout().is_terminal() {
                print!("\x1b[2J\x1b[H");
            }
            for (db, s) in &all {
                if let Some(db) = db {
                    println!("database {db}");
                }
                print_status(s);
            }
        }
        if !args.watch {
            let bad = all
                .iter()
                .any(|(_, s)| !s.slot.exists || s.targets.iter().any(|t| !t.reachable));
            if bad && !args.json {
                std::process::exit(1);
            }
            return Ok(());
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

fn print_status(s: &pgrelay_stream::status::Status) {
    let slot = &s.slot;
    if slot.exists {
        println!(
            "slot {}: {} confirmed {} retained {} wal_status {}",
            slot.name,
            if slot.active { "active" } else { "inactive" },
            slot.confirmed_flush_lsn.as_deref().unwrap_or("-"),
            slot.retained_bytes.map_or("-".into(), human_bytes),
            slot.wal_status.as_deref().unwrap_or("-"),
        );
    } else {
        println!(
            "slot {}: does not exist (run `pgrelay stream` to create it)",
            slot.name
        );
    }
    println!(
        "source WAL at {}, publication {} with {} tables",
        s.source_wal_lsn, s.publication, s.publication_tables
    );
    println!(
        "{:<16} {:<22} {:<14} {:>12} {:>10}",
        "TARGET", "STATE", "APPLIED LSN", "LAG", "LAG (s)"
    );
    for t in &s.targets {
        println!(
            "{:<16} {:<22} {:<14} {:>12} {:>10}",
            t.name,
            t.state,
            t.applied_lsn.as_deref().unwrap_or("-"),
            t.lag_bytes.map_or("-".into(), human_bytes),
            t.lag_seconds.map_or("-".into(), |v| format!("{v:.1}")),
        );
        if let Some(e) = &t.error {
            println!("    error: {e}");
        }
        if let Some(p) = &t.migration_phase {
            println!("    migration phase: {p}");
        }
    }
}

pub(crate) fn human_bytes(b: i64) -> String {
    let b = b.max(0) as f64;
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// Drops the slot, the publication and the targets' progress.
pub async fn cleanup(args: CleanupArgs) -> Result<()> {
    let configs = args.pipeline.load_all(None).await?;
    if !args.yes {
        let what = configs
            .iter()
            .map(|config| {
                format!(
                    "slot {} and publication {} on the source, and pipeline {}'s progress on {} target(s){}",
                    config.slot,
                    config.publication,
                    config.slot,
                    config.targets.len(),
                    config
                        .database
                        .as_ref()
                        .map_or(String::new(), |d| format!(" (database {d})"))
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        if !std::io::stdin().is_terminal() {
            anyhow::bail!("cleanup would drop the {what}; pass --yes to confirm");
        }
        eprint!("Drop the {what}? [y/N] ");
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("reading the answer")?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            eprintln!("nothing dropped");
            return Ok(());
        }
    }
    for config in &configs {
        cleanup_one(config).await?;
    }
    Ok(())
}

async fn cleanup_one(config: &StreamConfig) -> Result<()> {
    let done = pgrelay_stream::status::cleanup(config)
        .await
        .map_err(|e| in_database(config, e))?;
    println!(
        "{}dropped: slot {}, publication {}, progress on [{}]{}",
        db_prefix(config),
        if done.slot { "yes" } else { "(absent)" },
        if done.publication { "yes" } else { "(absent)" },
        done.targets.join(", "),
        if done.unreachable.is_empty() {
            String::new()
        } else {
            format!(
                "; unreachable, left as is: [{}]",
                done.unreachable.join(", ")
            )
        }
    );
    Ok(())
}

/// Whether `e` means bad input (exit 2) rather than a failed run.
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| c.downcast_ref::<config::ConfigError>().is_some())
}
