//! Bulk Data export jobs and their files (see `crate::export`).
//!
//! A job is run by whoever holds its lease: [`Store::export_claim`] takes the oldest queued job,
//! or a running one whose lease ran out (its runner crashed or was stopped), in one atomic
//! statement (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so instances never wait on or take the same
//! job; SQLite: the database write lock). Every later write of the runner names itself as the
//! owner and changes nothing once another runner took the job over, or the client cancelled it.

use super::{Db, Store, StoreError, with_db};

/// A job as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportJobRow {
    /// Job id.
    pub id: String,
    /// The partner client that asked.
    pub client_id: String,
    /// Its FQHC.
    pub org_id: String,
    /// Purpose of use (v3 ActReason code).
    pub purpose: String,
    /// The kick-off URL.
    pub request: String,
    /// `export::Params` as JSON.
    pub params: String,
    /// queued | running | completed | failed | cancelled | expired.
    pub status: String,
    /// transactionTime, µs.
    pub transaction_us: i64,
    /// Kick-off time, µs.
    pub created_us: i64,
    /// First started, µs.
    pub started_us: Option<i64>,
    /// Completed, µs.
    pub completed_us: Option<i64>,
    /// Files expire at, µs.
    pub expires_us: Option<i64>,
    /// When consent was last evaluated for the whole output, µs.
    pub consent_evaluated_us: Option<i64>,
    /// `export::Checkpoint` as JSON.
    pub checkpoint: Option<String>,
    /// What X-Progress says while it runs.
    pub progress: Option<String>,
    /// The runner holding the lease.
    pub owner: Option<String>,
    /// Lease end, µs.
    pub lease_until_us: Option<i64>,
    /// Why the job failed.
    pub error: Option<String>,
    /// Manifest extensions as JSON.
    pub extension: Option<String>,
}

/// A new job.
#[derive(Debug, Clone)]
pub struct NewExportJob<'a> {
    /// Job id.
    pub id: &'a str,
    /// Client.
    pub client_id: &'a str,
    /// FQHC.
    pub org_id: &'a str,
    /// Purpose code.
    pub purpose: &'a str,
    /// Kick-off URL.
    pub request: &'a str,
    /// Params JSON.
    pub params: &'a str,
    /// transactionTime = kick-off time, µs.
    pub now_us: i64,
}

/// A finished file of a job.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExportFileRow {
    /// Job id.
    pub job_id: String,
    /// Position in the manifest.
    pub seq: i64,
    /// `output` or `error`.
    pub kind: String,
    /// Resource type of its lines.
    pub resource_type: String,
    /// File name in the job's folder.
    pub name: String,
    /// Lines.
    pub count: i64,
    /// Bytes on disk.
    pub bytes: i64,
    /// JSON array of the Patient ids whose data it holds.
    pub patients: String,
}

/// The columns of an export file row but its students.
const FILE_COLUMNS: &str = "job_id, seq, kind, resource_type, name, count, bytes";

const JOB_COLUMNS: &str = "id, client_id, org_id, purpose, request, params, status, transaction_us, created_us, started_us, completed_us, \
     expires_us, consent_evaluated_us, checkpoint, progress, owner, lease_until_us, error, extension";

impl Store {
    /// Inserts a queued job unless the client already has `max_active` queued or running jobs;
    /// `false` when it has.
    pub async fn export_insert(&self, job: &NewExportJob<'_>, max_active: i64) -> Result<bool, StoreError> {
        let sql = "INSERT INTO export_jobs (id, client_id, org_id, purpose, request, params, status, transaction_us, created_us) \
             SELECT $1, $2, $3, $4, $5, $6, 'queued', $7, $7 \
             WHERE (SELECT COUNT(*) FROM export_jobs WHERE client_id = $2 AND status IN ('queued', 'running')) < $8";
        let done = with_db!(self.db(), pool => {
            sqlx::query(sql)
                .bind(job.id)
                .bind(job.client_id)
                .bind(job.org_id)
                .bind(job.purpose)
                .bind(job.request)
                .bind(job.params)
                .bind(job.now_us)
                .bind(max_active)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// One job.
    pub async fn export_job(&self, id: &str) -> Result<Option<ExportJobRow>, StoreError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM export_jobs WHERE id = $1");
        let row = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// The recorded files of a job, in manifest order, without their students: `patients` is
    /// left empty (a full export's lists hold every student, megabytes per file, and a manifest
    /// or a resumed job does not need them). Not for recording again.
    pub async fn export_file_list(&self, job_id: &str) -> Result<Vec<ExportFileRow>, StoreError> {
        self.job_files(job_id, "'' AS patients").await
    }

    /// One recorded file of a job, with its students.
    pub async fn export_file(&self, job_id: &str, name: &str) -> Result<Option<ExportFileRow>, StoreError> {
        let row = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {FILE_COLUMNS}, patients FROM export_files WHERE job_id = $1 AND name = $2")))
                .bind(job_id)
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// The recorded files of a job, in manifest order.
    pub async fn export_files(&self, job_id: &str) -> Result<Vec<ExportFileRow>, StoreError> {
        self.job_files(job_id, "patients").await
    }

    /// A job's files in manifest order, with `patients` the given column expression.
    async fn job_files(&self, job_id: &str, patients: &str) -> Result<Vec<ExportFileRow>, StoreError> {
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {FILE_COLUMNS}, {patients} FROM export_files WHERE job_id = $1 ORDER BY seq")))
                .bind(job_id)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Takes the oldest job that is queued, or running with an expired lease, for `owner` until
    /// `lease_until_us`.
    pub async fn export_claim(&self, owner: &str, now_us: i64, lease_until_us: i64) -> Result<Option<ExportJobRow>, StoreError> {
        let lock = match self.db() {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE export_jobs SET status = 'running', owner = $1, lease_until_us = $2, started_us = COALESCE(started_us, $3) \
             WHERE id = (SELECT id FROM export_jobs WHERE (status = 'queued' OR (status = 'running' AND lease_until_us < $3)) \
                         ORDER BY created_us LIMIT 1{lock}) \
             RETURNING {JOB_COLUMNS}"
        );
        let row = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(owner).bind(lease_until_us).bind(now_us).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Extends the lease; `false` when the job is no longer this runner's (cancelled, or taken
    /// over after the lease ran out).
    pub async fn export_renew(&self, id: &str, owner: &str, lease_until_us: i64, progress: &str) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query("UPDATE export_jobs SET lease_until_us = $1, progress = $4 WHERE id = $2 AND owner = $3 AND status = 'running'")
                .bind(lease_until_us)
                .bind(id)
                .bind(owner)
                .bind(progress)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Records finished files (or rewrites recorded ones) with the checkpoint after them, in one
    /// transaction; `false` (and nothing written) when the job is no longer this runner's.
    pub async fn export_record_files(
        &self,
        id: &str,
        owner: &str,
        files: &[ExportFileRow],
        checkpoint: &str,
        lease_until_us: i64,
    ) -> Result<bool, StoreError> {
        with_db!(self.db(), pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE export_jobs SET checkpoint = $1, lease_until_us = $2 WHERE id = $3 AND owner = $4 AND status = 'running'",
            )
            .bind(checkpoint)
            .bind(lease_until_us)
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(false);
            }
            for f in files {
                sqlx::query(
                    "INSERT INTO export_files (job_id, seq, kind, resource_type, name, count, bytes, patients) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (job_id, seq) DO UPDATE SET count = excluded.count, bytes = excluded.bytes, patients = excluded.patients",
                )
                .bind(&f.job_id)
                .bind(f.seq)
                .bind(&f.kind)
                .bind(&f.resource_type)
                .bind(&f.name)
                .bind(f.count)
                .bind(f.bytes)
                .bind(&f.patients)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Updates a recorded file of a completed job (re-judged at download).
    pub async fn export_update_file(&self, f: &ExportFileRow) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query("UPDATE export_files SET count = $1, bytes = $2, patients = $3 WHERE job_id = $4 AND seq = $5")
                .bind(f.count)
                .bind(f.bytes)
                .bind(&f.patients)
                .bind(&f.job_id)
                .bind(f.seq)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Marks a job completed; `false` when it is no longer this runner's.
    pub async fn export_complete(
        &self,
        id: &str,
        owner: &str,
        completed_us: i64,
        expires_us: i64,
        consent_evaluated_us: i64,
        extension: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE export_jobs SET status = 'completed', completed_us = $1, expires_us = $2, consent_evaluated_us = $3, extension = $4, \
                 owner = NULL, lease_until_us = NULL WHERE id = $5 AND owner = $6 AND status = 'running'",
            )
            .bind(completed_us)
            .bind(expires_us)
            .bind(consent_evaluated_us)
            .bind(extension)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Marks a job failed (its files expire like a completed job's).
    pub async fn export_fail(&self, id: &str, owner: &str, error: &str, now_us: i64, expires_us: i64) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE export_jobs SET status = 'failed', error = $1, completed_us = $2, expires_us = $3, owner = NULL, lease_until_us = NULL \
                 WHERE id = $4 AND owner = $5 AND status = 'running'",
            )
            .bind(error)
            .bind(now_us)
            .bind(expires_us)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Cancels a client's job that is queued, running, completed or failed; `false` when there is
    /// no such job. Its files are deleted by the caller (and by the runner, if it runs).
    pub async fn export_cancel(&self, id: &str, client_id: &str) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE export_jobs SET status = 'cancelled', owner = NULL, lease_until_us = NULL \
                 WHERE id = $1 AND client_id = $2 AND status IN ('queued', 'running', 'completed', 'failed')",
            )
            .bind(id)
            .bind(client_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Marks completed and failed jobs whose files expired by `now_us`; returns their ids.
    pub async fn export_expire(&self, now_us: i64) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = with_db!(self.db(), pool => {
            sqlx::query_scalar(
                "UPDATE export_jobs SET status = 'expired' WHERE status IN ('completed', 'failed') AND expires_us <= $1 RETURNING id",
            )
            .bind(now_us)
            .fetch_all(pool)
            .await?
        });
        Ok(ids)
    }

    /// The statuses of these jobs (unknown ids are left out).
    pub async fn export_statuses(&self, ids: &[String]) -> Result<Vec<(String, String)>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT id, status FROM export_jobs WHERE id IN ({})",
                super::fhir::placeholders(1, chunk.len(), matches!(self.db(), Db::Sqlite(_)))
            );
            let rows: Vec<(String, String)> = with_db!(self.db(), pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Students whose consents changed (recorded, amended, revoked) after `after_us` and at or
    /// before `until_us`.
    pub async fn consent_changed_patients(&self, after_us: i64, until_us: i64) -> Result<Vec<String>, StoreError> {
        let rows = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT DISTINCT patient_id FROM consent_directives WHERE updated_us > $1 AND updated_us <= $2 ORDER BY patient_id")
                .bind(after_us)
                .bind(until_us)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Of `patients`, those some of whose data was disclosed to `client_id` (the audit trail),
    /// sorted.
    pub async fn patients_disclosed_to(&self, client_id: &str, patients: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = self
            .strings_where_in(
                "SELECT DISTINCT p.patient_id FROM audit_event_patients p JOIN audit_events e ON e.seq = p.seq \
                 WHERE p.disclosed AND e.client_id = $1 AND p.patient_id IN",
                Some(client_id),
                patients,
            )
            .await?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The students with a session at one of `sites` (a Group's members), sorted.
    pub async fn patients_at_sites(&self, sites: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = self
            .strings_where_in(
                "SELECT DISTINCT patient_id FROM sessions WHERE patient_id IS NOT NULL AND current_version > 0 AND site_id IN",
                None,
                sites,
            )
            .await?;
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The session (Encounter) ids of these students.
    pub async fn sessions_of_patients(&self, patients: &[String]) -> Result<Vec<String>, StoreError> {
        self.strings_where_in("SELECT id FROM sessions WHERE current_version > 0 AND patient_id IN", None, patients).await
    }

    /// Runs `select` (a one-column query ending in `... IN`, with `$1` = `first` when given) over
    /// `keys` in chunks of 500 and collects the values.
    async fn strings_where_in(&self, select: &str, first: Option<&str>, keys: &[String]) -> Result<Vec<String>, StoreError> {
        let offset = usize::from(first.is_some()) + 1;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let sql = format!("{select} ({})", super::fhir::placeholders(offset, chunk.len(), false));
            let rows: Vec<String> = with_db!(self.db(), pool => {
                let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
                if let Some(f) = first {
                    q = q.bind(f);
                }
                for k in chunk {
                    q = q.bind(k.as_str());
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }
}
