//! End-to-end drain benchmark: `pgrelay tail > /dev/null` against
//! `pg_recvlogical -f /dev/null` on the same slot contents, over TCP and
//! over the Unix socket, side by side in one run.
//!
//! One PostgreSQL 16 server (pg_recvlogical comes with the installed 16
//! client tools) gets one slot per (client, transport, round) before a
//! backlog of `PGRELAY_BENCH_ROWS` row changes (default 1,000,000: 1,000
//! transactions of 1,000 100-byte-row inserts) is written, so every run
//! drains exactly the same WAL. Rounds alternate the two clients to spread
//! the machine's noise; the report gives each run and the medians, and the
//! ratio pgrelay / pg_recvlogical in rows per second (goal: ≥ 0.9).
//!
//! Run: `cargo bench --bench tail_vs_recvlogical` (PGRELAY_BENCH_ROUNDS,
//! default 3).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgrelay_testkit::bench::{env_num, median};
use pgrelay_testkit::{Cluster, PgInstall};

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing
    // we need. Only run when asked to benchmark.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("tail_vs_recvlogical: run with `cargo bench --bench tail_vs_recvlogical`");
        return;
    }
    let rows = env_num("PGRELAY_BENCH_ROWS", 1_000_000);
    let rounds = env_num("PGRELAY_BENCH_ROUNDS", 3) as usize;
    let per_txn = 1_000u64.min(rows);
    let txns = rows / per_txn;
    let major = 16;
    let recvlogical = PgInstall::require(major).tool("pg_recvlogical");
    assert!(
        recvlogical.is_file(),
        "pg_recvlogical for PostgreSQL {major} is not installed; run scripts/install-postgres.sh"
    );
    let pg = Cluster::builder(major)
        .setting("max_replication_slots", "40")
        .setting("max_wal_size", "'4GB'")
        .start();
    pg.execute_blocking(
        "postgres",
        "CREATE TABLE bench (id bigint PRIMARY KEY, payload text);
         CREATE PUBLICATION bench_pub FOR TABLE bench;",
    );
    let transports = ["tcp", "unix"];
    let clients = ["pgrelay", "pg_recvlogical"];
    let slot = |client: &str, transport: &str, round: usize| {
        format!("bench_{}_{transport}_{round}", client.replace('_', ""))
    };
    for round in 0..rounds {
        for t in transports {
            for c in clients {
                pg.execute_blocking(
                    "postgres",
                    &format!(
                        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput')",
                        slot(c, t, round)
                    ),
                );
            }
        }
    }
    eprintln!("writing {rows} row changes in {txns} transactions ...");
    for t in 0..txns {
        pg.execute_blocking(
            "postgres",
            &format!(
                "INSERT INTO bench SELECT g, repeat('x', 90) FROM generate_series({}, {}) g",
                t * per_txn + 1,
                (t + 1) * per_txn
            ),
        );
    }
    let end = pg
        .scalar_blocking("postgres", "SELECT pg_current_wal_lsn()")
        .expect("current LSN");
    pg.execute_blocking("postgres", "CHECKPOINT");

    let socket_dir = pg.socket_dir().display().to_string();
    let host = |transport: &str| {
        if transport == "tcp" {
            "127.0.0.1".to_string()
        } else {
            socket_dir.clone()
        }
    };
    let mut results: Vec<(String, String, Duration)> = Vec::new();
    for round in 0..rounds {
        for t in transports {
            // Alternate which client goes first each round.
            let order: Vec<&str> = if round % 2 == 0 {
                clients.to_vec()
            } else {
                clients.iter().rev().copied().collect()
            };
            for c in order {
                let s = slot(c, t, round);
                let mut cmd = if c == "pgrelay" {
                    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgrelay"));
                    cmd.args([
                        "tail",
                        "--source",
                        &format!(
                            "host={} port={} user=postgres dbname=postgres",
                            host(t),
                            pg.port()
                        ),
                        "--publication",
                        "bench_pub",
                        "--slot",
                        &s,
                        "--until",
                        &end,
                    ]);
                    cmd
                } else {
                    let mut cmd = Command::new(&recvlogical);
                    cmd.args([
                        "-h",
                        &host(t),
                        "-p",
                        &pg.port().to_string(),
                        "-U",
                        "postgres",
                    ])
                    .args(["-d", "postgres", "-S", &s, "--start", "-f", "/dev/null"])
                    .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"])
                    .args(["--endpos", &end, "--no-loop"]);
                    cmd
                };
                let started = Instant::now();
                let status = cmd
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .status()
                    .expect("run the client");
                let took = started.elapsed();
                assert!(status.success(), "{c} over {t} failed: {status}");
                eprintln!(
                    "round {round} {t:4} {c:15} {:7.2} s  {:9.0} rows/s",
                    took.as_secs_f64(),
                    rows as f64 / took.as_secs_f64()
                );
                results.push((c.to_string(), t.to_string(), took));
            }
        }
    }
    println!("\n{rows} row changes, {rounds} rounds, PostgreSQL {major}; medians:");
    for t in transports {
        let med = |c: &str| {
            median(
                results
                    .iter()
                    .filter(|(rc, rt, _)| rc == c && rt == t)
                    .map(|(_, _, d)| *d)
                    .collect(),
            )
        };
        let (ours, theirs) = (med("pgrelay"), med("pg_recvlogical"));
        println!(
            "{t:4}  pgrelay tail {:7.2} s ({:9.0} rows/s)  pg_recvlogical {:7.2} s ({:9.0} rows/s)  ratio {:.2}",
            ours.as_secs_f64(),
            rows as f64 / ours.as_secs_f64(),
            theirs.as_secs_f64(),
            rows as f64 / theirs.as_secs_f64(),
            theirs.as_secs_f64() / ours.as_secs_f64()
        );
    }
}
