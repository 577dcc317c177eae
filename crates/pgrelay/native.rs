//! `pgrelay native`: PostgreSQL's own publications and subscriptions,
//! kept in the shape a YAML file describes (library: `pgrelay-native`).
//!
//! * `apply [--dry-run]`: reconcile once, print the SQL it runs (or would
//!   run), or `nothing to do`. With `disable_triggers_during_sync` it waits
//!   for the initial copy of the tables whose triggers it disabled, then
//!   re-enables them, so a finished `apply` never leaves triggers off.
//! * `run [--listen ADDR]`: reconcile, then monitor until SIGTERM/SIGINT,
//!   reconciling again on SIGHUP or when the configuration file's content
//!   changes; serves `/health` and `/metrics` (crates/pgrelay/http.rs) and
//!   re-enables triggers as tables become ready.
//! * `status [--json]`: the status document; exit 1 when unhealthy.
//! * `teardown [--yes]`: drop the subscriptions (and so their slots), left
//!   over slots and the publication.
//!
//! Invariant: output and logs show SQL with the subscription password
//! replaced by `***`. PostgreSQL docs: "Logical Replication".

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pgrelay_native::{config, NativeConfig, NativeError};

#[derive(Debug, Args)]
pub struct NativeArgs {
    /// pgrelay's YAML or a `replication:` file; default: $CONFIG_FILE,
    /// /config/replication-config.yml, ./config/replication-config.yml,
    /// ./replication-config.yml, ../replication-config.yml,
    /// $REPLICATION_CONFIG (YAML or JSON text), $PGRELAY_CONFIG,
    /// ./pgrelay.yml, /etc/pgrelay/pgrelay.yml.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: NativeCommand,
}

#[derive(Debug, Subcommand)]
enum NativeCommand {
    /// Reconcile publication and subscriptions once.
    Apply {
        /// Print the SQL that would run, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Reconcile, then monitor; reconcile again on SIGHUP or config change.
    Run {
        /// Address of /health and /metrics (default: the file's `listen`, else 127.0.0.1:3000).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// How often to refresh the status and look at the configuration file.
        #[arg(long, default_value = "5s", value_parser = pgrelay_config::duration::parse)]
        interval: Duration,
    },
    /// Show publication, subscriptions, sync states and lag.
    Status {
        /// One JSON document (the /health document).
        #[arg(long)]
        json: bool,
    },
    /// Drop the subscriptions (and their slots) and the publication.
    Teardown {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

/// Errors that mean "fix the configuration or the address" (exit 2).
pub fn is_usage_error(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<NativeError>())
        .any(|n| n.is_config() || matches!(n, NativeError::Unreachable { .. }))
}

pub async fn run(
    args: NativeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let config = config::discover(args.config.as_deref())?;
    match args.command {
        NativeCommand::Apply { dry_run } => {
            tokio::select! {
                r = apply(&config, dry_run) => r,
                _ = shutdown => Err(NativeError::Interrupted.into()),
            }
        }
        NativeCommand::Run { listen, interval } => {
            run_service(config, args.config, listen, interval, shutdown).await
        }
        NativeCommand::Status { json } => status(&config, json).await,
        NativeCommand::Teardown { yes } => teardown(&config, yes).await,
    }
}

fn print_warnings(plan: &pgrelay_native::Plan) {
    for w in &plan.warnings {
        eprintln!("pgrelay: warning: {w}");
    }
}

fn nothing_to_do(config: &NativeConfig, plan: &pgrelay_native::Plan) -> String {
    let subs: Vec<&str> = config
        .targets
        .iter()
        .map(|t| t.subscription.as_str())
        .collect();
    format!(
        "nothing to do: publication {} ({} tables) and subscription(s) {} match the configuration",
        config.publication,
        plan.tables.len(),
        subs.join(", ")
    )
}

async fn apply(config: &NativeConfig, dry_run: bool) -> anyhow::Result<()> {
    let servers = pgrelay_native::connect_all(config).await?;
    let plan = pgrelay_native::apply(config, &servers, dry_run).await?;
    print_warnings(&plan);
    let mut out = std::io::stdout().lock();
    if plan.is_empty() {
        writeln!(out, "{}", nothing_to_do(config, &plan))?;
        return Ok(());
    }
    if dry_run {
        writeln!(out, "-- dry run: nothing was changed; apply would run:")?;
    }
    write!(out, "{}", plan.display(config))?;
    out.flush()?;
    drop(out);
    if dry_run {
        return Ok(());
    }
    if !plan.triggers_disabled.is_empty() {
        let names: Vec<&str> = plan
            .triggers_disabled
            .iter()
            .map(|&i| config.targets[i].name.as_str())
            .collect();
        eprintln!(
            "pgrelay: waiting for the initial copy on {} to re-enable the triggers disabled for it",
            names.join(", ")
        );
        pgrelay_native::wait_for_sync(
            config,
            &servers,
            &plan.triggers_disabled,
            Duration::from_millis(500),
        )
        .await?;
        println!("-- initial copy done; triggers re-enabled");
    }
    println!("applied {} statement(s)", plan.actions.len());
    Ok(())
}

async fn status(config: &NativeConfig, json: bool) -> anyhow::Result<()> {
    let st = pgrelay_native::collect_status(config).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        let p = &st.publication;
        match (&st.source_error, p.exists) {
            (Some(e), _) => println!("source: {e}"),
            (None, false) => println!("publication {}: missing on the source", p.name),
            (None, true) => println!(
                "publication {}: {} table(s): {}",
                p.name,
                p.tables.len(),
                p.tables.join(", ")
            ),
        }
        for t in &st.targets {
            let lag = match (t.lag_bytes, t.lag_seconds) {
                (Some(b), Some(s)) => format!("lag {b} bytes, {s:.1} s"),
                (Some(b), None) => format!("lag {b} bytes"),
                _ => "lag unknown".into(),
            };
            println!(
                "target {}: subscription {} {}, worker {}, {lag}, received {}, applied {}{}",
                t.name,
                t.subscription,
                if !t.exists {
                    "missing"
                } else if t.enabled {
                    "enabled"
                } else {
                    "disabled"
                },
                if t.worker_running {
                    "running"
                } else {
                    "not running"
                },
                t.received_lsn.as_deref().unwrap_or("-"),
                t.latest_end_lsn.as_deref().unwrap_or("-"),
                if t.healthy { "" } else { " [UNHEALTHY]" }
            );
            if let Some(e) = &t.error {
                println!("  {e}");
            }
            for tb in &t.tables {
                println!("  {} {}", tb.table, tb.state_name);
            }
        }
        println!("{}", if st.healthy { "healthy" } else { "unhealthy" });
    }
    if !st.healthy {
        std::process::exit(1);
    }
    Ok(())
}

async fn teardown(config: &NativeConfig, yes: bool) -> anyhow::Result<()> {
    let servers = pgrelay_native::connect_all(config).await?;
    let plan = pgrelay_native::teardown_plan(config, &servers).await?;
    if plan.is_empty() {
        println!(
            "nothing to tear down: no subscription, slot or publication {} left",
            config.publication
        );
        return Ok(());
    }
    if !yes {
        print!("-- teardown would run:\n{}", plan.display(config));
        if !std::io::stdin().is_terminal() {
            bail!("refusing to drop without --yes when stdin is not a terminal; check the statements above and run again with --yes");
        }
        print!("drop these? [y/N] ");
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("nothing dropped");
            return Ok(());
        }
    } else {
        print!("{}", plan.display(config));
    }
    pgrelay_native::execute(&plan, &servers).await?;
    println!("dropped: {} statement(s) run", plan.actions.len());
    Ok(())
}

/// What `/health` serves: the last status and the last reconcile outcome.
#[derive(Default)]
struct Shared {
    status: Option<pgrelay_native::Status>,
    reconcile_ok: bool,
    reconcile_message: String,
    reconcile_at: u64,
    reconciles: u64,
}

fn health_doc(shared: &Shared) -> (bool, serde_json::Value) {
    let mut doc = match &shared.status {
        Some(s) => serde_json::to_value(s).unwrap_or_default(),
        None => serde_json::json!({"healthy": false, "note": "first status pending"}),
    };
    let healthy = shared.reconcile_ok && shared.status.as_ref().is_some_and(|s| s.healthy);
    doc["healthy"] = serde_json::Value::Bool(healthy);
    doc["last_reconcile"] = serde_json::json!({
        "ok": shared.reconcile_ok,
        "message": shared.reconcile_message,
        "at_unix": shared.reconcile_at,
        "count": shared.reconciles,
    });
    (healthy, doc)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// One reconcile for `run`: plan and execute; triggers are re-enabled by
/// the monitor ticks, not waited for here.
async fn reconcile(config: &NativeConfig) -> Result<String, NativeError> {
    let servers = pgrelay_native::connect_all(config).await?;
    let plan = pgrelay_native::apply(config, &servers, false).await?;
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    if plan.is_empty() {
        Ok(nothing_to_do(config, &plan))
    } else {
        for a in &plan.actions {
            tracing::info!(sql = %a.shown, "applied");
        }
        Ok(format!("applied {} statement(s)", plan.actions.len()))
    }
}

async fn run_service(
    mut config: NativeConfig,
    explicit: Option<PathBuf>,
    listen: Option<SocketAddr>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = match (listen, &config.listen) {
        (Some(a), _) => a,
        (None, Some(s)) => s.parse().with_context(|| {
            format!(
                "{}: listen: `{s}` is not an address like 127.0.0.1:3000",
                config.origin
            )
        })?,
        (None, None) => SocketAddr::from(([127, 0, 0, 1], 3000)),
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let for_health = shared.clone();
    let health = move || health_doc(&for_health.lock().unwrap_or_else(|e| e.into_inner()));
    let (stop_http_tx, stop_http_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, serve) = crate::http::bind(listen, Arc::new(health), async move {
        let _ = stop_http_rx.await;
    })
    .await?;
    let server = tokio::spawn(serve);
    eprintln!("pgrelay: serving /health and /metrics on http://{addr}");
    let mut hup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    tokio::pin!(shutdown);
    let read_file = |c: &NativeConfig| c.path.as_ref().and_then(|p| std::fs::read(p).ok());
    let mut file_content = read_file(&config);
    let mut want_reconcile = true;
    let mut last_failed_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A failed reconcile (server down, table missing) is retried
        // every 30 s without anyone sending SIGHUP.
        if last_failed_at.is_some_and(|t| t.elapsed() >= Duration::from_secs(30)) {
            want_reconcile = true;
        }
        if want_reconcile {
            want_reconcile = false;
            let result = tokio::select! {
                r = reconcile(&config) => Some(r),
                _ = &mut shutdown => None,
            };
            let Some(result) = result else { break };
            let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
            s.reconciles += 1;
            s.reconcile_at = now_unix();
            match result {
                Ok(msg) => {
                    tracing::info!("{msg}");
                    metrics::counter!("pgrelay_native_reconciles_total", "result" => "ok")
                        .increment(1);
                    s.reconcile_ok = true;
                    s.reconcile_message = msg;
                    last_failed_at = None;
                }
                Err(e) => {
                    tracing::error!(error = %e, "reconcile failed; retrying in 30 s, on SIGHUP or on a configuration change");
                    metrics::counter!("pgrelay_native_reconciles_total", "result" => "error")
                        .increment(1);
                    s.reconcile_ok = false;
                    s.reconcile_message = e.to_string();
                    last_failed_at = Some(tokio::time::Instant::now());
                }
            }
        }
        // Monitor: status, metrics, triggers of tables that became ready.
        let st = pgrelay_native::collect_status(&config).await;
        pgrelay_native::record_metrics(&st);
        shared.lock().unwrap_or_else(|e| e.into_inner()).status = Some(st);
        if let Ok(servers) = pgrelay_native::connect_all(&single_attempt(&config)).await {
            if let Err(e) = pgrelay_native::reenable_ready(&config, &servers).await {
                tracing::warn!(error = %e, "could not re-enable triggers of ready tables");
            }
        }
        let reload = tokio::select! {
            _ = &mut shutdown => break,
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration and reconciling");
                true
            }
            _ = tick.tick() => {
                let now = read_file(&config);
                if now.is_some() && now != file_content {
                    tracing::info!("configuration file changed; reconciling");
                    true
                } else {
                    false
                }
            }
        };
        if reload {
            let fresh = match (&explicit, &config.path) {
                (Some(p), _) => config::load_path(p),
                (None, Some(p)) => config::load_path(p),
                (None, None) => config::discover(None),
            };
            match fresh {
                Ok(c) => {
                    file_content = read_file(&c);
                    config = c;
                    want_reconcile = true;
                }
                Err(e) => {
                    file_content = read_file(&config);
                    tracing::error!(error = %e, "configuration not reloaded; keeping the previous one");
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    s.reconcile_ok = false;
                    s.reconcile_message = format!("configuration not reloaded: {e}");
                }
            }
        }
    }
    let _ = stop_http_tx.send(());
    let _ = server.await;
    Ok(())
}

fn single_attempt(config: &NativeConfig) -> NativeConfig {
    let mut c = config.clone();
    c.settings.max_wait_attempts = 1;
    for t in &mut c.targets {
        t.settings.max_wait_attempts = 1;
    }
    c
}
