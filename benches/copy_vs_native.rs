//! Initial-copy benchmark: pgrelay-copy against PostgreSQL's own ways of
//! moving a database's rows, side by side on the same data.
//!
//! A PostgreSQL 15 source gets a pgbench database of scale
//! `PGRELAY_BENCH_SCALE` (default 100, about 1.5 GB; 100,000 rows of
//! `pgbench_accounts` per scale unit). Each round creates, in one
//! PostgreSQL 17 target, a fresh database per method with the schema
//! pre-created (`pg_dump --schema-only`, so primary keys exist during the
//! load for every method alike), then times:
//!
//! * `pgrelay-copy`: `copy_tables` from a snapshot exported by a temporary
//!   logical slot (slot creation not timed), `PGRELAY_BENCH_WORKERS`
//!   workers (default 4), default chunk size;
//! * `native`: `CREATE SUBSCRIPTION … WITH (copy_data = true)` until every
//!   `pg_subscription_rel` row is `r` (slot creation included: it is part
//!   of a native initial sync);
//! * `dump|restore`: `pg_dump -Fc --data-only | pg_restore --data-only`
//!   (PostgreSQL 15 tools) into the pre-created schema.
//!
//! Two more methods measure the migration path, where the keys are built
//! after the data (what `pgrelay init` and a plain `pg_restore` do; a
//! native subscription cannot, its tables must exist with their keys):
//!
//! * `pgrelay init-path`: pre-data only (no keys), `copy_tables`, then the
//!   post-data (primary keys) on `PGRELAY_BENCH_WORKERS` connections, all
//!   timed;
//! * `dump|restore full`: `pg_dump -Fc | pg_restore` of schema and data
//!   into an empty database (its keys are built after the data too).
//!
//! Each database is dropped after its measurement. Methods rotate order
//! every round; the report gives every run and the medians, in rows per
//! second over all four pgbench tables, and the ratios pgrelay / native and
//! pgrelay / dump (goal: pgrelay / native ≥ 1.3, pgrelay / dump ≥ 1.5).
//!
//! Run: `PGRELAY_BENCH_SCALE=20 cargo bench --bench copy_vs_native`
//! (`PGRELAY_BENCH_ROUNDS`, default 3).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgrelay_copy::{CopyOptions, CopyTarget, SnapshotSpec, TableCopy};
use pgrelay_source::{Config, CreateSlotOptions, ReplicationClient, SnapshotAction};
use pgrelay_testkit::bench::{env_num, median};
use pgrelay_testkit::{Cluster, PgInstall};

fn config(port: u16, db: &str) -> Config {
    Config::parse_with_env(
        &format!("host=127.0.0.1 port={port} user=postgres dbname={db} sslmode=disable"),
        |_| None,
    )
    .expect("config")
}

const METHODS: [&str; 5] = [
    "pgrelay-copy",
    "native",
    "dump|restore",
    "pgrelay init-path",
    "dump|restore full",
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("copy_vs_native: run with `cargo bench --bench copy_vs_native`");
        return;
    }
    let scale = env_num("PGRELAY_BENCH_SCALE", 100) as u32;
    let rounds = env_num("PGRELAY_BENCH_ROUNDS", 3) as usize;
    let workers = env_num("PGRELAY_BENCH_WORKERS", 4) as usize;
    let tools = PgInstall::require(15);
    let settings = |b: pgrelay_testkit::ClusterBuilder| {
        b.setting("shared_buffers", "'512MB'")
            .setting("max_wal_size", "'8GB'")
            .setting("checkpoint_timeout", "'30min'")
    };
    let source = settings(Cluster::builder(15)).start();
    let target = settings(Cluster::builder(17)).start();
    source.create_database("bench");
    eprintln!("pgbench -i -s {scale} on PostgreSQL 15 ...");
    let t = Instant::now();
    source.pgbench_init("bench", scale);
    source.execute_blocking("bench", "VACUUM ANALYZE");
    source.execute_blocking("bench", "CHECKPOINT");
    eprintln!("  built in {:.1} s", t.elapsed().as_secs_f64());
    source.execute_blocking("bench", "CREATE PUBLICATION bench_pub FOR ALL TABLES");
    let size = source
        .scalar_blocking("bench", "SELECT pg_size_pretty(pg_database_size('bench'))")
        .unwrap_or_default();
    let rows: u64 = source
        .scalar_blocking(
            "bench",
            "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches)
                  + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_history)",
        )
        .and_then(|s| s.parse().ok())
        .expect("row count");
    let schema = Command::new(tools.tool("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &source.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(["--schema-only", "--no-publications", "bench"])
        .output()
        .expect("pg_dump --schema-only");
    assert!(schema.status.success(), "pg_dump --schema-only failed");
    let schema = String::from_utf8(schema.stdout).expect("utf-8 schema");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // The schema split at the data, as `pgrelay init` copies it.
    let split = rt.block_on(async {
        let client = source.connect("bench").await;
        pgrelay_schema::dump_schema(
            &config(source.port(), "bench"),
            &client,
            &pgrelay_schema::SchemaOptions::default(),
        )
        .await
        .expect("schema dump")
    });
    let tables: Vec<TableCopy> = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
    ]
    .iter()
    .map(|t| {
        let cols = source
            .query_blocking(
                "bench",
                &format!(
                    "SELECT attname FROM pg_attribute WHERE attrelid = 'public.{t}'::regclass
                           AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
                ),
            )
            .into_iter()
            .map(|r| r[0].clone().expect("column name"))
            .collect();
        TableCopy {
            schema: "public".into(),
            name: t.to_string(),
            columns: cols,
        }
    })
    .collect();

    let mut results: Vec<(&str, Duration)> = Vec::new();
    for round in 0..rounds {
        for i in 0..METHODS.len() {
            let method = METHODS[(i + round) % METHODS.len()];
            let db = format!("r{round}_{}", method.replace(['-', '|', ' '], "_"));
            target.create_database(&db);
            let took = match method {
                "pgrelay-copy" => {
                    psql(&tools, target.port(), &db, &schema);
                    rt.block_on(pgrelay(&source, &target, &db, &tables, workers))
                }
                "native" => {
                    psql(&tools, target.port(), &db, &schema);
                    native(&source, &target, &db, round)
                }
                "dump|restore" => {
                    psql(&tools, target.port(), &db, &schema);
                    dump_restore(&tools, &source, &target, &db, true)
                }
                "pgrelay init-path" => rt.block_on(async {
                    let client = target.connect(&db).await;
                    pgrelay_schema::apply_pre_data(&client, &split)
                        .await
                        .expect("pre-data");
                    drop(client);
                    let copy = pgrelay(&source, &target, &db, &tables, workers).await;
                    let started = Instant::now();
                    pgrelay_schema::apply_post_data(&config(target.port(), &db), &split, workers)
                        .await
                        .expect("post-data");
                    let keys = started.elapsed();
                    eprintln!(
                        "  init-path: copy {:.2} s + keys {:.2} s",
                        copy.as_secs_f64(),
                        keys.as_secs_f64()
                    );
                    copy + keys
                }),
                _ => dump_restore(&tools, &source, &target, &db, false),
            };
            let copied: u64 = target
                .scalar_blocking(
                    &db,
                    "SELECT (SELECT count(*) FROM pgbench_accounts) + (SELECT count(*) FROM pgbench_branches)
                          + (SELECT count(*) FROM pgbench_tellers) + (SELECT count(*) FROM pgbench_history)",
                )
                .and_then(|s| s.parse().ok())
                .expect("row count");
            assert_eq!(copied, rows, "{method} copied {copied} of {rows} rows");
            eprintln!(
                "round {round} {method:13} {:7.2} s  {:9.0} rows/s",
                took.as_secs_f64(),
                rows as f64 / took.as_secs_f64()
            );
            results.push((method, took));
            target.execute_blocking("postgres", &format!("DROP DATABASE \"{db}\" WITH (FORCE)"));
            target.execute_blocking("postgres", "CHECKPOINT");
        }
    }
    let med = |m: &str| {
        median(
            results
                .iter()
                .filter(|(rm, _)| *rm == m)
                .map(|(_, d)| *d)
                .collect(),
        )
    };
    println!(
        "\npgbench scale {scale} ({rows} rows, {size}), PostgreSQL 15 -> 17, {rounds} rounds, \
         pgrelay workers {workers}; medians:"
    );
    for m in METHODS {
        let d = med(m);
        println!(
            "  {m:13} {:7.2} s  {:9.0} rows/s",
            d.as_secs_f64(),
            rows as f64 / d.as_secs_f64()
        );
    }
    let ours = med("pgrelay-copy").as_secs_f64();
    println!(
        "  keys present during the load: ratio pgrelay-copy / native {:.2}, \
         pgrelay-copy / dump|restore {:.2}",
        med("native").as_secs_f64() / ours,
        med("dump|restore").as_secs_f64() / ours
    );
    let init = med("pgrelay init-path").as_secs_f64();
    println!(
        "  migration path (keys after the data; native cannot): ratio pgrelay init-path / native \
         {:.2}, pgrelay init-path / dump|restore full {:.2}",
        med("native").as_secs_f64() / init,
        med("dump|restore full").as_secs_f64() / init
    );
}

fn psql(tools: &PgInstall, port: u16, db: &str, sql: &str) {
    let mut child = Command::new(tools.tool("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("psql");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(sql.as_bytes())
        .expect("write schema");
    assert!(child.wait().expect("psql").success(), "psql failed");
}

async fn pgrelay(
    source: &Cluster,
    target: &Cluster,
    db: &str,
    tables: &[TableCopy],
    workers: usize,
) -> Duration {
    let mut repl = ReplicationClient::connect(&config(source.port(), "bench"))
        .await
        .expect("replication connection");
    let slot = repl
        .create_replication_slot(
            &format!("bench_{db}"),
            &CreateSlotOptions {
                temporary: true,
                snapshot: SnapshotAction::Export,
                ..Default::default()
            },
        )
        .await
        .expect("slot");
    let snapshot = SnapshotSpec {
        snapshot: slot.snapshot_name.expect("snapshot"),
        lsn: slot.consistent_point,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let cpu_before = cpu_time();
    let started = Instant::now();
    pgrelay_copy::copy_tables(
        &config(source.port(), "bench"),
        &snapshot,
        &[CopyTarget {
            name: "target".into(),
            config: config(target.port(), db),
        }],
        tables,
        &CopyOptions {
            workers,
            ..CopyOptions::new("bench")
        },
        tx,
        std::future::pending(),
    )
    .await
    .expect("pgrelay copy");
    let took = started.elapsed();
    let cpu = cpu_time() - cpu_before;
    eprintln!(
        "  pgrelay-copy process CPU {:.2} s ({:.0}% of one core over the copy)",
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / took.as_secs_f64()
    );
    drop(repl);
    took
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass; all-zero is a
    // valid initial value for it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer cannot fail.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn native(source: &Cluster, target: &Cluster, db: &str, round: usize) -> Duration {
    let started = Instant::now();
    target.execute_blocking(
        db,
        &format!(
            "CREATE SUBSCRIPTION bench_sub_{round} CONNECTION 'host=127.0.0.1 port={} user=postgres dbname=bench' \
             PUBLICATION bench_pub WITH (copy_data = true)",
            source.port()
        ),
    );
    loop {
        let pending = target
            .scalar_blocking(
                db,
                "SELECT count(*) FILTER (WHERE srsubstate <> 'r') + (count(*) = 0)::int FROM pg_subscription_rel",
            )
            .unwrap_or_default();
        if pending == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    target.execute_blocking(db, &format!("DROP SUBSCRIPTION bench_sub_{round}"));
    took
}

/// `pg_dump -Fc | pg_restore`: data only into the pre-created schema, or
/// (`data_only` false) schema, data and post-data into an empty database.
fn dump_restore(
    tools: &PgInstall,
    source: &Cluster,
    target: &Cluster,
    db: &str,
    data_only: bool,
) -> Duration {
    let only: &[&str] = if data_only {
        &["--data-only"]
    } else {
        &["--no-publications"]
    };
    let started = Instant::now();
    let mut dump = Command::new(tools.tool("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &source.port().to_string(),
            "-U",
            "postgres",
        ])
        .arg("-Fc")
        .args(only)
        .arg("bench")
        .stdout(Stdio::piped())
        .spawn()
        .expect("pg_dump");
    let restore = Command::new(tools.tool("pg_restore"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &target.port().to_string(),
            "-U",
            "postgres",
        ])
        .args(if data_only {
            &["--data-only"][..]
        } else {
            &[][..]
        })
        .args(["-d", db])
        .stdin(dump.stdout.take().expect("dump stdout"))
        .status()
        .expect("pg_restore");
    assert!(dump.wait().expect("pg_dump").success(), "pg_dump failed");
    assert!(restore.success(), "pg_restore failed");
    started.elapsed()
}
