//! Stage 4: the only module with SQL.
//!
//! One [`Store`] over either backend: SQLite (embedded default, a file) or PostgreSQL
//! (production, several instances). The SQL is written once in the portable subset both accept
//! (`$n` parameters, `ON CONFLICT`, row-value comparison) and compiled for each backend by the
//! `with_db!` macro; where the dialects differ (row locks) the code says so. sqlx's
//! compile-time macros cannot check two dialects in one crate, so queries are runtime
//! `query`/`query_as` and the shared test suite, run on both backends, is the query check.

pub(crate) mod audit;
mod claims;
mod clients;
mod consents;
mod export;
pub(crate) mod fhir;
mod memo;
pub(crate) mod remit;
mod sessions;
mod subscriptions;
mod writer;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use secrecy::ExposeSecret;
use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

pub use audit::{ChainRow, ChainedEvent, GENESIS_HASH, PREVIOUS_HASH_EXTENSION, PendingEvent, chain_event, event_hash};
pub use claims::{
    BatchRow, ClaimEventRow, ClaimFilter, ClaimLineRow, ClaimRow, ClaimedLine, ClaimedVisit, NewClaim, SettleGuard, Settled, Settlement,
    UnbilledSession,
};
pub use clients::{NewSmartClient, SmartClientRow};
pub use consents::{ConsentOutcome, ConsentWrite, ReadWithFacts, SessionFacts, StoredDirective};
pub use export::{ExportFileRow, ExportJobRow, NewExportJob};
pub use fhir::{ReadScope, Remap, SearchPage, SessionResources, StoredResource};
pub use remit::{
    ChunkRows, ClaimTotals, Dim, ExceptionRow, LedgerRow, LedgerTotals, PaymentLineRow, PaymentRow, PostTarget, ProviderLedgerRow, RemitTx,
    RemittanceRow, ReportFilter, StatusChange, TargetLine,
};
pub use sessions::{
    IntakeRecord, ListFilter, NewVersion, Rejection, SessionSummary, StoredSession, VersionMeta, WriteJob, WriteOutcome, WriteStatus,
};
pub use subscriptions::{ChangeRow, DeliveryRow, SubscriptionRow};

use crate::settings::{DatabaseSettings, Settings};

/// Storage failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database error.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be decoded (a bug or a hand-edited row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Mapping a session for the version number the write found failed (nothing was stored).
    #[error("mapping failed while storing: {0}")]
    Mapping(String),
}

impl StoreError {
    /// `true` when retrying later may succeed (pool timeout, connection lost, database locked).
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => match e {
                sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => {
                    // SQLITE_BUSY (5) / SQLITE_LOCKED (6); PostgreSQL class 08 (connection), 57P (shutdown), 53 (resources)
                    let code = db.code().unwrap_or_default();
                    matches!(code.as_ref(), "5" | "6" | "517")
                        || code.starts_with("08")
                        || code.starts_with("57P")
                        || code.starts_with("53")
                }
                _ => false,
            },
            _ => false,
        }
    }
}

/// The two backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded default.
    Sqlite(SqlitePool),
    /// Production store.
    Postgres(PgPool),
}

/// Runs the same body against whichever pool the store holds; `$pool` is bound to it.
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::store::Db::Sqlite($pool) => $body,
            $crate::store::Db::Postgres($pool) => $body,
        }
    };
}
pub(crate) use with_db;

/// Storage handle; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// SQLite: the group-commit writer (one writer task, see `writer.rs`). `None` for PostgreSQL.
    writer: Option<writer::GroupWriter>,
    /// A pool of its own made by [`Store::dedicated_reader`] (closed by [`Store::close_reader`]).
    dedicated: bool,
    /// SQLite: decision facts kept between partner reads (see `memo.rs`). `None` for PostgreSQL.
    memo: Option<Arc<memo::FactsMemo>>,
}

/// Timestamps are stored with microsecond precision on both backends, so values round-trip
/// exactly and SQLite's RFC 3339 text sorts like PostgreSQL's `timestamptz`.
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Now, in microseconds since the Unix epoch (how job, change and delivery times are stored).
pub fn now_us() -> i64 {
    now_micros().timestamp_micros()
}

/// WAL size above which the WAL is restarted (see [`checkpoint_loop`]). Each restart makes the
/// queued writes wait for the frames not yet copied and one sync of the database file, so
/// restarts stay seconds apart under load; the benchmark figures in the README were taken with
/// this value.
const WAL_RESET_BYTES: i64 = 256 * 1024 * 1024;

/// Checkpoints the SQLite WAL every second without blocking writers (PASSIVE copies what no
/// reader still needs); ends when the pool closes.
///
/// Runs `write` in a `BEGIN IMMEDIATE` transaction on one of `pool`'s SQLite connections and
/// commits. After any failure the connection is closed instead of returned to the pool: a failed
/// `INSERT OR ROLLBACK` (see [`fhir::insert_verb`]) has ended the transaction inside SQLite while
/// sqlx still counts the connection as in it.
pub(crate) async fn sqlite_write<T>(
    pool: &SqlitePool,
    write: impl AsyncFnOnce(&mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut conn = pool.acquire().await?;
    let result = async {
        let mut tx = sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE").await?;
        let value = write(&mut tx).await?;
        tx.commit().await?;
        Ok(value)
    }
    .await;
    if result.is_err() {
        conn.close_on_drop();
    }
    result
}

/// Under a continuous stream of writes a PASSIVE checkpoint never finds the WAL fully copied, so
/// the WAL is never restarted and grows without bound (measured: 12 GB after 150,000 imported
/// sessions, and every read slowed with it). When the WAL holds more than [`WAL_RESET_BYTES`],
/// this loop asks the group writer (`reset_wanted`) to restart it between two transactions: the
/// writer runs a RESTART checkpoint on its own connection, right after a PASSIVE one copied
/// nearly everything, so it copies little and never sleeps in a busy handler waiting for
/// another connection's checkpoint (a TRUNCATE checkpoint from this loop used to stall intake
/// for 0.7-1.7 s, a third of it in truncating the file).
async fn checkpoint_loop(pool: SqlitePool, reset_wanted: Arc<AtomicBool>) {
    let page_size: i64 = sqlx::query_scalar("PRAGMA page_size").fetch_one(&pool).await.unwrap_or(4096);
    let reset_frames = WAL_RESET_BYTES / page_size.max(512);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if pool.is_closed() {
            break;
        }
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&pool).await {
            Ok((_, log_frames, _)) if log_frames > reset_frames => reset_wanted.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => {
                if pool.is_closed() {
                    break;
                }
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    }
}

/// An API client row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientRow {
    /// Client id (UUID).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `submitter`, `partner`, `finance` or `admin`.
    pub role: String,
    /// Bound organisation.
    pub org_id: Option<String>,
    /// Set when the client was disabled.
    pub disabled_at: Option<DateTime<Utc>>,
}

/// The SQLite page cache of each pooled connection, in KiB (allocated as used).
pub(crate) const READ_CACHE_KIB: i64 = 16_384;

/// Statements slower than this are logged as warnings (sqlx's default, 1 s, flagged every
/// checkpoint and multi-row insert of a busy import; the log carries the SQL text with its
/// placeholders, never bound values).
const SLOW_STATEMENT: Duration = Duration::from_secs(5);

impl Store {
    /// Connects (creating the SQLite file and its folder when needed).
    pub async fn connect(settings: &DatabaseSettings) -> Result<Store, StoreError> {
        let url = settings.url.expose_secret();
        let mut writer = None;
        let db = if url.starts_with("postgres") {
            let options = PgConnectOptions::from_str(url)?.log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT);
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await?;
            Db::Postgres(pool)
        } else {
            let options = SqliteConnectOptions::from_str(url)?
                .log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT)
                .create_if_missing(true)
                // WAL: readers never block the writer and vice versa.
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL is durable against application crashes in WAL mode; an OS crash can lose
                // the last commits but never corrupts the file.
                .synchronous(SqliteSynchronous::Normal)
                // Writers queue for the lock instead of failing at once.
                .busy_timeout(Duration::from_millis(settings.sqlite_busy_timeout_ms))
                // No automatic checkpoint inside a committing write (it stalls every queued
                // writer); a background task checkpoints instead (see `checkpoint_loop`).
                .pragma("wal_autocheckpoint", "0")
                // Page cache per reading connection (allocated as used; no mmap, which counted the
                // whole file in the import's resident memory); the writer's own connection gets
                // more (below). Statement journals in memory.
                .pragma("cache_size", format!("-{READ_CACHE_KIB}"))
                // 16 KiB pages (for a new file): fewer b-tree splits and WAL frames per session
                // written. Measured with `benches/fhir.sh`: batch intake ~1,550 -> ~1,900
                // sessions/s against 4 KiB; 32 and 64 KiB pages slowed reads by a quarter.
                .pragma("page_size", "16384")
                .pragma("temp_store", "MEMORY")
                .foreign_keys(true);
            if let Some(dir) = std::path::Path::new(options.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
            }
            // Intake writes go through one connection of their own (see `writer.rs`). Search
            // values and resource ids are random keys, so writes land on random pages: with a
            // small cache a 1,000-session transaction spills dirty pages mid-transaction and
            // re-reads pages for nearly every row, hence 48 MB for this connection alone (every
            // pool connection used to get it, and an import's resident memory grew to match).
            let writer_options = options.clone().pragma("cache_size", "-49152");
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await?;
            let writer_pool =
                SqlitePoolOptions::new().max_connections(1).acquire_timeout(Duration::from_secs(30)).connect_with(writer_options).await?;
            let reset_wanted = Arc::new(AtomicBool::new(false));
            tokio::spawn(checkpoint_loop(pool.clone(), reset_wanted.clone()));
            writer = Some(writer::GroupWriter::spawn(writer_pool, reset_wanted));
            Db::Sqlite(pool)
        };
        let memo = matches!(db, Db::Sqlite(_)).then(Arc::default);
        Ok(Store { db, writer, dedicated: false, memo })
    }

    /// A handle for one long reader (a bulk export job): on SQLite its reads go through one
    /// connection of its own with a page cache of `cache_kib` KiB, so the pages one query brought
    /// in are there for the next (spread over the shared pool, every connection's cache would
    /// fill with the same pages); writes still go through the shared pool and the writer.
    /// PostgreSQL: the same pool. Close it with [`Store::close_reader`].
    pub async fn dedicated_reader(&self, cache_kib: i64) -> Result<Store, StoreError> {
        match &self.db {
            Db::Sqlite(pool) => {
                let options = (*pool.connect_options()).clone().pragma("cache_size", format!("-{cache_kib}"));
                let reader = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await?;
                Ok(Store { db: Db::Sqlite(reader), writer: self.writer.clone(), dedicated: true, memo: self.memo.clone() })
            }
            Db::Postgres(_) => Ok(self.clone()),
        }
    }

    /// Closes a handle from [`Store::dedicated_reader`] (its own connection only).
    pub async fn close_reader(&self) {
        if self.dedicated
            && let Db::Sqlite(pool) = &self.db
        {
            pool.close().await;
        }
    }

    /// Which backend this store uses ("sqlite" or "postgres").
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Applies the embedded migrations of this backend.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(pool) => sqlx::migrate!("./migrations/sqlite").run(pool).await?,
            Db::Postgres(pool) => sqlx::migrate!("./migrations/postgres").run(pool).await?,
        }
        Ok(())
    }

    /// Round trip to the database (readiness probe).
    pub async fn ping(&self) -> Result<(), StoreError> {
        with_db!(&self.db, pool => { sqlx::query("SELECT 1").execute(pool).await?; });
        Ok(())
    }

    /// Whether [`Store::close`] was called (background loops stop then).
    pub fn is_closed(&self) -> bool {
        with_db!(&self.db, pool => pool.is_closed())
    }

    /// Closes the pools.
    pub async fn close(&self) {
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        with_db!(&self.db, pool => pool.close().await);
    }

    /// Copies organisations, sites and partnerships from configuration into their tables
    /// (upsert; partnerships are replaced), in one transaction.
    pub async fn sync_directory(&self, settings: &Settings) -> Result<(), StoreError> {
        with_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for org in &settings.organizations {
                sqlx::query(
                    "INSERT INTO organizations (id, kind, name, cds_code, npi, tin) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, name = excluded.name, cds_code = excluded.cds_code, \
                     npi = excluded.npi, tin = excluded.tin",
                )
                .bind(&org.id)
                .bind(org.kind.as_str())
                .bind(&org.name)
                .bind(&org.cds_code)
                .bind(&org.npi)
                .bind(&org.tin)
                .execute(&mut *tx)
                .await?;
            }
            for site in &settings.sites {
                sqlx::query(
                    "INSERT INTO sites (id, lea_id, name, cds_code, nces_id) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (id) DO UPDATE SET lea_id = excluded.lea_id, name = excluded.name, \
                     cds_code = excluded.cds_code, nces_id = excluded.nces_id",
                )
                .bind(&site.id)
                .bind(&site.lea)
                .bind(&site.name)
                .bind(&site.cds_code)
                .bind(&site.nces_id)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM partnerships").execute(&mut *tx).await?;
            for p in &settings.partnerships {
                for site in &p.sites {
                    sqlx::query("INSERT INTO partnerships (fqhc_id, site_id, effective_from, effective_to) VALUES ($1, $2, $3, $4)")
                        .bind(&p.fqhc)
                        .bind(site)
                        .bind(p.effective_from)
                        .bind(p.effective_to)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Registers an API client (only the secret's hash is stored).
    pub async fn insert_client(
        &self,
        id: &str,
        name: &str,
        role: &str,
        org_id: Option<&str>,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        with_db!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO api_clients (id, name, role, org_id, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(org_id)
            .bind(secret_sha256)
            .bind(now_micros())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Inserts a client unless one with this secret hash exists (demo seeding is idempotent).
    pub async fn ensure_client(
        &self,
        id: &str,
        name: &str,
        role: &str,
        org_id: Option<&str>,
        secret_sha256: &str,
    ) -> Result<(), StoreError> {
        with_db!(&self.db, pool => {
            sqlx::query(
                "INSERT INTO api_clients (id, name, role, org_id, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(name)
            .bind(role)
            .bind(org_id)
            .bind(secret_sha256)
            .bind(now_micros())
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Finds a client by the SHA-256 of its secret.
    pub async fn client_by_secret_hash(&self, secret_sha256: &str) -> Result<Option<ClientRow>, StoreError> {
        let row = with_db!(&self.db, pool => {
            sqlx::query_as::<_, ClientRow>(
                "SELECT id, name, role, org_id, disabled_at FROM api_clients WHERE secret_sha256 = $1",
            )
            .bind(secret_sha256)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Disables a client: its secret is refused from then on (after at most
    /// `server.auth_cache_seconds` in a running server). False when no such client is enabled.
    pub async fn disable_client(&self, id: &str, at: DateTime<Utc>) -> Result<bool, StoreError> {
        let done = with_db!(&self.db, pool => {
            sqlx::query("UPDATE api_clients SET disabled_at = $1 WHERE id = $2 AND disabled_at IS NULL")
                .bind(at)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// How a transaction that reads, then writes begins: on SQLite with the write lock taken at
    /// once (a deferred transaction would fail to upgrade under a concurrent writer).
    pub(crate) fn begin_write(&self) -> &'static str {
        match self.db() {
            Db::Sqlite(_) => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        }
    }

    pub(crate) fn db(&self) -> &Db {
        &self.db
    }
}
