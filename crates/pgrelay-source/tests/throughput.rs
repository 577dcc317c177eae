//! Draining a backlog: pgrelay-source against pg_recvlogical on the same
//! WAL (two slots created at the same point), PostgreSQL 17. Ignored by
//! default because it is a measurement, not a check; run it with
//! `cargo test --release -p pgrelay-source --test throughput -- --ignored --nocapture`.
//! It asserts only that we are not more than 25% slower.

use std::time::{Duration, Instant};

use pgrelay_source::{
    Config, CreateSlotOptions, FeedbackSettings, Lsn, PgOutputOptions, ReplicationClient,
};
use pgrelay_testkit::{client_tool, simple_rows, unique_name, Cluster, SUPERUSER};

const MAJOR: u32 = 17;

/// CPU time of this process so far (user + system), from /proc.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run with --release --ignored --nocapture"]
async fn drain_backlog_vs_pg_recvlogical() {
    let pg = Cluster::start(MAJOR);
    let sql = pg.connect("postgres").await;
    let publication = unique_name("pub");
    sql.batch_execute(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION {publication} FOR TABLE t"
    ))
    .await
    .expect("setup");
    let home = tempfile::tempdir().expect("home");
    let home_str = home.path().display().to_string();
    let config = Config::parse_with_env(
        &format!(
            "host=127.0.0.1 port={} user={SUPERUSER} dbname=postgres sslmode=disable",
            pg.port()
        ),
        |k| (k == "HOME").then(|| home_str.clone()),
    )
    .expect("config");
    // Alternate the two clients over four slots, so neither always gets
    // the cold (or warm) caches.
    let slots: Vec<String> = (0..4).map(|i| unique_name(&format!("s{i}"))).collect();
    let mut c = ReplicationClient::connect(&config).await.expect("connect");
    for slot in &slots {
        c.create_replication_slot(slot, &CreateSlotOptions::default())
            .await
            .expect("slot");
    }
    c.close().await.expect("close");
    let rows = 1_000_000;
    for chunk in 0..10 {
        let from = chunk * rows / 10 + 1;
        let to = (chunk + 1) * rows / 10;
        sql.batch_execute(&format!(
            "INSERT INTO t SELECT g, repeat('x', 40) FROM generate_series({from}, {to}) g"
        ))
        .await
        .expect("backlog");
    }
    let end: Lsn = simple_rows(&sql, "SELECT pg_current_wal_lsn()::text")
        .await
        .expect("lsn")[0][0]
        .as_deref()
        .expect("lsn")
        .parse()
        .expect("parse");

    let ours = |slot: String| {
        let config = config.clone();
        let publication = publication.clone();
        async move {
            let options = PgOutputOptions::new([publication.as_str()]);
            let t = Instant::now();
            let cpu = cpu_time();
            let c = ReplicationClient::connect(&config).await.expect("connect");
            let mut stream = c
                .start_logical_replication(
                    &slot,
                    Lsn::INVALID,
                    &options,
                    FeedbackSettings::default(),
                )
                .await
                .expect("start");
            let (mut messages, mut bytes, mut commits) = (0u64, 0u64, 0);
            while commits < 10 {
                let msg = stream.next().await.expect("next").expect("ended");
                messages += 1;
                bytes += msg.data.len() as u64;
                if msg.data[0] == b'C' {
                    commits += 1;
                    stream.set_flushed(msg.wal_start);
                }
            }
            let elapsed = t.elapsed();
            eprintln!(
                "pgrelay-source: {elapsed:?} elapsed, {:?} CPU",
                cpu_time() - cpu
            );
            stream.shutdown().await.expect("shutdown");
            (elapsed, messages, bytes)
        }
    };
    let theirs = |slot: &str| {
        let recvlogical = client_tool("pg_recvlogical").expect("pg_recvlogical");
        let t = Instant::now();
        let out = std::process::Command::new(recvlogical)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port().to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
            ])
            .args(["--slot", slot, "--start", "-f", "/dev/null", "--no-loop"])
            .args(["-E", &end.to_string()])
            .args([
                "-o",
                &format!("proto_version={}", pgrelay_source::max_proto_version(MAJOR)),
            ])
            .args(["-o", &format!("publication_names={publication}")])
            .output()
            .expect("run pg_recvlogical");
        assert!(
            out.status.success(),
            "pg_recvlogical: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let (ours1, messages, bytes) = ours(slots[0].clone()).await;
    let theirs1 = theirs(&slots[1]);
    let theirs2 = theirs(&slots[2]);
    let (ours2, _, _) = ours(slots[3].clone()).await;
    let ours_time = ours1.min(ours2);
    let theirs_time = theirs1.min(theirs2);
    eprintln!(
        "backlog of {rows} rows, {messages} messages, {} MiB: pgrelay-source {ours1:?} / {ours2:?} \
         ({:.0} msg/s), pg_recvlogical {theirs1:?} / {theirs2:?}",
        bytes >> 20,
        messages as f64 / ours_time.as_secs_f64()
    );
    assert!(
        ours_time <= theirs_time.mul_f64(1.25) + Duration::from_millis(200),
        "pgrelay-source {ours_time:?} vs pg_recvlogical {theirs_time:?}"
    );
}
