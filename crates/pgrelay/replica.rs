//! `pgrelay replica`: physical streaming replicas from the command line.
//!
//! Thin glue over `pgrelay-replica`: parses flags, prints progress lines
//! on stderr and results on stdout (text or `--json`), and maps states to
//! exit codes: `status` exits 1 when a configured standby is not
//! streaming. `monitor` serves `/metrics` and `/health` through
//! [`crate::http`] until SIGINT/SIGTERM. The primary URL comes from
//! `--primary` or `$PGRELAY_PRIMARY`; no password is ever printed.
//! PostgreSQL docs: "High Availability, Load Balancing, and Replication".

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pgrelay_config::ByteSize;
use pgrelay_replica::{create, promote, status, switchover, sync, tools::ToolSearch};
use pgrelay_source::Config;

/// `pgrelay replica ...`
#[derive(Debug, Args)]
pub struct ReplicaArgs {
    #[command(subcommand)]
    command: ReplicaCommand,
}

#[derive(Debug, Subcommand)]
enum ReplicaCommand {
    /// Make a new streaming standby of a primary (base backup + config).
    Create(CreateArgs),
    /// Turn synchronous replication on or off for standbys.
    SyncMode(SyncModeArgs),
    /// Standbys and slots of a primary; exit 1 if a configured standby is not streaming.
    Status(StatusArgs),
    /// Export replication lag and slot retention as Prometheus metrics.
    Monitor(MonitorArgs),
    /// Promote a standby and wait until it accepts writes.
    Promote(PromoteArgs),
    /// Planned switchover: the standby becomes primary, the primary its standby.
    Switchover(SwitchoverArgs),
    /// Turn a former primary into a standby of the new one (pg_rewind when diverged).
    Rejoin(RejoinArgs),
}

#[derive(Debug, Args)]
struct RejoinArgs {
    /// The current primary (superuser).
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// The former primary's local data directory (a running server there is
    /// stopped first).
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    /// Its name as a standby (application_name).
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Physical slot on the primary (created if missing); default: the name.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Server log (default: <pgdata>/pgrelay-server.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Limit for each wait.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tools: ToolArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    pgrelay_config::duration::parse(s)
}

#[derive(Debug, Args)]
struct ToolArgs {
    /// Directory holding pg_basebackup/pg_ctl/pg_rewind of the server's major.
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// OS user the server runs as when pgrelay is root (default: the data
    /// directory's owner, else `postgres`).
    #[arg(long, value_name = "USER")]
    os_user: Option<String>,
}

impl ToolArgs {
    fn search(&self) -> ToolSearch {
        ToolSearch {
            pg_bin: self.pg_bin.clone(),
        }
    }
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// The primary (URL or key=value); its role needs REPLICATION.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Data directory of the new standby (must be absent or empty).
    #[arg(long, value_name = "DIR")]
    pgdata: PathBuf,
    /// The standby's name (its application_name on the primary); default:
    /// the slot name, else derived from the data directory's name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Physical replication slot on the primary; default: the name.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// Once it streams, add it to synchronous_standby_names.
    #[arg(long, requires = "start")]
    sync: bool,
    /// Start the standby and wait until it streams.
    #[arg(long)]
    start: bool,
    /// The standby's port.
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// The standby's Unix socket directory (default: the primary's setting).
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// Server log of the started standby (default: <pgdata>/pgrelay-server.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Limit for starting and for reaching `streaming`.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tools: ToolArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("mode").required(true).args(["on", "off"])))]
struct SyncModeArgs {
    /// The primary (superuser, for ALTER SYSTEM).
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Make the named standbys synchronous.
    #[arg(long, requires = "standby")]
    on: bool,
    /// Stop waiting for the named standbys (all when none is named).
    #[arg(long)]
    off: bool,
    /// A standby name (application_name); repeatable.
    #[arg(long, value_name = "NAME")]
    standby: Vec<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// The primary.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Print again every --interval until interrupted.
    #[arg(long)]
    watch: bool,
    /// Interval for --watch.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    interval: Duration,
    /// A standby that must be streaming (repeatable); synchronous standbys
    /// are always expected.
    #[arg(long, value_name = "NAME")]
    expect: Vec<String>,
    /// Warn when an inactive slot retains more WAL than this.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    slot_warn_bytes: ByteSize,
}

#[derive(Debug, Args)]
struct MonitorArgs {
    /// The primary.
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Address for /metrics and /health, e.g. 127.0.0.1:9188.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    /// How often to sample the primary.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    interval: Duration,
    /// A standby that must be streaming for /health to be 200 (repeatable).
    #[arg(long, value_name = "NAME")]
    expect: Vec<String>,
    /// Warn when an inactive slot retains more WAL than this.
    #[arg(long, value_name = "SIZE", default_value = "1GiB")]
    slot_warn_bytes: ByteSize,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).multiple(true).args(["standby", "pgdata"])))]
struct PromoteArgs {
    /// The standby's URL (pg_promote(); superuser or EXECUTE on pg_promote).
    #[arg(long, value_name = "URL")]
    standby: Option<String>,
    /// The standby's local data directory (pg_ctl promote as its owner).
    #[arg(long, value_name = "DIR")]
    pgdata: Option<PathBuf>,
    /// Limit for promotion and the first write.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
    #[command(flatten)]
    tools: ToolArgs,
}

#[derive(Debug, Args)]
struct SwitchoverArgs {
    /// The current primary (superuser).
    #[arg(long, env = "PGRELAY_PRIMARY", value_name = "URL")]
    primary: String,
    /// Its local data directory.
    #[arg(long, value_name = "DIR")]
    primary_pgdata: PathBuf,
    /// The standby to promote (superuser; the old primary will replicate
    /// from it with this role and TLS settings).
    #[arg(long, value_name = "URL")]
    standby: String,
    /// Its local data directory.
    #[arg(long, value_name = "DIR")]
    standby_pgdata: PathBuf,
    /// The standby's application_name (default: read from the standby).
    #[arg(long, value_name = "NAME")]
    standby_name: Option<String>,
    /// Name (application_name and slot) the old primary gets as the new
    /// primary's standby.
    #[arg(long, value_name = "NAME")]
    new_standby_name: String,
    /// Log file of the old primary once restarted as a standby (default:
    /// <primary-pgdata>/pgrelay-server.log).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Limit for each wait.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tools: ToolArgs,
}

fn config(url: &str, what: &str) -> anyhow::Result<Config> {
    Config::parse(url).with_context(|| format!("bad {what} connection string"))
}

fn progress(line: &str) {
    eprintln!("pgrelay: {line}");
}

/// A library error for `main`: a connection failure stays the
/// `SourceError` it is (so the transient hint applies), other transient
/// failures say that running again can help.
pub fn lift(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<pgrelay_replica::ReplicaError>() {
        Ok(pgrelay_replica::ReplicaError::Connect(s)) => s.into(),
        Ok(r) if r.is_transient() => {
            anyhow::Error::from(r).context("transient failure, running the command again can help")
        }
        Ok(r) => r.into(),
        Err(other) => other,
    }
}

/// Runs `pgrelay replica ...`.
pub async fn run(
    args: ReplicaArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    run_inner(args, shutdown).await.map_err(lift)
}

async fn run_inner(
    args: ReplicaArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match args.command {
        ReplicaCommand::Create(a) => run_create(a).await,
        ReplicaCommand::SyncMode(a) => {
            let cfg = config(&a.primary, "--primary")?;
            let client = pgrelay_source::connect_sql(&cfg).await?;
            let change = if a.on {
                sync::SyncChange::On(a.standby)
            } else {
                sync::SyncChange::Off(a.standby)
            };
            let (old, new) = sync::set_sync_mode(&client, &change).await?;
            println!("synchronous_standby_names: '{old}' -> '{new}'");
            Ok(())
        }
        ReplicaCommand::Status(a) => run_status(a, shutdown).await,
        ReplicaCommand::Monitor(a) => run_monitor(a, shutdown).await,
        ReplicaCommand::Promote(a) => {
            let target = match (&a.pgdata, &a.standby) {
                (Some(dir), url) => promote::PromoteTarget::DataDir {
                    pgdata: dir.clone(),
                    tools: a.tools.search(),
                    os_user: a.tools.os_user.clone(),
                    url: url.as_deref().map(|u| config(u, "--standby")).transpose()?,
                },
                (None, Some(url)) => promote::PromoteTarget::Url(config(url, "--standby")?),
                (None, None) => bail!("give --standby URL or --pgdata DIR"),
            };
            let took = promote::promote(&target, a.timeout).await?;
            println!(
                "promoted; the server accepts writes ({} ms)",
                took.as_millis()
            );
            Ok(())
        }
        ReplicaCommand::Rejoin(a) => {
            let opts = switchover::RejoinOptions {
                primary: config(&a.primary, "--primary")?,
                pgdata: a.pgdata,
                slot: a
                    .slot
                    .unwrap_or_else(|| pgrelay_replica::quote::slot_name_from(&a.name)),
                name: a.name,
                tools: a.tools.search(),
                os_user: a.tools.os_user.clone(),
                timeout: a.timeout,
                log_file: a.log_file,
            };
            let report = switchover::rejoin(&opts, &mut |l: &str| progress(l)).await?;
            println!(
                "{} streams from the primary; pg_rewind {} (last checkpoint {}, fork {})",
                opts.name,
                if report.rewound { "ran" } else { "not needed" },
                report.last_checkpoint,
                report.fork_lsn.as_deref().unwrap_or("-")
            );
            Ok(())
        }
        ReplicaCommand::Switchover(a) => {
            let opts = switchover::SwitchoverOptions {
                primary: config(&a.primary, "--primary")?,
                primary_pgdata: a.primary_pgdata,
                standby: config(&a.standby, "--standby")?,
                standby_pgdata: a.standby_pgdata,
                standby_name: a.standby_name,
                old_primary_name: a.new_standby_name,
                tools: a.tools.search(),
                os_user: a.tools.os_user.clone(),
                timeout: a.timeout,
                log_file: a.log_file,
            };
            let report = switchover::switchover(&opts, &mut |l: &str| progress(l)).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "switchover done: {} is the primary, {} streams from it; final LSN of the old \
                     primary {}; pg_rewind {}; synchronous_standby_names = '{}'",
                    report.new_primary,
                    report.new_standby,
                    report.final_lsn,
                    if report.rewound { "ran" } else { "not needed" },
                    report.synchronous_standby_names
                );
                println!("write downtime: {} ms", report.write_downtime_ms);
                for n in &report.notes {
                    println!("note: {n}");
                }
            }
            Ok(())
        }
    }
}

async fn run_create(a: CreateArgs) -> anyhow::Result<()> {
    let primary = config(&a.primary, "--primary")?;
    let name = a
        .name
        .clone()
        .or_else(|| a.slot.clone())
        .unwrap_or_else(|| {
            let base = a
                .pgdata
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            pgrelay_replica::quote::slot_name_from(&base)
        });
    let slot = a
        .slot
        .clone()
        .unwrap_or_else(|| pgrelay_replica::quote::slot_name_from(&name));
    let opts = create::CreateOptions {
        primary,
        pgdata: a.pgdata,
        name,
        slot,
        sync: a.sync,
        start: a.start,
        port: a.port,
        socket_dir: a.socket_dir,
        log_file: a.log_file,
        tools: a.tools.search(),
        os_user: a.tools.os_user,
        wait_timeout: a.timeout,
    };
    let created = create::create_standby(&opts, &mut |l: &str| progress(l)).await?;
    println!(
        "standby {} (PostgreSQL {}) in {}: slot {}, {}{}",
        created.name,
        created.major,
        created.pgdata.display(),
        created.slot,
        if created.started {
            "streaming"
        } else {
            "not started (start it with pg_ctl as its owner)"
        },
        created
            .synchronous_standby_names
            .map(|s| format!(", synchronous_standby_names = '{s}'"))
            .unwrap_or_default()
    );
    Ok(())
}

async fn run_status(
    a: StatusArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = config(&a.primary, "--primary")?;
    let client = pgrelay_source::connect_sql(&cfg).await?;
    tokio::pin!(shutdown);
    loop {
        let st = status::replication_status(&client, &a.expect, a.slot_warn_bytes.0).await?;
        if a.json {
            println!("{}", serde_json::to_string(&st)?);
        } else {
            print!("{}", status::render_text(&st));
        }
        if !a.watch {
            if st.healthy {
                return Ok(());
            }
            bail!(
                "configured standby not streaming: {}",
                st.missing.join(", ")
            );
        }
        if !a.json {
            println!();
        }
        tokio::select! {
            _ = &mut shutdown => {
                return if st.healthy { Ok(()) } else {
                    Err(anyhow::anyhow!("configured standby not streaming: {}", st.missing.join(", ")))
                };
            }
            _ = tokio::time::sleep(a.interval) => {}
        }
    }
}

async fn run_monitor(
    a: MonitorArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let cfg = config(&a.primary, "--primary")?;
    crate::http::prometheus();
    let latest: Arc<Mutex<(bool, serde_json::Value)>> = Arc::new(Mutex::new((
        false,
        serde_json::json!({"status": "starting", "primary": cfg.redacted()}),
    )));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let health = {
        let latest = latest.clone();
        move || latest.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    let mut http_stop = stop_rx.clone();
    let (addr, serve) = crate::http::bind(a.listen, Arc::new(health), async move {
        let _ = http_stop.wait_for(|s| *s).await;
    })
    .await?;
    eprintln!("pgrelay: replica monitor on http://{addr}/metrics and /health");
    let server = tokio::spawn(serve);
    tokio::pin!(shutdown);
    let mut client = None;
    loop {
        let sample = async {
            if client.is_none() {
                client = Some(pgrelay_source::connect_sql(&cfg).await?);
            }
            let c = client.as_ref().expect("connected above");
            anyhow::Ok(status::replication_status(c, &a.expect, a.slot_warn_bytes.0).await?)
        }
        .await;
        let doc = match sample {
            Ok(st) => {
                status::record_metrics(&st);
                let mut doc = serde_json::to_value(&st)?;
                doc["primary"] = serde_json::Value::String(cfg.redacted());
                (st.healthy, doc)
            }
            Err(e) => {
                client = None;
                tracing::warn!(error = %e, "cannot sample the primary");
                (
                    false,
                    serde_json::json!({"primary": cfg.redacted(), "error": e.to_string()}),
                )
            }
        };
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = doc;
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(a.interval) => {}
        }
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    Ok(())
}
