//! Benchmark: the post-data build (primary keys, indexes, foreign keys)
//! with one connection against `--parallel` connections, on a real
//! PostgreSQL 17. Four tables of `PGRELAY_BENCH_ROWS` rows (default
//! 500,000), each with a primary key, two indexes and a foreign key; both
//! databases must end with every object. `PGRELAY_BENCH_ROUNDS` rounds
//! (default 3), medians and the ratio reported.
//!
//! Run: `cargo bench -p pgrelay-schema --bench post_data`.

use std::time::{Duration, Instant};

use pgrelay_schema::{apply_post_data, apply_pre_data, dump_schema, SchemaOptions};
use pgrelay_testkit::bench::{env_num, median};
use pgrelay_testkit::Cluster;

fn load(table: usize, rows: u64) -> String {
    format!(
        "INSERT INTO public.t{table} SELECT g, g % 1000, md5(g::text), 1 + g % 1000 \
         FROM generate_series(1, {rows}) g"
    )
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("post_data: run with `cargo bench -p pgrelay-schema --bench post_data`");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run());
}

async fn run() {
    let rows = env_num("PGRELAY_BENCH_ROWS", 500_000);
    let rounds = env_num("PGRELAY_BENCH_ROUNDS", 3) as usize;
    let cluster = Cluster::start(17);
    cluster.create_database("src");
    let mut ddl = String::from("CREATE TABLE public.parent (id int PRIMARY KEY);");
    for t in 1..=4 {
        ddl.push_str(&format!(
            "CREATE TABLE public.t{t} (id int PRIMARY KEY, a int, b text, p int REFERENCES public.parent (id));
             CREATE INDEX t{t}_a ON public.t{t} (a); CREATE INDEX t{t}_b ON public.t{t} (b);"
        ));
    }
    cluster.execute_blocking("src", &ddl);
    let src = cluster.connect("src").await;
    let config = pgrelay_source::Config::parse(&cluster.superuser_url("src")).expect("url");
    let dump = dump_schema(&config, &src, &SchemaOptions::default())
        .await
        .expect("dump");
    let mut times: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        // Alternate which goes first: the machine is shared and noisy.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let parallel = [1, 4][which];
            let db = format!("p{parallel}_{round}");
            times[which].push(build(&cluster, &dump, &db, parallel, rows).await);
            cluster.execute_blocking("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
        }
    }
    let (one, four) = (median(times[0].clone()), median(times[1].clone()));
    println!(
        "post-data, 4 tables x {rows} rows, {rounds} rounds: median 1 connection {:.2} s, \
         4 connections {:.2} s, ratio {:.2}",
        one.as_secs_f64(),
        four.as_secs_f64(),
        one.as_secs_f64() / four.as_secs_f64()
    );
}

async fn build(
    cluster: &Cluster,
    dump: &pgrelay_schema::SchemaDump,
    db: &str,
    parallel: usize,
    rows: u64,
) -> Duration {
    cluster.create_database(db);
    // The connection closes before the caller drops the database.
    {
        let dst = cluster.connect(db).await;
        apply_pre_data(&dst, dump).await.expect("pre-data");
        cluster.execute_blocking(
            db,
            "INSERT INTO public.parent SELECT generate_series(1, 1000)",
        );
        for t in 1..=4 {
            cluster.execute_blocking(db, &load(t, rows));
        }
        cluster.execute_blocking(db, "VACUUM ANALYZE");
        let target = pgrelay_source::Config::parse(&cluster.superuser_url(db)).expect("url");
        let started = Instant::now();
        let report = apply_post_data(&target, dump, parallel)
            .await
            .expect("post-data");
        let elapsed = started.elapsed();
        eprintln!(
            "post-data with {parallel} connection(s): {:.2} s",
            elapsed.as_secs_f64()
        );
        assert_eq!(report.indexes, 13);
        assert_eq!(report.foreign_keys, 4);
        let n: i64 = dst
            .query_one(
                "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
                 WHERE c.relnamespace = 'public'::regnamespace AND i.indisvalid",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 13);
        elapsed
    }
}
