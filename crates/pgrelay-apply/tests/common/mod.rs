//! Helpers for the apply tests: synthetic source transactions whose
//! `RelationInfo` is read from a real server's catalog, an `Applier` on a
//! real target, and table contents as text.

#![allow(dead_code)]

use std::sync::Arc;

use bytes::Bytes;
use pgrelay_apply::{Applier, ApplyOptions, SessionRole};
use pgrelay_testkit::Cluster;
use pgrelay_types::{
    ByteStr, Change, Column, Lsn, Oid, OldTuple, PgTimestamp, RelationInfo, ReplicaIdentity,
    TransactionInfo, TransactionKind, Tuple, Value, Xid,
};
use tokio_postgres::Client;

/// `RelationInfo` of `schema.name` as pgoutput would describe it: live,
/// non-generated columns in attribute order, key flags from the replica
/// identity (all columns for FULL).
pub async fn relation(client: &Client, schema: &str, name: &str) -> Arc<RelationInfo> {
    let qualified = format!("\"{schema}\".\"{name}\"");
    let row = client
        .query_one(
            "SELECT c.oid, c.relreplident::text FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&qualified],
        )
        .await
        .expect("table exists");
    let oid: u32 = row.get(0);
    let ident: String = row.get(1);
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid, a.atttypmod, \
               CASE c.relreplident \
                 WHEN 'f' THEN true \
                 WHEN 'd' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                                       AND i.indisprimary AND a.attnum = ANY (i.indkey)) \
                 WHEN 'i' THEN EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid \
                                       AND i.indisreplident AND a.attnum = ANY (i.indkey)) \
                 ELSE false END \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               AND a.attgenerated = '' ORDER BY a.attnum",
            &[&oid],
        )
        .await
        .expect("columns");
    Arc::new(RelationInfo {
        oid: Oid(oid),
        schema: ByteStr::from(schema.to_string()),
        name: ByteStr::from(name.to_string()),
        replica_identity: ReplicaIdentity::from_byte(ident.as_bytes()[0]).expect("known"),
        columns: rows
            .iter()
            .map(|r| Column {
                name: ByteStr::from(r.get::<_, String>(0)),
                type_oid: Oid(r.get(1)),
                type_modifier: r.get(2),
                is_key: r.get(3),
            })
            .collect(),
    })
}

/// A text value.
pub fn t(s: &str) -> Value {
    Value::Text(Bytes::from(s.to_string()))
}

pub fn row(values: Vec<Value>) -> Tuple {
    Tuple(values)
}

pub fn insert(rel: &Arc<RelationInfo>, values: Vec<Value>) -> Change {
    Change::Insert {
        relation: rel.clone(),
        new: Tuple(values),
    }
}

pub fn update(rel: &Arc<RelationInfo>, old: Option<OldTuple>, new: Vec<Value>) -> Change {
    Change::Update {
        relation: rel.clone(),
        old,
        new: Tuple(new),
    }
}

pub fn delete(rel: &Arc<RelationInfo>, old: OldTuple) -> Change {
    Change::Delete {
        relation: rel.clone(),
        old,
    }
}

/// Source transaction number `n`: commit LSN 0/n*0x100, end LSN just past it.
pub fn info(n: u64) -> TransactionInfo {
    TransactionInfo {
        xid: Xid(n as u32 + 1000),
        commit_lsn: Lsn(n * 0x100),
        end_lsn: Lsn(n * 0x100 + 0x28),
        commit_ts: PgTimestamp(n as i64 * 1_000_000),
        origin: None,
        kind: TransactionKind::Plain,
    }
}

pub fn options(pipeline: &str) -> ApplyOptions {
    ApplyOptions {
        pipeline: pipeline.to_string(),
        target: "test".to_string(),
        session_replication_role: SessionRole::Replica,
        ..ApplyOptions::default()
    }
}

pub async fn applier(cluster: &Cluster, db: &str, options: ApplyOptions) -> Applier {
    let client = cluster.connect(db).await;
    Applier::new(client, options).await.expect("applier")
}

/// Applies source transaction `n` with `changes` (begin, changes, commit).
pub async fn apply(a: &mut Applier, n: u64, changes: Vec<Change>) {
    let i = info(n);
    assert!(a.begin(&i).await.expect("begin"), "txn {n} not skipped");
    a.changes(&changes).await.expect("changes");
    a.commit(&i).await.expect("commit");
}

/// Rows of `sql` as text, NULL as "NULL".
pub async fn rows(client: &Client, sql: &str) -> Vec<Vec<String>> {
    pgrelay_testkit::simple_rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", pgrelay_testkit::describe(&e)))
        .into_iter()
        .map(|r| {
            r.into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".to_string()))
                .collect()
        })
        .collect()
}

pub async fn scalar(client: &Client, sql: &str) -> String {
    rows(client, sql).await.remove(0).remove(0)
}
