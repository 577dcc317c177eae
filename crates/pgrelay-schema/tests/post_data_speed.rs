//! Measures the post-data build with one connection against four (run by
//! hand: `cargo test -p pgrelay-schema --test post_data_speed -- --ignored
//! --nocapture`). Four tables of 500k rows, each with a primary key, two
//! indexes and a foreign key; both targets must end with every object.

use std::time::Instant;

use pgrelay_schema::{apply_post_data, apply_pre_data, dump_schema, SchemaOptions};
use pgrelay_testkit::Cluster;

const ROWS: u32 = 500_000;

fn load(table: usize) -> String {
    format!(
        "INSERT INTO public.t{table} SELECT g, g % 1000, md5(g::text), 1 + g % 1000 \
         FROM generate_series(1, {ROWS}) g"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement; run by hand"]
async fn post_data_one_connection_versus_four() {
    let cluster = Cluster::start(17);
    for db in ["src", "p1", "p4"] {
        cluster.create_database(db);
    }
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
    for (db, parallel) in [("p1", 1), ("p4", 4)] {
        let dst = cluster.connect(db).await;
        apply_pre_data(&dst, &dump).await.expect("pre-data");
        cluster.execute_blocking(
            db,
            "INSERT INTO public.parent SELECT generate_series(1, 1000)",
        );
        for t in 1..=4 {
            cluster.execute_blocking(db, &load(t));
        }
        cluster.execute_blocking(db, "VACUUM ANALYZE");
        let target = pgrelay_source::Config::parse(&cluster.superuser_url(db)).expect("url");
        let started = Instant::now();
        let report = apply_post_data(&target, &dump, parallel)
            .await
            .expect("post-data");
        eprintln!(
            "post-data with {parallel} connection(s): {:.2} s ({report:?})",
            started.elapsed().as_secs_f64()
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
    }
}
