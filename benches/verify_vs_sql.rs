//! `verify_tables` against the plain-SQL baseline it must not be slower
//! than: `SELECT count(*), sum(hashtext(t::text)) FROM t` for every table on
//! the source, then the same on the target.
//!
//! A PostgreSQL 15 source gets `pgbench -i -s $PGRELAY_BENCH_SCALE`
//! (default 100, about 1.5 GB); a PostgreSQL 17 target gets the same tables
//! (`pgbench -i -I dt`), loaded by COPY from the source, then the primary
//! keys and VACUUM ANALYZE. Each round times the baseline and
//! `verify_tables` (`PGRELAY_BENCH_PARALLEL` connections per side, default
//! 2; default range size), alternating which goes first to spread cache and
//! noise effects; the report gives every run, the medians and the ratio
//! verify / SQL (goal: ≤ 1.0).
//!
//! Run: `cargo bench --bench verify_vs_sql` (PGRELAY_BENCH_ROUNDS, default 3).

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use pgrelay_testkit::bench::{env_num, median};
use pgrelay_testkit::{client_tool, Cluster, SUPERUSER};
use pgrelay_verify::{verify_tables, VerifyOptions};

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn pgbench(c: &Cluster, args: &[&str]) {
    let bin = client_tool("pgbench").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(bin)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &c.port().to_string(),
            "-U",
            SUPERUSER,
        ])
        .args(args)
        .arg("postgres")
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn copy_table(source: &Cluster, target: &Cluster, table: &str) {
    let (s, t) = (
        source.connect("postgres").await,
        target.connect("postgres").await,
    );
    let out = s
        .copy_out(&format!("COPY {table} TO STDOUT"))
        .await
        .expect("COPY TO");
    let sink = t
        .copy_in(&format!("COPY {table} FROM STDIN"))
        .await
        .expect("COPY FROM");
    futures_util::pin_mut!(out, sink);
    while let Some(chunk) = out.next().await {
        sink.send(chunk.expect("COPY data"))
            .await
            .expect("COPY send");
    }
    sink.as_mut().finish().await.expect("COPY finish");
}

async fn sql_baseline(source: &Cluster, target: &Cluster) -> Duration {
    let started = Instant::now();
    for c in [source, target] {
        let client = c.connect("postgres").await;
        for t in TABLES {
            client
                .query_one(
                    &format!("SELECT count(*), sum(hashtext(t::text)) FROM {t} t"),
                    &[],
                )
                .await
                .expect("baseline query");
        }
    }
    started.elapsed()
}

async fn verify(source: &Cluster, target: &Cluster, parallel: usize) -> Duration {
    let tables: Vec<(String, String)> = TABLES
        .iter()
        .map(|t| ("public".to_string(), t.to_string()))
        .collect();
    let cfg = |c: &Cluster| pgrelay_source::Config::parse(&c.superuser_url("postgres")).unwrap();
    let options = VerifyOptions {
        parallel,
        ..VerifyOptions::default()
    };
    let started = Instant::now();
    let results = verify_tables(
        &cfg(source),
        &cfg(target),
        &tables,
        &options,
        std::future::pending(),
    )
    .await
    .expect("verify");
    let elapsed = started.elapsed();
    for r in &results {
        assert!(r.equal, "{r:#?}");
    }
    let accounts = &results[0];
    eprintln!(
        "    verify: {} accounts rows in {} ranges",
        accounts.source_rows, accounts.ranges
    );
    elapsed
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("verify_vs_sql: run with `cargo bench --bench verify_vs_sql`");
        return;
    }
    let scale = env_num("PGRELAY_BENCH_SCALE", 100);
    let rounds = env_num("PGRELAY_BENCH_ROUNDS", 3).max(1) as usize;
    let parallel = env_num("PGRELAY_BENCH_PARALLEL", 2) as usize;
    let source = Cluster::builder(15)
        .setting("max_wal_size", "'4GB'")
        .setting("shared_buffers", "'256MB'")
        .start();
    let target = Cluster::builder(17)
        .setting("max_wal_size", "'4GB'")
        .setting("shared_buffers", "'256MB'")
        .start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    eprintln!("loading pgbench scale {scale} on PostgreSQL 15 ...");
    let t = Instant::now();
    pgbench(&source, &["-i", "-q", "-s", &scale.to_string()]);
    eprintln!("  {:.1?}; copying to PostgreSQL 17 ...", t.elapsed());
    let t = Instant::now();
    pgbench(&target, &["-i", "-q", "-I", "dt", "-s", &scale.to_string()]);
    rt.block_on(async {
        futures_util::future::join_all(TABLES.iter().map(|tb| copy_table(&source, &target, tb)))
            .await
    });
    pgbench(&target, &["-i", "-q", "-I", "p", "-s", &scale.to_string()]);
    target.execute_blocking("postgres", "VACUUM ANALYZE");
    eprintln!("  {:.1?}", t.elapsed());
    let size = source
        .scalar_blocking(
            "postgres",
            "SELECT pg_size_pretty(pg_database_size(current_database()))",
        )
        .unwrap_or_default();

    let (mut sql, mut ver) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (s, v) = rt.block_on(async {
            if round % 2 == 0 {
                let s = sql_baseline(&source, &target).await;
                (s, verify(&source, &target, parallel).await)
            } else {
                let v = verify(&source, &target, parallel).await;
                (sql_baseline(&source, &target).await, v)
            }
        });
        eprintln!(
            "  round {}: SQL source+target {s:.2?}, verify {v:.2?}",
            round + 1
        );
        sql.push(s);
        ver.push(v);
    }
    let (s, v) = (median(sql), median(ver));
    println!(
        "verify_vs_sql: pgbench scale {scale} ({size}), 15 -> 17, parallel {parallel}, {rounds} rounds: \
         median SQL {s:.2?}, median verify {v:.2?}, verify/SQL = {:.2} (goal <= 1.0)",
        v.as_secs_f64() / s.as_secs_f64()
    );
}
