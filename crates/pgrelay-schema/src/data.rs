//! What logical replication does not carry: large objects and sequence
//! values.
//!
//! Large objects are recreated with the same OIDs (columns of type `oid`
//! that point at them stay valid), their bytes copied in 1 MiB chunks with
//! `lo_get`/`lo_put` (no object is held in memory whole), and their owner
//! set when that role exists on the target. The source side reads in one
//! REPEATABLE READ transaction; each object is written in its own target
//! transaction, replacing an object of the same OID left by an earlier run.
//! Sequences get the source's `last_value`/`is_called` via `setval`, so the
//! target's next `nextval` continues exactly where the source stopped (done
//! at switchover, once writes on the source are fenced).
//! PostgreSQL docs: "Large Objects" (lo-funcs), "Sequence Manipulation
//! Functions" (functions-sequence).

use tokio_postgres::Client;

use crate::split::qualified;
use crate::SchemaError;

const CHUNK: i32 = 1 << 20;

/// Copies every large object of the source database to the target; returns
/// how many. Opens and commits its own transactions on both clients, so
/// neither may be inside a transaction of the caller's.
pub async fn copy_large_objects(source: &Client, target: &Client) -> Result<u64, SchemaError> {
    source
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(SchemaError::query(
            "begin the large-object read transaction",
        ))?;
    let result = copy_in_tx(source, target).await;
    let _ = source.batch_execute("COMMIT").await;
    result
}

async fn copy_in_tx(source: &Client, target: &Client) -> Result<u64, SchemaError> {
    let objects = source
        .query(
            "SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner)::text \
             FROM pg_catalog.pg_largeobject_metadata m ORDER BY m.oid",
            &[],
        )
        .await
        .map_err(SchemaError::query(
            "list large objects (needs SELECT on pg_largeobject_metadata)",
        ))?;
    let mut copied = 0u64;
    for row in &objects {
        let oid: u32 = row.get(0);
        let owner: String = row.get(1);
        let ctx = |what: &str| format!("large object {oid}: {what}");
        target
            .batch_execute("BEGIN")
            .await
            .map_err(SchemaError::query(ctx("begin")))?;
        let result = async {
            target
                .execute(
                    "SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata WHERE oid = $1",
                    &[&oid],
                )
                .await
                .map_err(SchemaError::query(ctx("replace an earlier copy")))?;
            target
                .execute("SELECT pg_catalog.lo_create($1)", &[&oid])
                .await
                .map_err(SchemaError::query(ctx("create on the target")))?;
            let mut offset: i64 = 0;
            loop {
                let chunk: Vec<u8> = source
                    .query_one("SELECT pg_catalog.lo_get($1, $2, $3)", &[&oid, &offset, &CHUNK])
                    .await
                    .map_err(SchemaError::query(ctx("read on the source")))?
                    .get(0);
                if chunk.is_empty() {
                    break;
                }
                target
                    .execute("SELECT pg_catalog.lo_put($1, $2, $3)", &[&oid, &offset, &chunk])
                    .await
                    .map_err(SchemaError::query(ctx("write on the target")))?;
                offset += chunk.len() as i64;
                if chunk.len() < CHUNK as usize {
                    break;
                }
            }
            let owner_exists = target
                .query_opt("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", &[&owner])
                .await
                .map_err(SchemaError::query(ctx("look up the owner")))?
                .is_some();
            if owner_exists {
                target
                    .batch_execute(&format!(
                        "ALTER LARGE OBJECT {oid} OWNER TO {}",
                        crate::split::quote_ident(&owner)
                    ))
                    .await
                    .map_err(SchemaError::query(ctx("set the owner")))?;
            } else {
                tracing::warn!(oid, owner = %owner, "large object owner does not exist on the target (copy roles first); left owned by the applying role");
            }
            Ok::<(), SchemaError>(())
        }
        .await;
        match result {
            Ok(()) => target
                .batch_execute("COMMIT")
                .await
                .map_err(SchemaError::query(ctx("commit")))?,
            Err(e) => {
                let _ = target.batch_execute("ROLLBACK").await;
                return Err(e);
            }
        }
        copied += 1;
    }
    tracing::info!(large_objects = copied, "large objects copied");
    Ok(copied)
}

/// Sequences read or set per round trip: switchover waits on this with
/// writes fenced, so it must not cost two round trips per sequence.
const SEQUENCE_BATCH: usize = 500;

/// Sets each target sequence to the source's `last_value`/`is_called`;
/// returns how many were set. One read and one write round trip per 500
/// sequences.
pub async fn sync_sequences(
    source: &Client,
    target: &Client,
    seqs: &[(String, String)],
) -> Result<usize, SchemaError> {
    let mut done = 0;
    for batch in seqs.chunks(SEQUENCE_BATCH) {
        let select = batch
            .iter()
            .enumerate()
            .map(|(i, (schema, name))| {
                format!(
                    "SELECT {i}::int4, last_value, is_called FROM {}",
                    qualified(schema, name)
                )
            })
            .collect::<Vec<_>>()
            .join(" UNION ALL ");
        let rows = source
            .query(&select, &[])
            .await
            .map_err(SchemaError::query(
                "read sequences on the source (needs SELECT on each)",
            ))?;
        let mut names = Vec::with_capacity(rows.len());
        let mut values = Vec::with_capacity(rows.len());
        let mut called = Vec::with_capacity(rows.len());
        for r in &rows {
            let i: i32 = r.get(0);
            let (schema, name) = &batch[i as usize];
            names.push(qualified(schema, name));
            values.push(r.get::<_, i64>(1));
            called.push(r.get::<_, bool>(2));
        }
        target
            .execute(
                "SELECT pg_catalog.setval(u.s::pg_catalog.regclass, u.v, u.c) \
                 FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::int8[]), \
                 pg_catalog.unnest($3::bool[])) AS u(s, v, c)",
                &[&names, &values, &called],
            )
            .await
            .map_err(SchemaError::query(format!(
                "set {} sequences on the target (do they all exist there?)",
                names.len()
            )))?;
        done += names.len();
    }
    Ok(done)
}
