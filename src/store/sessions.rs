//! Sessions and their versions: exactly-once writes, history, keyset listing, rejected lane.

use chrono::{DateTime, Utc};

use super::{Db, Store, StoreError, with_db};

/// A validated record ready to be stored.
#[derive(Debug, Clone)]
pub struct IntakeRecord {
    /// Deterministic session id derived from (LEA, source id).
    pub session_id: String,
    /// Submitting LEA.
    pub lea: String,
    /// The LEA's id of the session.
    pub source_id: String,
    /// School site.
    pub site: String,
    /// Start of the session (UTC).
    pub service_start: DateTime<Utc>,
    /// SHA-256 of the canonical JSON (sorted keys): identical content <=> identical hash.
    pub content_sha256: String,
    /// SHA-256 of the exact submitted bytes.
    pub raw_sha256: String,
    /// The exact submitted bytes.
    pub raw: Vec<u8>,
    /// `application/json` or `text/csv`.
    pub raw_format: &'static str,
    /// Canonical JSON of the record.
    pub record: String,
    /// The FHIR resources the version maps to (`None`: store the session only).
    pub fhir: Option<super::SessionResources>,
    /// The student's FHIR Patient id (for consent decisions; `None` without FHIR resources).
    pub patient_id: Option<String>,
    /// The Encounter's security labels, JSON array of `system|code` (for consent decisions).
    pub security: Option<String>,
    /// The local date of service (`YYYY-MM-DD` of `service.start` in its submitted offset).
    pub service_date: String,
    /// The day the student turns 18 (`YYYY-MM-DD`).
    pub adult_from: Option<String>,
}

/// A refused record for the rejected lane.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// LEA of the record when it could be read.
    pub lea: Option<String>,
    /// Position in the request (0 for a single POST).
    pub record_index: i64,
    /// Source id when it could be read.
    pub source_id: Option<String>,
    /// SHA-256 of the submitted bytes.
    pub raw_sha256: String,
    /// The submitted bytes.
    pub raw: Vec<u8>,
    /// The issues as OperationOutcome JSON.
    pub issues_json: String,
}

/// Who wrote, when, as part of what.
#[derive(Debug, Clone)]
pub struct NewVersion {
    /// API client id (or `cli:import`).
    pub client_id: String,
    /// Request id, when over HTTP.
    pub request_id: Option<String>,
    /// Batch id, for `$batch` and imports.
    pub batch_id: Option<String>,
    /// Time of receipt (microseconds).
    pub received_at: DateTime<Utc>,
}

/// What happened to a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteStatus {
    /// First version of a new session.
    Created,
    /// A changed record: a new version was stored, earlier ones kept.
    Amended,
    /// Identical to the current version: nothing changed.
    Duplicate,
}

/// Result of writing one record.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// Session id.
    pub id: String,
    /// Current version after the write.
    pub version: i64,
    /// Created, amended or duplicate.
    pub status: WriteStatus,
    /// When the current version was received.
    pub received_at: DateTime<Utc>,
}

/// Metadata of one stored version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionMeta {
    /// Version number, from 1.
    pub version: i64,
    /// SHA-256 of the canonical record.
    pub content_sha256: String,
    /// SHA-256 of the submitted bytes.
    pub raw_sha256: String,
    /// Media type of the submitted bytes.
    pub raw_format: String,
    /// Time of receipt.
    pub received_at: DateTime<Utc>,
    /// Submitting client.
    pub client_id: String,
    /// Batch, if any.
    pub batch_id: Option<String>,
}

/// A session with one of its versions.
#[derive(Debug, Clone)]
pub struct StoredSession {
    /// Session id.
    pub id: String,
    /// LEA.
    pub lea: String,
    /// LEA's session id.
    pub source_id: String,
    /// Site of the current version.
    pub site: String,
    /// Latest version number.
    pub current_version: i64,
    /// First receipt.
    pub created_at: DateTime<Utc>,
    /// The requested version's metadata.
    pub version: VersionMeta,
    /// The requested version's canonical record (JSON text).
    pub record: String,
    /// Every version, oldest first.
    pub history: Vec<VersionMeta>,
}

/// A row of a session listing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionSummary {
    /// Session id.
    pub id: String,
    /// LEA.
    pub lea_id: String,
    /// LEA's session id.
    pub source_id: String,
    /// Site.
    pub site_id: String,
    /// Latest version.
    pub current_version: i64,
    /// Start of the session.
    pub service_start: DateTime<Utc>,
    /// Receipt of the latest version (listing order).
    pub updated_at: DateTime<Utc>,
}

/// Filters of a session listing; `after` is the keyset cursor (exclusive).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this LEA.
    pub lea: Option<String>,
    /// Only this site.
    pub site: Option<String>,
    /// Only sessions changed at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Continue after this (updated_at, id).
    pub after: Option<(DateTime<Utc>, String)>,
    /// Page size.
    pub limit: i64,
}

#[derive(sqlx::FromRow)]
pub(crate) struct CurrentRow {
    pub(crate) id: String,
    pub(crate) current_version: i64,
    pub(crate) current_content_sha256: String,
    pub(crate) updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: String,
    lea_id: String,
    source_id: String,
    site_id: String,
    current_version: i64,
    created_at: DateTime<Utc>,
}

/// `sessions` and its columns, for the multi-row inserts of [`apply_job`].
pub(crate) const SESSION_COLUMNS: &str = "sessions (id, lea_id, source_id, site_id, current_version, current_content_sha256, service_start, created_at, updated_at, \
     patient_id, security, service_date, adult_from)";
/// A `sessions` row ([`SESSION_COLUMNS`]) for `r` at `version` with content hash `sha`, first
/// received at `created` and written at `at` (an update keeps the stored creation time).
pub(crate) fn session_row(r: &IntakeRecord, version: i64, sha: &str, created: DateTime<Utc>, at: DateTime<Utc>) -> Vec<super::fhir::Bind> {
    use super::fhir::Bind;
    vec![
        Bind::Text(r.session_id.clone()),
        Bind::Text(r.lea.clone()),
        Bind::Text(r.source_id.clone()),
        Bind::Text(r.site.clone()),
        Bind::Int(version),
        Bind::Text(sha.to_string()),
        Bind::Time(r.service_start),
        Bind::Time(created),
        Bind::Time(at),
        Bind::OptText(r.patient_id.clone()),
        Bind::OptText(r.security.clone()),
        Bind::Text(r.service_date.clone()),
        Bind::OptText(r.adult_from.clone()),
    ]
}

/// How the current versions are read on SQLite: as they are (the transaction began IMMEDIATE,
/// so it holds the database write lock before it reads).
pub(crate) const SELECT_CURRENT: &str = "";
// PostgreSQL: lock the rows so concurrent amendments of one session serialise.
const SELECT_CURRENT_FOR_UPDATE: &str = " FOR UPDATE";

/// One unit of intake writing: records and rejections of one request (or import chunk).
#[derive(Debug, Clone)]
pub struct WriteJob {
    /// Who and when.
    pub who: NewVersion,
    /// Valid records, in order.
    pub records: Vec<IntakeRecord>,
    /// Rejected records for the rejected lane.
    pub rejections: Vec<Rejection>,
}

/// Applies [`WriteJob`]s (`$jobs`, a `&[&WriteJob]`, in order) inside an open transaction `$tx`
/// (either backend) and evaluates to each job's outcomes; `?` propagates database errors.
/// `$for_update` is appended to the read of the sessions' current versions (`FOR UPDATE` on
/// PostgreSQL, which also makes every session exist before it is read, so that the lock
/// serialises concurrent writers of a new session; empty on SQLite, whose transaction must have
/// begun IMMEDIATE).
///
/// Set-based: the jobs' records are written together with a few multi-row statements, however
/// many jobs and records there are (a group of single-session requests costs the statements of
/// one batch, not of each request).
macro_rules! apply_job {
    ($tx:expr, $jobs:expr, $for_update:expr) => {{
        use $crate::store::fhir::Bind;
        use $crate::store::sessions::SESSION_COLUMNS;
        let jobs: &[&$crate::store::WriteJob] = $jobs;
        let mut outcomes: Vec<Vec<$crate::store::WriteOutcome>> = jobs.iter().map(|j| Vec::with_capacity(j.records.len())).collect();
        let mut fhir_writes: Vec<$crate::store::fhir::FhirWrite<'_>> = Vec::new();
        let pos = $crate::store::fhir::positional(&*$tx);
        // Every record with its job's index and who-and-when, in order.
        let records: Vec<(usize, &$crate::store::NewVersion, &$crate::store::IntakeRecord)> =
            jobs.iter().enumerate().flat_map(|(i, j)| j.records.iter().map(move |r| (i, &j.who, r))).collect();
        let lock_rows = !$for_update.is_empty();
        // 1. Each session once, first received by its first record here. On PostgreSQL every
        //    session exists before it is read (the SELECT ... FOR UPDATE below then serialises
        //    concurrent writers of one session). SQLite's writer holds the database lock already,
        //    so a new session is written once, in step 4, instead of as a placeholder first
        //    (a sessions row and its six indexes written twice was ~5% of the writer's time).
        let mut first_seen: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> = Default::default();
        let first: Vec<(&$crate::store::NewVersion, &$crate::store::IntakeRecord)> = records
            .iter()
            .filter(|(_, who, r)| first_seen.insert(r.session_id.as_str(), who.received_at).is_none())
            .map(|&(_, who, r)| (who, r))
            .collect();
        if lock_rows {
            let new_rows: Vec<Vec<Bind>> =
                first.iter().map(|(who, r)| $crate::store::sessions::session_row(r, 0, "", who.received_at, who.received_at)).collect();
            $crate::store::fhir::insert_rows!($tx, SESSION_COLUMNS, 13, new_rows, "ON CONFLICT DO NOTHING");
        }
        // 2. Their current versions.
        let mut current: std::collections::HashMap<String, $crate::store::sessions::CurrentRow> = Default::default();
        for chunk in first.chunks($crate::store::fhir::IN_CHUNK) {
            let sql = format!(
                "SELECT id, current_version, current_content_sha256, updated_at FROM sessions WHERE id IN ({}){}",
                $crate::store::fhir::placeholders(1, chunk.len(), pos),
                $for_update
            );
            let mut q = sqlx::query_as::<_, $crate::store::sessions::CurrentRow>(sqlx::AssertSqlSafe(sql))
                .persistent($crate::store::fhir::cache_chunk(chunk.len(), $crate::store::fhir::IN_CHUNK, 1, pos));
            for (_, r) in chunk {
                q = q.bind(r.session_id.as_str());
            }
            for row in q.fetch_all(&mut **$tx).await? {
                current.insert(row.id.clone(), row);
            }
        }
        if !lock_rows {
            for (who, r) in &first {
                current.entry(r.session_id.clone()).or_insert_with(|| $crate::store::sessions::CurrentRow {
                    id: r.session_id.clone(),
                    current_version: 0,
                    current_content_sha256: String::new(),
                    updated_at: who.received_at,
                });
            }
        }
        // 3. In record order: duplicates, new versions.
        let mut versions: Vec<Vec<Bind>> = Vec::new();
        let mut changed: std::collections::BTreeMap<&str, (&$crate::store::NewVersion, &$crate::store::IntakeRecord)> = Default::default();
        for &(job, who, r) in &records {
            let Some(cur) = current.get_mut(&r.session_id) else {
                return Err($crate::store::StoreError::Corrupt(format!("session {} was not found right after its insert", r.session_id)));
            };
            if cur.current_version > 0 && cur.current_content_sha256 == r.content_sha256 {
                outcomes[job].push($crate::store::WriteOutcome {
                    id: cur.id.clone(),
                    version: cur.current_version,
                    status: $crate::store::WriteStatus::Duplicate,
                    received_at: cur.updated_at,
                });
                continue;
            }
            let version = cur.current_version + 1;
            cur.current_version = version;
            cur.current_content_sha256.clone_from(&r.content_sha256);
            cur.updated_at = who.received_at;
            changed.insert(r.session_id.as_str(), (who, r));
            versions.push(vec![
                Bind::Text(r.session_id.clone()),
                Bind::Int(version),
                Bind::Text(r.content_sha256.clone()),
                Bind::Text(r.raw_sha256.clone()),
                Bind::Bytes(r.raw.clone()),
                Bind::Text(r.raw_format.to_string()),
                Bind::Text(r.record.clone()),
                Bind::Time(who.received_at),
                Bind::Text(who.client_id.clone()),
                Bind::OptText(who.request_id.clone()),
                Bind::OptText(who.batch_id.clone()),
            ]);
            if let Some(set) = &r.fhir {
                let resources = if set.assumed_version == version {
                    std::borrow::Cow::Borrowed(set.resources.as_slice())
                } else {
                    std::borrow::Cow::Owned((set.remap)(version).map_err($crate::store::StoreError::Mapping)?)
                };
                fhir_writes.push($crate::store::fhir::FhirWrite {
                    session_id: &r.session_id,
                    session_version: version,
                    lea: &r.lea,
                    amended: version > 1,
                    received_at: who.received_at,
                    resources,
                });
            }
            let status = if version == 1 { $crate::store::WriteStatus::Created } else { $crate::store::WriteStatus::Amended };
            outcomes[job].push($crate::store::WriteOutcome { id: r.session_id.clone(), version, status, received_at: who.received_at });
        }
        // 4. The sessions' new current state (first: a new session's row must exist before its
        //    versions reference it), and the new versions.
        let updates: Vec<Vec<Bind>> = changed
            .values()
            .filter_map(|(who, r)| {
                let cur = current.get(&r.session_id)?;
                let created = first_seen.get(r.session_id.as_str()).copied().unwrap_or(who.received_at);
                Some($crate::store::sessions::session_row(r, cur.current_version, &cur.current_content_sha256, created, who.received_at))
            })
            .collect();
        $crate::store::fhir::insert_rows!(
            $tx,
            SESSION_COLUMNS,
            13,
            updates,
            "ON CONFLICT (id) DO UPDATE SET current_version = excluded.current_version, \
             current_content_sha256 = excluded.current_content_sha256, site_id = excluded.site_id, \
             service_start = excluded.service_start, updated_at = excluded.updated_at, \
             patient_id = excluded.patient_id, security = excluded.security, service_date = excluded.service_date, adult_from = excluded.adult_from"
        );
        $crate::store::fhir::insert_rows!(
            $tx,
            "session_versions (session_id, version, content_sha256, raw_sha256, raw, raw_format, record, received_at, client_id, \
             request_id, batch_id)",
            11,
            versions,
            ""
        );
        $crate::store::fhir::apply_fhir!($tx, &fhir_writes);
        for job in jobs {
            let who = &job.who;
            for rej in &job.rejections {
                sqlx::query(
                    "INSERT INTO intake_rejections (id, lea_id, client_id, batch_id, request_id, record_index, source_id, \
                     raw_sha256, raw, issues, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&rej.lea)
                .bind(&who.client_id)
                .bind(&who.batch_id)
                .bind(&who.request_id)
                .bind(rej.record_index)
                .bind(&rej.source_id)
                .bind(&rej.raw_sha256)
                .bind(&rej.raw)
                .bind(&rej.issues_json)
                .bind(who.received_at)
                .execute(&mut **$tx)
                .await?;
            }
        }
        outcomes
    }};
}
pub(crate) use apply_job;

impl Store {
    /// Stores valid records and rejections in one transaction; all or nothing. For each record:
    /// identical to the current version -> `Duplicate` (nothing written); otherwise a new version.
    /// Records are applied in order, so a batch may amend a session it created.
    ///
    /// On SQLite the write goes through the group-commit writer (see `writer.rs`); on PostgreSQL
    /// it runs in its own transaction with row locks.
    pub async fn write_intake(&self, job: WriteJob) -> Result<Vec<WriteOutcome>, StoreError> {
        match (&self.db, &self.writer) {
            (Db::Sqlite(_), Some(writer)) => writer.submit(job).await,
            (Db::Postgres(pool), _) => {
                let mut tx = pool.begin().await?;
                let outcomes = apply_job!(&mut tx, &[&job], SELECT_CURRENT_FOR_UPDATE);
                tx.commit().await?;
                Ok(outcomes.into_iter().next().unwrap_or_default())
            }
            (Db::Sqlite(pool), None) => {
                let outcomes = super::sqlite_write(pool, async |tx| Ok(apply_job!(tx, &[&job], SELECT_CURRENT))).await?;
                Ok(outcomes.into_iter().next().unwrap_or_default())
            }
        }
    }

    /// A session with the given version (or the current one) and its version history.
    pub async fn session(&self, id: &str, version: Option<i64>) -> Result<Option<StoredSession>, StoreError> {
        with_db!(self.db(), pool => {
            let Some(row) = sqlx::query_as::<_, SessionRow>(
                "SELECT id, lea_id, source_id, site_id, current_version, created_at FROM sessions WHERE id = $1 AND current_version > 0",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let history: Vec<VersionMeta> = sqlx::query_as(
                "SELECT version, content_sha256, raw_sha256, raw_format, received_at, client_id, batch_id \
                 FROM session_versions WHERE session_id = $1 ORDER BY version",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            let wanted = version.unwrap_or(row.current_version);
            let Some(meta) = history.iter().find(|v| v.version == wanted).cloned() else {
                return Ok(None);
            };
            let record: String = sqlx::query_scalar("SELECT record FROM session_versions WHERE session_id = $1 AND version = $2")
                .bind(id)
                .bind(wanted)
                .fetch_one(pool)
                .await?;
            Ok(Some(StoredSession {
                id: row.id,
                lea: row.lea_id,
                source_id: row.source_id,
                site: row.site_id,
                current_version: row.current_version,
                created_at: row.created_at,
                version: meta,
                record,
                history,
            }))
        })
    }

    /// The exact bytes submitted for a version.
    pub async fn session_raw(&self, id: &str, version: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let raw = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT raw FROM session_versions WHERE session_id = $1 AND version = $2")
                .bind(id)
                .bind(version)
                .fetch_optional(pool)
                .await?
        });
        Ok(raw)
    }

    /// One page of sessions ordered by (updated_at, id), after the cursor.
    pub async fn list_sessions(&self, f: &ListFilter) -> Result<Vec<SessionSummary>, StoreError> {
        let (after_ts, after_id) = match &f.after {
            Some((ts, id)) => (Some(*ts), Some(id.clone())),
            None => (None, None),
        };
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as::<_, SessionSummary>(
                "SELECT id, lea_id, source_id, site_id, current_version, service_start, updated_at FROM sessions \
                 WHERE current_version > 0 \
                   AND ($1 IS NULL OR lea_id = $1) \
                   AND ($2 IS NULL OR site_id = $2) \
                   AND ($3 IS NULL OR updated_at >= $3) \
                   AND ($4 IS NULL OR (updated_at, id) > ($4, $5)) \
                 ORDER BY updated_at, id LIMIT $6",
            )
            .bind(&f.lea)
            .bind(&f.site)
            .bind(f.since)
            .bind(after_ts)
            .bind(after_id)
            .bind(f.limit)
            .fetch_all(pool)
            .await?
        });
        Ok(rows)
    }

    /// Number of rejected records stored for an LEA (tests and operators).
    pub async fn count_rejections(&self, lea: Option<&str>) -> Result<i64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM intake_rejections WHERE ($1 IS NULL OR lea_id = $1)")
                .bind(lea)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }

    /// Number of stored versions across all sessions (tests and operators).
    pub async fn count_versions(&self) -> Result<i64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM session_versions").fetch_one(pool).await?
        });
        Ok(n)
    }
}
