//! Apply throughput against a real PostgreSQL 16 target, and the run length
//! from which COPY beats pipelined single-row INSERTs.
//!
//! Scenarios (changes are built in memory first; only applying is timed,
//! including every flush):
//! - crossover: transactions of k inserts into one table followed by one
//!   update of the last row (which ends the insert run), with every run
//!   sent as pipelined single-row INSERTs, as multi-row INSERTs (16/4/1
//!   rows per statement), and as COPY: wall-clock rows/s and client +
//!   backend CPU microseconds per row;
//! - single-row insert transactions (a backlog of tiny transactions);
//! - TPC-B-like transactions (pgbench's three updates by key and one insert);
//! - one large transaction of inserts.
//!
//! Run: `cargo bench -p pgrelay-apply --bench apply` (PGRELAY_BENCH_SCALE,
//! default 1.0, multiplies every transaction count).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pgrelay_apply::{Applier, ApplyOptions};
use pgrelay_testkit::Cluster;
use pgrelay_types::{
    ByteStr, Change, Column, Lsn, Oid, PgTimestamp, RelationInfo, ReplicaIdentity, TransactionInfo,
    TransactionKind, Tuple, Value, Xid,
};

fn rel(oid: u32, name: &str, cols: &[(&str, u32, bool)]) -> Arc<RelationInfo> {
    Arc::new(RelationInfo {
        oid: Oid(oid),
        schema: ByteStr::from_static("public"),
        name: ByteStr::from(name.to_string()),
        replica_identity: ReplicaIdentity::Default,
        columns: cols
            .iter()
            .map(|(n, ty, key)| Column {
                name: ByteStr::from(n.to_string()),
                type_oid: Oid(*ty),
                type_modifier: -1,
                is_key: *key,
            })
            .collect(),
    })
}

fn v(s: impl ToString) -> Value {
    Value::Text(Bytes::from(s.to_string()))
}

struct Txn {
    info: TransactionInfo,
    changes: Vec<Change>,
}

struct Lsns(u64);

impl Lsns {
    fn next(&mut self) -> TransactionInfo {
        self.0 += 0x100;
        TransactionInfo {
            xid: Xid(self.0 as u32),
            commit_lsn: Lsn(self.0),
            end_lsn: Lsn(self.0 + 0x30),
            commit_ts: PgTimestamp(0),
            origin: None,
            kind: TransactionKind::Plain,
        }
    }
}

/// utime + stime of a process in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Counting from the state (field 3): utime is field 14, stime 15.
    let get = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

async fn run(a: &mut Applier, txns: &[Txn]) -> Duration {
    let start = Instant::now();
    for t in txns {
        a.begin(&t.info).await.expect("begin");
        a.changes(&t.changes).await.expect("changes");
        a.commit(&t.info).await.expect("commit");
        if a.should_flush() {
            a.flush().await.expect("flush");
        }
    }
    a.flush().await.expect("flush");
    start.elapsed()
}

async fn applier(pg: &Cluster, pipeline: &str) -> Applier {
    Applier::new(
        pg.connect("postgres").await,
        ApplyOptions {
            pipeline: pipeline.to_string(),
            target: "bench".to_string(),
            ..ApplyOptions::default()
        },
    )
    .await
    .expect("applier")
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("apply bench: run with `cargo bench -p pgrelay-apply --bench apply`");
        return;
    }
    let scale: f64 = std::env::var("PGRELAY_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let n = |x: f64| ((x * scale) as usize).max(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pg = Cluster::builder(16)
        .setting("max_wal_size", "'4GB'")
        .setting("synchronous_commit", "on")
        .start();
    pg.execute_blocking(
        "postgres",
        "CREATE TABLE a (id bigint PRIMARY KEY, payload text);
         CREATE TABLE b (id int PRIMARY KEY, n int);
         INSERT INTO b VALUES (1, 0);
         CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84));
         CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84));
         CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88));
         CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp,
                                       filler char(22));
         INSERT INTO pgbench_accounts SELECT g, 1, 0, '' FROM generate_series(1, 100000) g;
         INSERT INTO pgbench_tellers SELECT g, 1, 0, '' FROM generate_series(1, 10) g;
         INSERT INTO pgbench_branches VALUES (1, 0, '');",
    );
    pg.execute_blocking("postgres", "VACUUM ANALYZE");
    let ra = rel(1, "a", &[("id", 20, true), ("payload", 25, false)]);
    let acc = rel(
        3,
        "pgbench_accounts",
        &[
            ("aid", 23, true),
            ("bid", 23, false),
            ("abalance", 23, false),
            ("filler", 1042, false),
        ],
    );
    let tel = rel(
        4,
        "pgbench_tellers",
        &[
            ("tid", 23, true),
            ("bid", 23, false),
            ("tbalance", 23, false),
            ("filler", 1042, false),
        ],
    );
    let bra = rel(
        5,
        "pgbench_branches",
        &[
            ("bid", 23, true),
            ("bbalance", 23, false),
            ("filler", 1042, false),
        ],
    );
    let his = rel(
        6,
        "pgbench_history",
        &[
            ("tid", 23, false),
            ("bid", 23, false),
            ("aid", 23, false),
            ("delta", 23, false),
            ("mtime", 1114, false),
            ("filler", 1042, false),
        ],
    );
    let payload = "p".repeat(100);
    let mut lsns = Lsns(0);
    let mut next_id = 0u64;
    let mut pipeline_no = 0;
    let mut pipeline = || {
        pipeline_no += 1;
        format!("bench{pipeline_no}")
    };

    if std::env::var_os("PGRELAY_BENCH_SKIP_CROSSOVER").is_none() {
        println!("crossover: k inserts + 1 update of the same table per transaction");
        println!("(inserted rows/s wall clock, and client + backend CPU µs per row)");
        println!(
            "{:>4} {:>17} {:>17} {:>17}",
            "k", "1-row INSERT", "multi-row INSERT", "COPY"
        );
        for k in [1usize, 2, 4, 8, 16, 32, 64, 128] {
            let txns = n(40_000.0 / k as f64 + 200.0);
            let mut result = Vec::new();
            for (copy_min, multi) in [(usize::MAX, false), (usize::MAX, true), (1, true)] {
                let work: Vec<Txn> = (0..txns)
                    .map(|_| {
                        let mut changes: Vec<Change> = (0..k)
                            .map(|_| {
                                next_id += 1;
                                Change::Insert {
                                    relation: ra.clone(),
                                    new: Tuple(vec![v(next_id), v(&payload)]),
                                }
                            })
                            .collect();
                        // Ends the run: an update of the row just inserted.
                        changes.push(Change::Update {
                            relation: ra.clone(),
                            old: None,
                            new: Tuple(vec![v(next_id), v("updated")]),
                        });
                        Txn {
                            info: lsns.next(),
                            changes,
                        }
                    })
                    .collect();
                let name = pipeline();
                let (d, cpu) = rt.block_on(async {
                    let mut a = applier(&pg, &name).await;
                    a.set_copy_min_rows(copy_min);
                    a.set_multi_row_inserts(multi);
                    let backend: i32 = a
                        .client()
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .expect("pid")
                        .get(0);
                    let me = std::process::id() as i32;
                    let cpu0 = cpu_ticks(backend) + cpu_ticks(me);
                    let d = run(&mut a, &work).await;
                    let cpu1 = cpu_ticks(backend) + cpu_ticks(me);
                    (d, cpu1 - cpu0)
                });
                // CPU per row hardly depends on what else the machine runs;
                // wall time does.
                let rows = (txns * k) as f64;
                result.push((rows / d.as_secs_f64(), cpu as f64 * 1e4 / rows));
            }
            println!(
                "{k:>4} {:>9.0} {:>7.1} {:>9.0} {:>7.1} {:>9.0} {:>7.1}",
                result[0].0, result[0].1, result[1].0, result[1].1, result[2].0, result[2].1
            );
        }
    }

    let txns = n(200_000.0);
    let work: Vec<Txn> = (0..txns)
        .map(|_| {
            next_id += 1;
            Txn {
                info: lsns.next(),
                changes: vec![Change::Insert {
                    relation: ra.clone(),
                    new: Tuple(vec![v(next_id), v(&payload)]),
                }],
            }
        })
        .collect();
    let name = pipeline();
    let d = rt.block_on(async { run(&mut applier(&pg, &name).await, &work).await });
    println!(
        "single-row insert transactions: {txns} in {:.2} s = {:.0} txn/s",
        d.as_secs_f64(),
        txns as f64 / d.as_secs_f64()
    );

    let txns = n(100_000.0);
    let mut seed = 12345u64;
    let mut rand = |m: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % m + 1
    };
    let work: Vec<Txn> = (0..txns)
        .map(|i| {
            let (aid, tid, delta) = (rand(100_000), rand(10), rand(10_000));
            Txn {
                info: lsns.next(),
                changes: vec![
                    Change::Update {
                        relation: acc.clone(),
                        old: None,
                        new: Tuple(vec![v(aid), v(1), v(delta), v("")]),
                    },
                    Change::Update {
                        relation: tel.clone(),
                        old: None,
                        new: Tuple(vec![v(tid), v(1), v(i), v("")]),
                    },
                    Change::Update {
                        relation: bra.clone(),
                        old: None,
                        new: Tuple(vec![v(1), v(i), v("")]),
                    },
                    Change::Insert {
                        relation: his.clone(),
                        new: Tuple(vec![
                            v(tid),
                            v(1),
                            v(aid),
                            v(delta),
                            v("2026-01-01 00:00:00"),
                            Value::Null,
                        ]),
                    },
                ],
            }
        })
        .collect();
    let name = pipeline();
    let d = rt.block_on(async { run(&mut applier(&pg, &name).await, &work).await });
    println!(
        "TPC-B-like transactions: {txns} in {:.2} s = {:.0} txn/s",
        d.as_secs_f64(),
        txns as f64 / d.as_secs_f64()
    );
    // Statements the target executed (stats are flushed within a second).
    std::thread::sleep(Duration::from_millis(1500));
    for r in pg.query_blocking(
        "postgres",
        "SELECT relname, n_tup_upd, n_tup_ins FROM pg_stat_user_tables \
         WHERE relname LIKE 'pgbench%' ORDER BY relname",
    ) {
        println!(
            "  {}: {} rows updated, {} inserted on the target",
            r[0].as_deref().unwrap_or(""),
            r[1].as_deref().unwrap_or(""),
            r[2].as_deref().unwrap_or("")
        );
    }

    let rows = n(1_000_000.0);
    let changes: Vec<Change> = (0..rows)
        .map(|_| {
            next_id += 1;
            Change::Insert {
                relation: ra.clone(),
                new: Tuple(vec![v(next_id), v(&payload)]),
            }
        })
        .collect();
    let info = lsns.next();
    let name = pipeline();
    let d = rt.block_on(async {
        let mut a = applier(&pg, &name).await;
        let start = Instant::now();
        a.begin(&info).await.expect("begin");
        for chunk in changes.chunks(1000) {
            a.changes(chunk).await.expect("changes");
        }
        a.commit(&info).await.expect("commit");
        a.flush().await.expect("flush");
        start.elapsed()
    });
    println!(
        "one transaction of {rows} inserts: {:.2} s = {:.0} rows/s",
        d.as_secs_f64(),
        rows as f64 / d.as_secs_f64()
    );

    // The reference: the same rows as one plain COPY on one connection.
    let mut data = bytes::BytesMut::new();
    for _ in 0..rows {
        next_id += 1;
        data.extend_from_slice(format!("{next_id}\t{payload}\n").as_bytes());
    }
    let data = data.freeze();
    let d = rt.block_on(async {
        use futures_util::SinkExt;
        let c = pg.connect("postgres").await;
        let start = Instant::now();
        let sink = c
            .copy_in::<_, Bytes>("COPY a (id, payload) FROM STDIN")
            .await
            .expect("copy");
        futures_util::pin_mut!(sink);
        sink.send(data).await.expect("send");
        sink.finish().await.expect("finish");
        start.elapsed()
    });
    println!(
        "reference: plain COPY of {rows} rows: {:.2} s = {:.0} rows/s",
        d.as_secs_f64(),
        rows as f64 / d.as_secs_f64()
    );
}
