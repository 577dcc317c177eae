//! The `pgrelay` command line.
//!
//! Parses arguments (clap), sets up logging on stderr, installs the
//! SIGINT/SIGTERM handler that every long-running command receives as its
//! shutdown future, and maps failures to exit codes: 0 success, 1 a
//! runtime failure, 2 bad arguments or an unreachable server (clap's own
//! usage errors exit 2 as well). Errors print as one line saying what to fix.

mod demo;
mod http;
mod interactive;
mod migrate;
mod native;
mod replica;
mod sqlconn;
mod stream;
mod tail;
mod users;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "pgrelay", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Try it: throwaway source and two targets of other majors, live workload, lag, verify.
    Demo(demo::DemoArgs),
    /// Copy, then stream changes to every target (exactly once), with lag metrics.
    Stream(stream::StreamArgs),
    /// Show the slot, and each target's applied position, lag and state.
    Status(stream::StatusArgs),
    /// Drop the slot, the publication and the targets' progress.
    Cleanup(stream::CleanupArgs),
    /// Preflight checklist for a migration or pipeline (source and targets).
    Validate(migrate::ValidateArgs),
    /// Copy schema, data (from the slot's snapshot) and indexes into the targets.
    Init(migrate::InitArgs),
    /// Compare every table of the source and the targets (row counts and checksums per key range).
    Verify(migrate::VerifyArgs),
    /// Cut over: fence writes, drain, copy sequences, verify, report the downtime.
    Switchover(migrate::SwitchoverArgs),
    /// Print the logical change stream as JSON lines.
    Tail(tail::TailArgs),
    /// Physical streaming replicas: create, status, monitor, sync mode, promote, switchover.
    Replica(replica::ReplicaArgs),
    /// Application roles on the primary: create, list, drop.
    Users(users::UsersArgs),
    /// Keep native publications and subscriptions in the configured shape.
    Native(native::NativeArgs),
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action (exit) still applies.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutdown requested");
}

/// Parses the command line; a usage error is printed as one line that
/// says what to fix (clap's multi-line report folded), exit 2.
fn parse_cli() -> Cli {
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.render().to_string();
            let message: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.is_empty())
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("pgrelay: {message} (see `pgrelay --help`)");
            std::process::exit(2);
        }
    }
}

fn main() {
    let cli = parse_cli();
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGRELAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // tail is one sequential pipeline (read, decode, print): on one thread
    // it avoids a cross-thread wakeup per message, which cost more CPU
    // than decoding it. The streamer runs a reader and a worker per
    // target, which do use several cores.
    let builder = match cli.command {
        Command::Tail(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match { builder }.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgrelay: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Tail(args) => tail::run(args, shutdown_signal()).await,
            Command::Stream(args) => stream::run(args, shutdown_signal()).await,
            Command::Demo(args) => demo::run(args, shutdown_signal()).await,
            Command::Validate(args) => migrate::validate(args).await,
            Command::Init(args) => migrate::init(args, shutdown_signal()).await,
            Command::Verify(args) => migrate::verify(args).await,
            Command::Switchover(args) => migrate::switchover(args, shutdown_signal()).await,
            Command::Status(args) => stream::status(args, shutdown_signal()).await,
            Command::Cleanup(args) => stream::cleanup(args).await,
            Command::Replica(args) => replica::run(args, shutdown_signal()).await,
            Command::Users(args) => users::run(args).await,
            Command::Native(args) => native::run(args, shutdown_signal()).await,
        }
    });
    if let Err(e) = result {
        // Preflight problems: one line each, so every fix is readable.
        if let Some(pgrelay_stream::StreamError::Preflight(problems)) = e
            .chain()
            .find_map(|c| c.downcast_ref::<pgrelay_stream::StreamError>())
        {
            eprintln!(
                "pgrelay: {} problem(s) must be fixed before streaming:",
                problems.len()
            );
            for p in problems {
                eprintln!("  - {p}");
            }
            std::process::exit(1);
        }
        let code =
            if tail::is_usage_error(&e) || stream::is_usage_error(&e) || native::is_usage_error(&e)
            {
                2
            } else {
                1
            };
        let transient = e.chain().any(|c| {
            c.downcast_ref::<pgrelay_source::SourceError>()
                .is_some_and(|s| s.is_transient())
                || c.downcast_ref::<pgrelay_stream::StreamError>()
                    .is_some_and(|s| s.is_transient())
        });
        let hint = if transient {
            " (transient: run the same command again to resume)"
        } else {
            ""
        };
        eprintln!("pgrelay: {}{hint}", one_line(&e));
        std::process::exit(code);
    }
}

/// The error and its causes on one line, without repeating a cause that
/// the outer message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}
