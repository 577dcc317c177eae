//! `pgrelay demo`: the streamer on throwaway servers, in one command.
//!
//! Starts a source and two targets of different majors from the installed
//! PostgreSQL binaries (temp dirs, free 127.0.0.1 ports, run as the
//! unprivileged `postgres` user when invoked as root — pgrelay-testkit's
//! clusters, which is exactly what a demo is), creates a small schema,
//! writes a live workload, streams it with `pgrelay stream`'s pipeline and
//! shows each target's lag until Ctrl-C (or `--duration`). Then it stops
//! the workload, waits for the targets to catch up, stops the pipeline,
//! compares every table of the source and the targets, and removes the
//! servers. Exit 1 if they differ.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pgrelay_stream::{config, Overrides, Pipeline};
use pgrelay_testkit::{compare_databases, Cluster, PgInstall, SUPPORTED_MAJORS};

/// `pgrelay demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Major version of the source (default: the newest installed that
    /// leaves two other majors for the targets).
    #[arg(long, value_name = "MAJOR")]
    source_major: Option<u32>,
    /// Majors of the two targets, comma-separated (default: two other installed majors).
    #[arg(long, value_name = "A,B", value_delimiter = ',')]
    target_majors: Vec<u32>,
    /// Stop by itself after this long (e.g. 30s) instead of waiting for Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = pgrelay_config::duration::parse)]
    duration: Option<Duration>,
    /// Workload transactions per second.
    #[arg(long, value_name = "N", default_value_t = 200)]
    rate: u32,
}

const SCHEMA: &str = "
CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL DEFAULT 0, updated timestamptz);
CREATE TABLE transfers (id bigserial PRIMARY KEY, src bigint, dst bigint, amount numeric(12,2), at timestamptz DEFAULT now());
CREATE TABLE audit (at timestamptz DEFAULT now(), note text);
ALTER TABLE audit REPLICA IDENTITY FULL;
";

fn installed() -> Vec<u32> {
    SUPPORTED_MAJORS
        .iter()
        .copied()
        .filter(|m| {
            if PgInstall::find(*m).is_ok() {
                return true;
            }
            // Debian/Ubuntu packages.
            let deb = format!("/usr/lib/postgresql/{m}/bin");
            if std::path::Path::new(&deb).join("postgres").is_file() {
                std::env::set_var(format!("PGRELAY_PG_BIN_{m}"), &deb);
                return PgInstall::find(*m).is_ok();
            }
            false
        })
        .collect()
}

/// Runs the demo until `shutdown` (Ctrl-C) or `--duration`.
pub async fn run(
    args: DemoArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let have = installed();
    let (source_major, target_majors) = pick(&have, &args)?;
    println!(
        "pgrelay demo: source PostgreSQL {source_major} → targets PostgreSQL {} and {}",
        target_majors[0], target_majors[1]
    );
    let majors = [source_major, target_majors[0], target_majors[1]];
    // Cluster::start blocks (initdb, pg_ctl): keep it off the runtime's
    // worker threads.
    let clusters = tokio::task::spawn_blocking(move || {
        majors
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let b = Cluster::builder(*m);
                if i == 0 {
                    b.setting("wal_level", "logical").start()
                } else {
                    b.start()
                }
            })
            .collect::<Vec<_>>()
    })
    .await
    .context("starting the demo servers")?;
    let db = "pgrelay_demo";
    for c in &clusters {
        c.create_database(db);
        let client = c.connect(db).await;
        client.batch_execute(SCHEMA).await?;
    }
    let source = clusters[0].connect(db).await;
    source
        .batch_execute(
            "INSERT INTO accounts SELECT g, 'owner ' || g, 1000 FROM generate_series(1, 10000) g",
        )
        .await?;
    let names = [
        format!("pg{}", target_majors[0]),
        format!("pg{}", target_majors[1]),
    ];
    let mut yaml = format!(
        "source: {{ url: \"{}\", slot: pgrelay_demo }}\ntargets:\n",
        clusters[0].superuser_url(db)
    );
    for (n, c) in names.iter().zip(&clusters[1..]) {
        yaml.push_str(&format!(
            "  - {{ name: {n}, url: \"{}\" }}\n",
            c.superuser_url(db)
        ));
    }
    yaml.push_str("apply: { max_batch_delay: 50ms }\n");
    let config = config::from_yaml(&yaml, "demo", &Overrides::default())?;
    let pipeline = Pipeline::new(config);
    let state = pipeline.state();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let runner = tokio::spawn(pipeline.run(async move {
        let _ = stop_rx.await;
    }));

    // The workload: transfers between random accounts, audit notes.
    let (wl_stop_tx, mut wl_stop) = tokio::sync::watch::channel(false);
    let workload = {
        let client = clusters[0].connect(db).await;
        let rate = args.rate.max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut n: u64 = 0;
            let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = wl_stop.changed() => break,
                }
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let (a, b) = (seed % 10_000 + 1, (seed >> 20) % 10_000 + 1);
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - 1, updated = now() WHERE id = {a};
                     UPDATE accounts SET balance = balance + 1, updated = now() WHERE id = {b};
                     INSERT INTO transfers (src, dst, amount) VALUES ({a}, {b}, 1);{}
                     COMMIT;",
                    if n % 50 == 0 { " INSERT INTO audit (note) VALUES ('checkpoint');" } else { "" }
                );
                if client.batch_execute(&sql).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
    };

    // Show lag until Ctrl-C or --duration.
    let started = Instant::now();
    let tty = std::io::stdout().is_terminal();
    tokio::pin!(shutdown);
    println!("streaming; press Ctrl-C to stop, verify and clean up");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if runner.is_finished() {
            break;
        }
        let (_, health) = state.health();
        let mut line = format!("[{:>5.1}s]", started.elapsed().as_secs_f64());
        for t in health["targets"].as_array().into_iter().flatten() {
            line.push_str(&format!(
                "  {}: {} lag {} B / {:.2} s",
                t["name"].as_str().unwrap_or("?"),
                t["state"].as_str().unwrap_or("?"),
                t["lag_bytes"],
                t["lag_seconds"].as_f64().unwrap_or(0.0),
            ));
        }
        if tty {
            print!("\r\x1b[2K{line}");
            let _ = std::io::stdout().flush();
        } else {
            println!("{line}");
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    if tty {
        println!();
    }
    let _ = wl_stop_tx.send(true);
    let transactions = workload.await.unwrap_or(0);
    println!("stopped the workload after {transactions} transactions; waiting for the targets to catch up");
    let deadline = Instant::now() + Duration::from_secs(60);
    let source_lsn: String = source
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    loop {
        let (_, h) = state.health();
        let done = h["targets"].as_array().is_some_and(|ts| {
            ts.iter().all(|t| {
                t["applied_lsn"]
                    .as_str()
                    .and_then(|l| l.parse::<pgrelay_types::Lsn>().ok())
                    .zip(source_lsn.parse::<pgrelay_types::Lsn>().ok())
                    .is_some_and(|(a, s)| a >= s)
                    || t["lag_bytes"] == 0
            })
        });
        if done || Instant::now() > deadline || runner.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(());
    match runner.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => bail!("the pipeline failed: {e}"),
        Err(e) => bail!("the pipeline panicked: {e}"),
    }
    let mut equal = true;
    for (n, c) in names.iter().zip(&clusters[1..]) {
        let target = c.connect(db).await;
        let cmp = compare_databases(&source, &target).await?;
        if cmp.is_equal() {
            println!("✓ {n}: {} tables equal to the source", cmp.tables_compared);
        } else {
            println!("✗ {n}: {cmp}");
            equal = false;
        }
    }
    drop(clusters);
    println!("demo servers removed");
    if !equal {
        bail!("a target differs from the source (see above)");
    }
    Ok(())
}

fn pick(have: &[u32], args: &DemoArgs) -> Result<(u32, [u32; 2])> {
    let hint = "install PostgreSQL first: run scripts/install-postgres.sh from the pgrelay \
                repository (it fetches majors 14-18 into .pg/), or apt install postgresql-15 \
                postgresql-16, or set PGRELAY_PG_BIN_<major> to a PostgreSQL bin directory";
    if have.is_empty() {
        bail!("no PostgreSQL server binaries found; {hint}");
    }
    let check = |m: u32| -> Result<u32> {
        if have.contains(&m) {
            Ok(m)
        } else {
            bail!("PostgreSQL {m} is not installed (found: {have:?}); {hint}")
        }
    };
    let source = match args.source_major {
        Some(m) => check(m)?,
        None => *have
            .iter()
            .rev()
            .nth(if have.len() >= 3 { 1 } else { 0 })
            .unwrap_or(&have[0]),
    };
    let targets: Vec<u32> = if args.target_majors.is_empty() {
        let mut others: Vec<u32> = have.iter().copied().filter(|m| *m != source).collect();
        others.sort_unstable_by(|a, b| b.cmp(a));
        match others.len() {
            0 => vec![source, source],
            1 => vec![others[0], source],
            _ => vec![others[others.len() - 1], others[0]],
        }
    } else {
        args.target_majors
            .iter()
            .map(|m| check(*m))
            .collect::<Result<_>>()?
    };
    if targets.len() != 2 {
        bail!("--target-majors takes exactly two majors, e.g. 14,17");
    }
    Ok((source, [targets[0], targets[1]]))
}
