//! Group commit for SQLite intake writes.
//!
//! SQLite has one writer at a time. When every request opens its own write transaction, the
//! requests race for the file lock and the losers sleep in SQLite's busy handler (1, 2, 5, 10,
//! 20... ms), and each request pays a whole commit. Here one task owns intake writing: it takes
//! every job queued at that moment (up to a limit), applies them in order in one transaction (with
//! the same few set-based statements as one batch), and answers each job with its own outcomes.
//! Under load many requests share one commit; alone, a request is written at once.
//!
//! If a grouped transaction fails, each of its jobs is retried in a transaction of its own, so
//! one bad job never fails its neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::sessions::{SELECT_CURRENT, apply_job};
use super::{StoreError, WriteJob, WriteOutcome};

/// Most jobs in one transaction.
const MAX_JOBS_PER_GROUP: usize = 128;
/// Stop adding jobs to a group past this many records.
const MAX_RECORDS_PER_GROUP: usize = 5_000;

type Reply = oneshot::Sender<Result<Vec<WriteOutcome>, StoreError>>;

/// Handle to the writer task; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct GroupWriter {
    tx: mpsc::Sender<(WriteJob, Reply)>,
    pool: SqlitePool,
}

impl GroupWriter {
    /// Starts the writer task on the current runtime.
    /// `pool` is the writer's own (one connection); when `reset_wanted` is set, the writer
    /// restarts the WAL before its next transaction (see `checkpoint_loop`).
    pub(crate) fn spawn(pool: SqlitePool, reset_wanted: Arc<AtomicBool>) -> GroupWriter {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(pool.clone(), rx, reset_wanted));
        GroupWriter { tx, pool }
    }

    /// Closes the writer's connection (jobs queued later fail).
    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Queues a job and waits for its outcomes.
    pub(crate) async fn submit(&self, job: WriteJob) -> Result<Vec<WriteOutcome>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((job, reply)).await.map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        answer.await.map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }
}

async fn apply_group(pool: &SqlitePool, jobs: &[&WriteJob]) -> Result<Vec<Vec<WriteOutcome>>, StoreError> {
    // IMMEDIATE: the write lock before the sessions' current versions are read (see `apply_job`).
    super::sqlite_write(pool, async |tx| Ok(apply_job!(tx, jobs, SELECT_CURRENT))).await
}

/// Copies the rest of the WAL into the database and restarts the WAL from its beginning (the
/// file keeps its size and is overwritten, no truncation). Only this connection writes, so
/// nothing waits for a writer; readers still on old frames make it report busy, and the
/// checkpoint loop asks again.
async fn restart_wal(pool: &SqlitePool) {
    let started = std::time::Instant::now();
    match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)").fetch_one(pool).await {
        Ok((busy, log_frames, _)) => {
            tracing::debug!(busy = busy != 0, log_frames, ms = started.elapsed().as_secs_f64() * 1e3, "WAL restart");
        }
        Err(e) => tracing::warn!(error = %e, "WAL restart failed"),
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::Receiver<(WriteJob, Reply)>, reset_wanted: Arc<AtomicBool>) {
    while let Some(first) = rx.recv().await {
        if reset_wanted.swap(false, Ordering::Relaxed) {
            restart_wal(&pool).await;
        }
        let mut records = first.0.records.len();
        let mut group = vec![first];
        while group.len() < MAX_JOBS_PER_GROUP && records < MAX_RECORDS_PER_GROUP {
            match rx.try_recv() {
                Ok(job) => {
                    records += job.0.records.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let jobs: Vec<&WriteJob> = group.iter().map(|(j, _)| j).collect();
        let started = std::time::Instant::now();
        let result = apply_group(&pool, &jobs).await;
        tracing::debug!(jobs = jobs.len(), records, ms = started.elapsed().as_secs_f64() * 1e3, ok = result.is_ok(), "group written");
        match result {
            Ok(results) => {
                for ((_, reply), outcomes) in group.into_iter().zip(results) {
                    let _ = reply.send(Ok(outcomes));
                }
            }
            Err(e) if group.len() == 1 => {
                if let Some((_, reply)) = group.pop() {
                    let _ = reply.send(Err(e));
                }
            }
            Err(_) => {
                for (job, reply) in group {
                    let result = apply_group(&pool, &[&job]).await.map(|mut r| r.pop().unwrap_or_default());
                    let _ = reply.send(result);
                }
            }
        }
    }
}
