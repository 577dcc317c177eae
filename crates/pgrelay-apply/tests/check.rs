//! The schema compatibility check against real catalogs: every problem is
//! reported, and running the suggested SQL fixes makes them go away.

use pgrelay_apply::check::{compare, describe_tables};
use pgrelay_testkit::{per_major, Cluster};

per_major!(reports_problems_and_fixes_work, |major| async move {
    let cluster = Cluster::start(major);
    cluster.create_database("src");
    cluster.execute_blocking(
        "src",
        r#"CREATE TYPE mood AS ENUM ('a', 'b');
           CREATE TABLE public.a (id int PRIMARY KEY, v text, m mood,
                                  g int GENERATED ALWAYS AS (id * 2) STORED);
           CREATE TABLE public.b (x int, y varchar(20));
           CREATE TABLE public.c (id int PRIMARY KEY);
           CREATE TABLE public.d (x int);
           ALTER TABLE public.d REPLICA IDENTITY FULL;
           CREATE TABLE public.e (x int NOT NULL);
           CREATE UNIQUE INDEX e_x ON public.e (x);
           ALTER TABLE public.e REPLICA IDENTITY USING INDEX e_x;
           CREATE TABLE public."Weird Name" (id int PRIMARY KEY, "Col" numeric(10,2));"#,
    );
    cluster.execute_blocking(
        "postgres",
        r#"CREATE TYPE mood AS ENUM ('a', 'b');
           CREATE TABLE public.a (id bigint PRIMARY KEY, m mood, g int);
           CREATE TABLE public.b (x int, y varchar(20));
           CREATE TABLE public.d (x int);
           CREATE TABLE public.e (x int);
           CREATE TABLE public."Weird Name" (id int PRIMARY KEY);"#,
    );
    let src = cluster.connect("src").await;
    let tgt = cluster.connect("postgres").await;
    let names: Vec<(String, String)> = ["a", "b", "c", "d", "e", "Weird Name"]
        .iter()
        .map(|n| ("public".to_string(), n.to_string()))
        .collect();
    let source: Vec<_> = describe_tables(&src, &names)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.expect("every source table exists"))
        .collect();
    assert_eq!(source[0].columns.len(), 4);
    assert!(source[0].columns[3].generated);
    assert_eq!(source[0].columns[2].type_name, "mood");
    assert_eq!(source[4].replica_identity, 'i');
    assert!(source[4].identity_index_ok);
    assert!(!source[5].columns[1].not_null && source[5].columns[0].not_null);

    let target = describe_tables(&tgt, &names).await.unwrap();
    assert!(target[2].is_none());
    let problems: Vec<String> = compare(&source, &target)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        problems,
        vec![
            "public.a: column id is integer on the source but bigint on the target; fix: on the \
             target: ALTER TABLE public.a ALTER COLUMN id TYPE integer;",
            "public.a: column v (text) does not exist on the target; fix: on the target: ALTER \
             TABLE public.a ADD COLUMN v text;",
            "public.b: no primary key and REPLICA IDENTITY DEFAULT on the source: its UPDATEs \
             and DELETEs cannot be replicated; fix: on the source: ALTER TABLE public.b ADD \
             PRIMARY KEY (...); or ALTER TABLE public.b REPLICA IDENTITY FULL;",
            "public.c: table does not exist on the target; fix: create it on the target with \
             the source's definition, e.g. pg_dump --schema-only --table=public.c SOURCE_URL | \
             psql TARGET_URL",
            "public.\"Weird Name\": column \"Col\" (numeric(10,2)) does not exist on the target; \
             fix: on the target: ALTER TABLE public.\"Weird Name\" ADD COLUMN \"Col\" \
             numeric(10,2);",
        ]
    );

    // The suggested SQL is exact: run it and the problems are gone.
    tgt.batch_execute(
        "ALTER TABLE public.a ALTER COLUMN id TYPE integer;
         ALTER TABLE public.a ADD COLUMN v text;
         ALTER TABLE public.\"Weird Name\" ADD COLUMN \"Col\" numeric(10,2);
         CREATE TABLE public.c (id int PRIMARY KEY);",
    )
    .await
    .unwrap();
    src.batch_execute("ALTER TABLE public.b REPLICA IDENTITY FULL;")
        .await
        .unwrap();
    // An index-based identity whose index is dropped is no identity.
    src.batch_execute("DROP INDEX public.e_x").await.unwrap();
    let source: Vec<_> = describe_tables(&src, &names)
        .await
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect();
    let target = describe_tables(&tgt, &names).await.unwrap();
    let problems: Vec<String> = compare(&source, &target)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 1, "{problems:#?}");
    assert!(
        problems[0].starts_with("public.e: REPLICA IDENTITY USING INDEX on the source, but"),
        "{problems:#?}"
    );
});
