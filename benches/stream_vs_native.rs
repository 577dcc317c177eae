//! End-to-end streaming benchmark: `pgrelay stream` against PostgreSQL's
//! own logical replication (a subscription), draining the same kind of
//! backlog, side by side in one run.
//!
//! A PostgreSQL 15 source (`wal_level=logical`, default
//! `logical_decoding_work_mem` of 64MB) and a PostgreSQL 17 target. Every
//! run gets a fresh source database and fresh target database(s). The
//! consumer is set up first (its initial sync of the tables is done and not
//! timed), then stopped while the backlog is written, then started, and the
//! clock runs from that start until every target holds the backlog's last
//! transaction: a one-row insert into `bench_marker`, written after the
//! backlog. Both methods apply in source commit order, so the marker on a
//! target means everything before it is there; the targets are polled
//! every 50 ms with one short autocommit query each (no snapshot held).
//! Row counts (and for pgbench, balances) are compared afterwards.
//!
//! * `native`: `CREATE SUBSCRIPTION … WITH (copy_data = true)` on each
//!   target (its own slot and walsender), initial sync waited for, then
//!   `ALTER SUBSCRIPTION … DISABLE` (waiting for the walsender to exit)
//!   while the backlog is written; timed from `ENABLE`. Subscription
//!   defaults otherwise (`streaming = off`: the walsender spills large
//!   transactions to disk); `PGRELAY_BENCH_NATIVE_STREAMING=on` sets
//!   `streaming = on` instead.
//! * `pgrelay`: `pgrelay stream --config FILE` (the release binary) runs
//!   until every table is `ready` on every target, gets SIGTERM, the
//!   backlog is written, and the binary is started again: process
//!   startup, preflight and connection setup belong to the measured time.
//!
//! Scenarios (`PGRELAY_BENCH_SCENARIOS`, comma list, default all):
//! * `bigtxn`: one `INSERT … SELECT generate_series` of `PGRELAY_BENCH_ROWS`
//!   (default 1,000,000) ~100-byte rows into a table with a primary key.
//! * `small`: `PGRELAY_BENCH_TXNS` (default 200,000) single-row insert
//!   transactions (a procedure committing after every row).
//! * `pgbench`: pgbench scale `PGRELAY_BENCH_PGBENCH_SCALE` (default 10)
//!   copied initially, then a backlog of `PGRELAY_BENCH_PGBENCH_TXNS`
//!   (default 100,000) TPC-B-like transactions from `pgbench -c 4`.
//! * `fanout`: `PGRELAY_BENCH_ROWS` rows in transactions of 10,000 rows to
//!   three target databases: one pgrelay with three targets against three
//!   subscriptions. Also reports the walsenders' CPU time (utime + stime of
//!   the slots' `active_pid`s from /proc, summed) over the drain.
//! * `memory`: one pgrelay, two targets, one of them stopped; about
//!   `PGRELAY_BENCH_MEMORY_MB` (default 1200) MB of pgoutput data (1 KB
//!   rows, 50,000 per transaction) goes through while pgrelay runs. Reports
//!   pgrelay's peak RSS (`VmHWM`), the peak of `pgrelay_spilled_bytes`
//!   from `/metrics` and `pgrelay_received_bytes_total`. pgrelay only.
//!
//! Methods alternate order every round (`PGRELAY_BENCH_ROUNDS`, default 3);
//! the report gives every run, the medians, and the ratio pgrelay / native
//! of the times (and of walsender CPU for `fanout`).
//!
//! Run: `cargo bench --bench stream_vs_native`
//! (`PGRELAY_BENCH_SCENARIOS=bigtxn,small PGRELAY_BENCH_ROUNDS=5 ...`;
//! `PGRELAY_BENCH_PERF=DIR` records a `perf` profile of every pgrelay drain;
//! `PGRELAY_BENCH_WRAP="heaptrack -o FILE"` runs pgrelay under a tool).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pgrelay_testkit::bench::{env_num, median};
use pgrelay_testkit::{client_tool, free_port, simple_rows, Cluster};
use pgrelay_testkit::{query as sql, query_scalar as scalar};
use tokio_postgres::Client;

const PGRELAY: &str = env!("CARGO_BIN_EXE_pgrelay");
const POLL: Duration = Duration::from_millis(50);

/// Clock ticks per second for /proc/PID/stat times.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of a process in seconds, if it still exists.
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

/// A `kB` field of /proc/PID/status in bytes.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    Pgrelay,
    Native,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Pgrelay => "pgrelay",
            Method::Native => "native",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scenario {
    BigTxn,
    Small,
    Pgbench,
    Fanout,
    Memory,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::BigTxn,
        Scenario::Small,
        Scenario::Pgbench,
        Scenario::Fanout,
        Scenario::Memory,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::BigTxn => "bigtxn",
            Scenario::Small => "small",
            Scenario::Pgbench => "pgbench",
            Scenario::Fanout => "fanout",
            Scenario::Memory => "memory",
        }
    }

    fn targets(self) -> usize {
        if self == Scenario::Fanout {
            3
        } else {
            1
        }
    }
}

struct Sizes {
    rows: u64,
    txns: u64,
    pgbench_scale: u32,
    pgbench_txns: u64,
    memory_mb: u64,
}

/// One measured drain.
struct Drain {
    secs: f64,
    /// CPU seconds of the walsenders serving the run's slots.
    walsender_cpu: f64,
    /// CPU seconds of the pgrelay process (pgrelay runs only).
    pgrelay_cpu: f64,
}

const TABLE_DDL: &str = "CREATE TABLE bench (id bigint PRIMARY KEY, payload text);
CREATE TABLE bench_marker (id int PRIMARY KEY);";

/// Procedures on the source that write the backlogs.
const SOURCE_PROCS: &str = "
CREATE PROCEDURE bench_rows(first bigint, last bigint, per_txn bigint, width int)
LANGUAGE plpgsql AS $$
DECLARE lo bigint := first;
BEGIN
  WHILE lo <= last LOOP
    INSERT INTO bench SELECT g, left(repeat(md5(g::text), (width + 31) / 32), width)
      FROM generate_series(lo, least(lo + per_txn - 1, last)) g;
    COMMIT;
    lo := lo + per_txn;
  END LOOP;
END $$;";

/// The servers and what every run shares.
struct Bench {
    source: Cluster,
    target: Cluster,
    sizes: Sizes,
    native_streaming: String,
    work: tempfile::TempDir,
}

impl Bench {
    fn pgbench(&self, cluster: &Cluster, db: &str) -> Command {
        let mut c = Command::new(client_tool("pgbench").expect("pgbench"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
        ]);
        c.env("PGDATABASE", db);
        c
    }

    /// Source and target databases for one run, with the schema.
    async fn prepare(&self, scenario: Scenario, src_db: &str, target_dbs: &[String]) {
        self.source.create_database(src_db);
        for t in target_dbs {
            self.target.create_database(t);
        }
        let src = self.source.connect(src_db).await;
        match scenario {
            Scenario::Pgbench => {
                let scale = self.sizes.pgbench_scale.to_string();
                run(self
                    .pgbench(&self.source, src_db)
                    .args(["-i", "-q", "-s", &scale]));
                sql(
                    &src,
                    "ALTER TABLE pgbench_history REPLICA IDENTITY FULL;
                     CREATE TABLE bench_marker (id int PRIMARY KEY)",
                )
                .await;
                for t in target_dbs {
                    run(self
                        .pgbench(&self.target, t)
                        .args(["-i", "-q", "-I", "dtp", "-s", &scale]));
                    let c = self.target.connect(t).await;
                    sql(&c, "CREATE TABLE bench_marker (id int PRIMARY KEY)").await;
                }
            }
            _ => {
                sql(&src, TABLE_DDL).await;
                sql(&src, SOURCE_PROCS).await;
                for t in target_dbs {
                    let c = self.target.connect(t).await;
                    sql(&c, TABLE_DDL).await;
                }
            }
        }
    }

    /// Writes the scenario's backlog, then the marker.
    async fn backlog(&self, scenario: Scenario, src_db: &str) {
        let src = self.source.connect(src_db).await;
        let s = &self.sizes;
        match scenario {
            Scenario::BigTxn => {
                sql(
                    &src,
                    &format!(
                        "INSERT INTO bench SELECT g, repeat('x', 90) FROM generate_series(1, {}) g",
                        s.rows
                    ),
                )
                .await;
            }
            Scenario::Small => {
                sql(&src, &format!("CALL bench_rows(1, {}, 1, 90)", s.txns)).await;
            }
            Scenario::Fanout => {
                sql(&src, &format!("CALL bench_rows(1, {}, 10000, 90)", s.rows)).await;
            }
            Scenario::Pgbench => {
                let per_client = (s.pgbench_txns / 4).max(1).to_string();
                run(self.pgbench(&self.source, src_db).args([
                    "-n",
                    "-c",
                    "4",
                    "-j",
                    "2",
                    "-t",
                    &per_client,
                ]));
            }
            Scenario::Memory => unreachable!("memory writes its backlog live"),
        }
        sql(&src, "INSERT INTO bench_marker VALUES (1)").await;
    }

    /// What must match between source and every target after a drain.
    async fn check(&self, scenario: Scenario, src_db: &str, target_dbs: &[String], method: Method) {
        let q = match scenario {
            Scenario::Pgbench => {
                "SELECT (SELECT count(*) FROM pgbench_history) || ' ' ||
                        (SELECT sum(abalance) FROM pgbench_accounts) || ' ' ||
                        (SELECT sum(bbalance) FROM pgbench_branches) || ' ' ||
                        (SELECT sum(tbalance) FROM pgbench_tellers)"
            }
            _ => "SELECT count(*) || ' ' || coalesce(max(id), 0) FROM bench",
        };
        let want = scalar(&self.source.connect(src_db).await, q).await;
        for t in target_dbs {
            let got = scalar(&self.target.connect(t).await, q).await;
            assert_eq!(
                got,
                want,
                "{} {}: target {t} differs from the source",
                scenario.name(),
                method.name()
            );
        }
    }

    fn pgrelay_config(&self, slot: &str, src_db: &str, targets: &[(String, String)]) -> PathBuf {
        let mut y = format!(
            "source: {{ url: \"{}\", slot: {slot}, publication: {slot} }}\ntargets:\n",
            self.source.superuser_url(src_db)
        );
        for (name, url) in targets {
            y.push_str(&format!("  - {{ name: {name}, url: \"{url}\" }}\n"));
        }
        // `PGRELAY_BENCH_APPLY="max_batch_rows: 50000"` adds apply settings.
        let extra = std::env::var("PGRELAY_BENCH_APPLY")
            .map(|e| format!(", {e}"))
            .unwrap_or_default();
        y.push_str(&format!(
            "apply: {{ spill_dir: \"{}\", max_retry_delay: 2s{extra} }}\n",
            self.work.path().display()
        ));
        let path = self.work.path().join(format!("{slot}.yml"));
        std::fs::write(&path, y).expect("write the pgrelay config");
        path
    }

    /// Waits until every table is `ready` for `slot` on every target.
    async fn wait_synced(&self, target_dbs: &[String], slot: &str, tables: usize, p: &mut Pgrelay) {
        let deadline = Instant::now() + Duration::from_secs(600);
        for t in target_dbs {
            let c = self.target.connect(t).await;
            loop {
                let ready = simple_rows(
                    &c,
                    &format!(
                        "SELECT count(*) FROM pgrelay.table_sync WHERE pipeline = '{slot}' AND state = 'ready'"
                    ),
                )
                .await
                .ok()
                .and_then(|r| r[0][0].clone())
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
                if ready >= tables {
                    break;
                }
                p.assert_alive();
                assert!(
                    Instant::now() < deadline,
                    "initial sync never finished:\n{}",
                    p.log()
                );
                tokio::time::sleep(POLL).await;
            }
        }
    }

    /// Fresh source and target databases for one run: their names.
    async fn fresh_dbs(&self, scenario: Scenario, tag: &str) -> (String, Vec<String>) {
        let src_db = format!("{tag}_src");
        let target_dbs: Vec<String> = (0..scenario.targets())
            .map(|i| format!("{tag}_t{i}"))
            .collect();
        self.prepare(scenario, &src_db, &target_dbs).await;
        (src_db, target_dbs)
    }

    async fn run_pgrelay(&self, scenario: Scenario, tag: &str) -> Drain {
        let (src_db, target_dbs) = self.fresh_dbs(scenario, tag).await;
        let slot = format!("{tag}_slot");
        let config = self.pgrelay_config(
            &slot,
            &src_db,
            &target_dbs
                .iter()
                .enumerate()
                .map(|(i, d)| (format!("t{i}"), self.target.superuser_url(d)))
                .collect::<Vec<_>>(),
        );
        let tables = if scenario == Scenario::Pgbench { 5 } else { 2 };
        let mut p = Pgrelay::start(&config, self.work.path(), &format!("{tag}_setup"), None);
        self.wait_synced(&target_dbs, &slot, tables, &mut p).await;
        p.stop();
        self.backlog(scenario, &src_db).await;
        self.settle(&src_db).await;

        let mut clients = Vec::new();
        for t in &target_dbs {
            clients.push(self.target.connect(t).await);
        }
        let src = self.source.connect(&src_db).await;
        let started = Instant::now();
        let mut p = Pgrelay::start(&config, self.work.path(), &format!("{tag}_drain"), None);
        let perf = profile(p.pid(), tag);
        let walsender_cpu = wait_markers(&clients, &src, started, &mut p).await;
        if let Some(mut perf) = perf {
            // SAFETY: SIGINT to the perf process we spawned.
            unsafe { libc::kill(perf.id() as i32, libc::SIGINT) };
            let _ = perf.wait();
        }
        let secs = started.elapsed().as_secs_f64();
        let pgrelay_cpu = proc_cpu(p.pid()).unwrap_or(0.0);
        p.stop();
        self.check(scenario, &src_db, &target_dbs, Method::Pgrelay)
            .await;
        sql(&src, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
        drop(src);
        self.drop_dbs(&src_db, &target_dbs);
        Drain {
            secs,
            walsender_cpu,
            pgrelay_cpu,
        }
    }

    async fn run_native(&self, scenario: Scenario, tag: &str) -> Drain {
        let (src_db, target_dbs) = self.fresh_dbs(scenario, tag).await;
        let src = self.source.connect(&src_db).await;
        sql(&src, "CREATE PUBLICATION bench_pub FOR ALL TABLES").await;
        let mut clients = Vec::new();
        for (i, t) in target_dbs.iter().enumerate() {
            let c = self.target.connect(t).await;
            sql(
                &c,
                &format!(
                    "CREATE SUBSCRIPTION {tag}_sub{i} CONNECTION 'host=127.0.0.1 port={} user=postgres dbname={src_db}'
                     PUBLICATION bench_pub WITH (copy_data = true, streaming = {})",
                    self.source.port(),
                    self.native_streaming
                ),
            )
            .await;
            clients.push(c);
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        for c in &clients {
            loop {
                let pending = scalar(
                    c,
                    "SELECT count(*) FILTER (WHERE srsubstate <> 'r') + (count(*) = 0)::int FROM pg_subscription_rel",
                )
                .await;
                if pending == "0" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "native initial sync never finished"
                );
                tokio::time::sleep(POLL).await;
            }
        }
        for (i, c) in clients.iter().enumerate() {
            sql(c, &format!("ALTER SUBSCRIPTION {tag}_sub{i} DISABLE")).await;
        }
        // The apply workers exit asynchronously: wait for the slots to be
        // released so the backlog is really built with no consumer.
        loop {
            let active = scalar(
                &src,
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() AND active",
            )
            .await;
            if active == "0" {
                break;
            }
            assert!(Instant::now() < deadline, "native walsenders never stopped");
            tokio::time::sleep(POLL).await;
        }
        self.backlog(scenario, &src_db).await;
        self.settle(&src_db).await;

        let started = Instant::now();
        for (i, c) in clients.iter().enumerate() {
            sql(c, &format!("ALTER SUBSCRIPTION {tag}_sub{i} ENABLE")).await;
        }
        let walsender_cpu = wait_markers(&clients, &src, started, &mut NoProcess).await;
        let secs = started.elapsed().as_secs_f64();
        self.check(scenario, &src_db, &target_dbs, Method::Native)
            .await;
        for (i, c) in clients.iter().enumerate() {
            sql(c, &format!("DROP SUBSCRIPTION {tag}_sub{i}")).await;
        }
        drop(clients);
        drop(src);
        self.drop_dbs(&src_db, &target_dbs);
        Drain {
            secs,
            walsender_cpu,
            pgrelay_cpu: 0.0,
        }
    }

    /// Checkpoints before a timed drain so neither method pays for the
    /// backlog's dirty buffers.
    async fn settle(&self, _src_db: &str) {
        self.source.execute_blocking("postgres", "CHECKPOINT");
        self.target.execute_blocking("postgres", "CHECKPOINT");
    }

    fn drop_dbs(&self, src_db: &str, target_dbs: &[String]) {
        self.source.execute_blocking(
            "postgres",
            &format!("DROP DATABASE \"{src_db}\" WITH (FORCE)"),
        );
        for t in target_dbs {
            self.target
                .execute_blocking("postgres", &format!("DROP DATABASE \"{t}\" WITH (FORCE)"));
        }
        self.source.execute_blocking("postgres", "CHECKPOINT");
        self.target.execute_blocking("postgres", "CHECKPOINT");
    }

    /// The memory scenario: one target stopped while > 1 GiB goes through.
    async fn run_memory(&self) {
        let tag = "mem";
        let src_db = format!("{tag}_src");
        let up_db = format!("{tag}_up");
        self.prepare(Scenario::Memory, &src_db, std::slice::from_ref(&up_db))
            .await;
        let mut down = Cluster::builder(17).start();
        down.create_database(&up_db);
        sql(&down.connect(&up_db).await, TABLE_DDL).await;
        let slot = format!("{tag}_slot");
        let config = self.pgrelay_config(
            &slot,
            &src_db,
            &[
                ("up".into(), self.target.superuser_url(&up_db)),
                ("down".into(), down.superuser_url(&up_db)),
            ],
        );
        let listen = free_port();
        let mut p = Pgrelay::start(&config, self.work.path(), "mem", Some(listen));
        self.wait_synced(std::slice::from_ref(&up_db), &slot, 2, &mut p)
            .await;
        // `down` too, before it goes away.
        {
            let c = down.connect(&up_db).await;
            loop {
                let ready = scalar(
                    &c,
                    &format!("SELECT count(*) FROM pgrelay.table_sync WHERE pipeline = '{slot}' AND state = 'ready'"),
                )
                .await;
                if ready == "2" {
                    break;
                }
                p.assert_alive();
                tokio::time::sleep(POLL).await;
            }
        }
        down.stop();
        let rows_per_txn = 50_000u64;
        let width = 1000;
        let rows = (self.sizes.memory_mb << 20) / (width as u64 + 40);
        let rows = rows.div_ceil(rows_per_txn) * rows_per_txn;
        eprintln!(
            "memory: target `down` stopped; writing {rows} rows of {width} bytes ({} transactions) while pgrelay runs",
            rows / rows_per_txn
        );
        let started = Instant::now();
        let pid = p.pid();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut rss, mut spilled, mut received) = (0u64, 0f64, 0f64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    rss = rss.max(proc_status_kb(pid, "VmRSS:").unwrap_or(0));
                    if let Some(m) = metrics(listen) {
                        spilled = spilled.max(metric_sum(&m, "pgrelay_spilled_bytes"));
                        received = received.max(metric_sum(&m, "pgrelay_received_bytes_total"));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                (rss, spilled, received)
            })
        };
        let src = self.source.connect(&src_db).await;
        sql(
            &src,
            &format!("CALL bench_rows(1, {rows}, {rows_per_txn}, {width})"),
        )
        .await;
        sql(&src, "INSERT INTO bench_marker VALUES (1)").await;
        let written = started.elapsed().as_secs_f64();
        let up = self.target.connect(&up_db).await;
        wait_markers(std::slice::from_ref(&up), &src, started, &mut p).await;
        let secs = started.elapsed().as_secs_f64();
        let hwm = proc_status_kb(pid, "VmHWM:").unwrap_or(0);
        let cpu = proc_cpu(pid).unwrap_or(0.0);
        // One more metrics sample after the drain.
        std::thread::sleep(Duration::from_millis(1200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (rss, spilled, received) = sampler.join().expect("sampler");
        p.stop();
        let mib = |b: f64| b / (1u64 << 20) as f64;
        let up_rows = scalar(&up, "SELECT count(*) FROM bench").await;
        assert_eq!(up_rows, rows.to_string(), "the up target lacks rows");
        println!(
            "\nmemory: {rows} rows of {width} bytes, two targets (one stopped), load average {}:\n  \
             written in {written:.1} s, up target caught up after {secs:.1} s; pgrelay CPU {cpu:.1} s\n  \
             pgoutput received {:.0} MiB, peak spilled (down target's backlog) {:.0} MiB\n  \
             pgrelay peak RSS: VmHWM {:.1} MiB (sampled VmRSS max {:.1} MiB); goal < 256 MiB: {}",
            load_average(),
            mib(received),
            mib(spilled),
            mib(hwm as f64),
            mib(rss as f64),
            if hwm < 256 << 20 && spilled > (1u64 << 30) as f64 * 0.9 {
                "met"
            } else if hwm < 256 << 20 {
                "RSS met (spill below 1 GiB: raise PGRELAY_BENCH_MEMORY_MB)"
            } else {
                "MISSED"
            }
        );
        sql(&src, &format!("SELECT pg_drop_replication_slot('{slot}')")).await;
        drop(src);
        drop(up);
        self.drop_dbs(&src_db, std::slice::from_ref(&up_db));
    }
}

/// With `PGRELAY_BENCH_PERF=DIR`, `perf record -g` of the drain's pgrelay
/// process into `DIR/<run>.data` (for profiling, not for the numbers:
/// perf itself costs CPU).
fn profile(pid: u32, tag: &str) -> Option<Child> {
    let dir = std::env::var("PGRELAY_BENCH_PERF").ok()?;
    Command::new("perf")
        .args(["record", "-g", "-F", "999", "-p", &pid.to_string(), "-o"])
        .arg(Path::new(&dir).join(format!("{tag}.data")))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

fn run(c: &mut Command) {
    let out = c.output().unwrap_or_else(|e| panic!("run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `GET /metrics` as (name with labels, value) pairs.
fn metrics(port: u16) -> Option<Vec<(String, f64)>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n")?.1;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

fn metric_sum(m: &[(String, f64)], name: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v)
        .sum()
}

/// A process whose liveness the drain loop checks.
trait Watched {
    fn assert_alive(&mut self);
}

struct NoProcess;

impl Watched for NoProcess {
    fn assert_alive(&mut self) {}
}

/// A running `pgrelay stream`.
struct Pgrelay {
    child: Child,
    log: PathBuf,
}

impl Pgrelay {
    fn start(config: &Path, dir: &Path, name: &str, listen: Option<u16>) -> Pgrelay {
        let log = dir.join(format!("{name}.log"));
        // `PGRELAY_BENCH_WRAP="heaptrack -o /tmp/ht"` runs pgrelay under a
        // tool (for profiling, not for the numbers).
        let wrap = std::env::var("PGRELAY_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(PGRELAY);
                c
            }
            None => Command::new(PGRELAY),
        };
        cmd.arg("stream").arg("--config").arg(config);
        if let Some(port) = listen {
            cmd.arg("--listen").arg(format!("127.0.0.1:{port}"));
        }
        let child = cmd
            .env("PGRELAY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start pgrelay stream");
        Pgrelay { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM and wait (pgrelay finishes its in-flight batch).
    fn stop(&mut self) {
        // SAFETY: kill with a pid we spawned and still own.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    assert!(
                        status.success(),
                        "pgrelay exited with {status}:\n{}",
                        self.log()
                    );
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = self.child.kill();
                    panic!("pgrelay did not stop on SIGTERM:\n{}", self.log());
                }
            }
        }
    }
}

impl Watched for Pgrelay {
    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("pgrelay exited with {status}:\n{}", self.log());
        }
    }
}

impl Drop for Pgrelay {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls every target until it holds the marker; returns the CPU seconds
/// of the walsenders serving this database's slots over the drain (each
/// walsender started with the drain, so its lifetime CPU is the drain's).
async fn wait_markers(
    targets: &[Client],
    src: &Client,
    started: Instant,
    p: &mut impl Watched,
) -> f64 {
    let mut cpu: std::collections::BTreeMap<u32, f64> = Default::default();
    let sample = |cpu: &mut std::collections::BTreeMap<u32, f64>, pids: Vec<u32>| {
        for pid in pids {
            if let Some(c) = proc_cpu(pid) {
                let e = cpu.entry(pid).or_insert(0.0);
                *e = e.max(c);
            }
        }
    };
    let walsenders = || async {
        sql(
            src,
            "SELECT active_pid FROM pg_replication_slots \
             WHERE database = current_database() AND active_pid IS NOT NULL",
        )
        .await
        .into_iter()
        .filter_map(|r| r[0].as_ref().and_then(|v| v.parse().ok()))
        .collect::<Vec<u32>>()
    };
    let mut done = vec![false; targets.len()];
    loop {
        sample(&mut cpu, walsenders().await);
        for (i, t) in targets.iter().enumerate() {
            if !done[i] {
                done[i] = scalar(t, "SELECT count(*) FROM bench_marker").await == "1";
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
        p.assert_alive();
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "targets never caught up"
        );
        tokio::time::sleep(POLL).await;
    }
    sample(&mut cpu, walsenders().await);
    cpu.values().sum()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("stream_vs_native: run with `cargo bench --bench stream_vs_native`");
        return;
    }
    let rounds = env_num("PGRELAY_BENCH_ROUNDS", 3) as usize;
    let sizes = Sizes {
        rows: env_num("PGRELAY_BENCH_ROWS", 1_000_000),
        txns: env_num("PGRELAY_BENCH_TXNS", 200_000),
        pgbench_scale: env_num("PGRELAY_BENCH_PGBENCH_SCALE", 10) as u32,
        pgbench_txns: env_num("PGRELAY_BENCH_PGBENCH_TXNS", 100_000),
        memory_mb: env_num("PGRELAY_BENCH_MEMORY_MB", 1200),
    };
    let scenarios: Vec<Scenario> = match std::env::var("PGRELAY_BENCH_SCENARIOS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|s| {
                *Scenario::ALL
                    .iter()
                    .find(|sc| sc.name() == s.trim())
                    .unwrap_or_else(|| {
                        panic!("unknown scenario {s:?}; known: bigtxn,small,pgbench,fanout,memory")
                    })
            })
            .collect(),
        _ => Scenario::ALL.to_vec(),
    };
    let native_streaming =
        std::env::var("PGRELAY_BENCH_NATIVE_STREAMING").unwrap_or_else(|_| "off".into());
    let settings = |b: pgrelay_testkit::ClusterBuilder| {
        b.setting("shared_buffers", "'512MB'")
            .setting("max_wal_size", "'16GB'")
            .setting("checkpoint_timeout", "'30min'")
            .setting("max_replication_slots", "40")
            .setting("max_wal_senders", "40")
    };
    // synchronous_commit=off only speeds up writing the backlogs; decoding
    // reads WAL the walwriter flushed within milliseconds anyway.
    let source = settings(Cluster::builder(15))
        .setting("synchronous_commit", "off")
        .start();
    let target = settings(Cluster::builder(17)).start();
    let bench = Bench {
        source,
        target,
        sizes,
        native_streaming,
        work: tempfile::tempdir().expect("temp dir"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let s = &bench.sizes;
    eprintln!(
        "PostgreSQL 15 -> 17, {rounds} rounds, load average {}; scenarios: {}",
        load_average(),
        scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut summary = Vec::new();
    for &scenario in &scenarios {
        if scenario == Scenario::Memory {
            rt.block_on(bench.run_memory());
            continue;
        }
        let (units, unit) = match scenario {
            Scenario::BigTxn => (s.rows, "rows"),
            Scenario::Small => (s.txns, "txn"),
            Scenario::Pgbench => (s.pgbench_txns, "txn"),
            Scenario::Fanout => (s.rows * 3, "rows"),
            Scenario::Memory => unreachable!(),
        };
        let mut results: Vec<(Method, Drain)> = Vec::new();
        for round in 0..rounds {
            let order = if round % 2 == 0 {
                [Method::Pgrelay, Method::Native]
            } else {
                [Method::Native, Method::Pgrelay]
            };
            for m in order {
                let tag = format!("{}_{}_{round}", scenario.name(), m.name());
                let d = rt.block_on(async {
                    match m {
                        Method::Pgrelay => bench.run_pgrelay(scenario, &tag).await,
                        Method::Native => bench.run_native(scenario, &tag).await,
                    }
                });
                eprintln!(
                    "{} round {round} {:8} {:7.2} s {:9.0} {unit}/s  walsender CPU {:6.2} s{}  (load {})",
                    scenario.name(),
                    m.name(),
                    d.secs,
                    units as f64 / d.secs,
                    d.walsender_cpu,
                    if m == Method::Pgrelay {
                        format!("  pgrelay CPU {:6.2} s", d.pgrelay_cpu)
                    } else {
                        String::new()
                    },
                    load_average()
                );
                results.push((m, d));
            }
        }
        let med = |m: Method, f: fn(&Drain) -> f64| {
            median(
                results
                    .iter()
                    .filter(|(rm, _)| *rm == m)
                    .map(|(_, d)| f(d))
                    .collect(),
            )
        };
        let (ours, theirs) = (
            med(Method::Pgrelay, |d| d.secs),
            med(Method::Native, |d| d.secs),
        );
        let (wo, wt) = (
            med(Method::Pgrelay, |d| d.walsender_cpu),
            med(Method::Native, |d| d.walsender_cpu),
        );
        let line = format!(
            "{:8} {units:>9} {unit:4} pgrelay {ours:7.2} s ({:9.0} {unit}/s)  native {theirs:7.2} s ({:9.0} {unit}/s)  \
             time pgrelay/native {:.2} (speed-up {:.2}x)  walsender CPU {wo:.2} s vs {wt:.2} s (ratio {:.2})  pgrelay CPU {:.2} s",
            scenario.name(),
            units as f64 / ours,
            units as f64 / theirs,
            ours / theirs,
            theirs / ours,
            if wt > 0.0 { wo / wt } else { f64::NAN },
            med(Method::Pgrelay, |d| d.pgrelay_cpu),
        );
        println!("{line}");
        summary.push(line);
    }
    println!(
        "\nPostgreSQL 15 -> 17, {rounds} rounds, native streaming = {}, load average now {}; medians:",
        bench.native_streaming,
        load_average()
    );
    for l in summary {
        println!("  {l}");
    }
}
