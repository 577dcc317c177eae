//! Pipelined statement execution on one connection: many statements are sent
//! before the first result is read, so applying N changes costs about one
//! round trip instead of N.
//!
//! Invariants: statements reach the server in exactly the order they were
//! pushed. tokio-postgres sends a request on the first poll of its future,
//! so `push` polls each future once, in push order, before keeping it.
//! Results are consumed oldest first, which is also the order the
//! connection delivers them, so no response waits behind an unpolled one
//! and the first error reported is the one that aborted the transaction
//! (every later statement fails with "current transaction is aborted").
//! At most `window` statements (and about `max_bytes` of parameters) are
//! in flight; pushing more waits for the oldest. Callers drain the pipeline before any request they await
//! directly (prepare, COPY, catalog queries).
//!
//! PostgreSQL reference: "Pipeline Mode" (libpq-pipeline-mode) describes the
//! same technique; "Extended Query" (protocol-flow) for why each statement's
//! Sync keeps errors contained to one statement inside the open transaction.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use pgrelay_types::Lsn;

use crate::error::{ApplyError, ErrorContext};

pub(crate) type PgFuture =
    Pin<Box<dyn Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'static>>;

/// What a statement was, for error messages and "no row matched" warnings.
#[derive(Clone, Debug)]
pub(crate) struct Job {
    pub op: Op,
    pub table: Option<Arc<str>>,
    pub commit_lsn: Option<Lsn>,
    /// Parameter bytes the statement keeps alive until its result is read.
    pub bytes: usize,
    /// Rows an update or delete should touch (one, or a set-based
    /// update's row count); fewer is logged as missing rows.
    pub rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Begin,
    Insert,
    Update,
    Delete,
    Truncate,
    Progress,
    Commit,
    Savepoint,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Begin => "BEGIN",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Progress => "progress update",
            Op::Commit => "COMMIT",
            Op::Savepoint => "SAVEPOINT",
        }
    }
}

impl Job {
    pub fn context(&self) -> ErrorContext {
        ErrorContext {
            table: self.table.as_deref().map(str::to_string),
            commit_lsn: self.commit_lsn,
            operation: self.op.name().to_string(),
        }
    }
}

pub(crate) struct Pipeline {
    queue: VecDeque<(PgFuture, Job)>,
    window: usize,
    max_bytes: usize,
    bytes: usize,
    target: String,
}

impl Pipeline {
    pub fn new(window: usize, max_bytes: usize, target: String) -> Self {
        Pipeline {
            queue: VecDeque::new(),
            window: window.max(1),
            max_bytes,
            bytes: 0,
            target,
        }
    }

    /// Sends `fut`'s request now and keeps it until its result is read.
    pub async fn push(&mut self, mut fut: PgFuture, job: Job) -> Result<(), ApplyError> {
        let first = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
        match first {
            Poll::Ready(r) => self.finish(r, &job)?,
            Poll::Pending => {
                self.bytes += job.bytes;
                self.queue.push_back((fut, job));
            }
        }
        while self.queue.len() > self.window
            || (self.bytes > self.max_bytes && self.queue.len() > 1)
        {
            self.pop().await?;
        }
        Ok(())
    }

    async fn pop(&mut self) -> Result<(), ApplyError> {
        if let Some((fut, job)) = self.queue.pop_front() {
            self.bytes -= job.bytes;
            let r = fut.await;
            self.finish(r, &job)?;
        }
        Ok(())
    }

    /// Waits for every statement in flight.
    pub async fn drain(&mut self) -> Result<(), ApplyError> {
        while !self.queue.is_empty() {
            self.pop().await?;
        }
        Ok(())
    }

    /// Forgets everything in flight (after an error: the transaction is
    /// aborted anyway and the connection discards unread results).
    pub fn clear(&mut self) {
        self.queue.clear();
        self.bytes = 0;
    }

    fn finish(&self, r: Result<u64, tokio_postgres::Error>, job: &Job) -> Result<(), ApplyError> {
        match r {
            Ok(n) if n < job.rows && matches!(job.op, Op::Update | Op::Delete) => {
                // Native logical replication logs and skips a change whose
                // row is missing on the subscriber; do the same, visibly.
                let op = job.op.name();
                let missing = job.rows - n;
                tracing::warn!(
                    target_db = %self.target,
                    table = job.table.as_deref().unwrap_or("?"),
                    lsn = %job.commit_lsn.unwrap_or_default(),
                    op,
                    missing,
                    "replicated {op} found no matching row on the target; skipped"
                );
                metrics::counter!(
                    "pgrelay_apply_missing_rows_total",
                    "target" => self.target.clone(),
                    "op" => op
                )
                .increment(missing);
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(ApplyError::from_pg(&e, job.context())),
        }
    }
}
