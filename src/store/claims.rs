//! Claims: the rows billing writes (claims, their lines and every lifecycle transition), what it
//! reads back (visits already claimed, the program a session is claimed under), the sessions
//! whose current version it has not settled, X12 batches and their control numbers.
//!
//! No double billing is the database's job, not the caller's: at most one active claim per
//! session (a partial unique index), and a session version is settled in one transaction that
//! first moves the session's `billed_version` from the value the caller saw (so two workers on
//! two instances cannot both settle it) and re-checks the active claim and the day's visits.

use super::{Db, Store, StoreError, with_db};

/// An active claim of the same student on the same day (the visit limit).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedVisit {
    /// The session the claim covers.
    pub session_id: String,
    /// Billing organisation.
    pub biller: String,
    /// Program.
    pub program: String,
    /// Visit category.
    pub visit_category: String,
}

/// A claim as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[allow(missing_docs)]
pub struct ClaimRow {
    pub id: String,
    /// CLM01 / CLP01.
    pub pcn: String,
    pub session_id: String,
    pub session_version: i64,
    pub patient_id: Option<String>,
    pub service_date: String,
    pub site_id: String,
    pub lea_id: String,
    pub program: String,
    pub program_version: String,
    /// The visit category it counts against.
    pub visit_category: String,
    /// professional | institutional.
    pub form: String,
    pub biller: String,
    pub payer: String,
    pub rendering_npi: String,
    /// 1 original, 7 replacement, 8 void.
    pub frequency: String,
    pub replaces: Option<String>,
    pub payer_claim_number: Option<String>,
    pub status: String,
    pub active: i64,
    pub charge_cents: i64,
    pub expected_cents: i64,
    /// The planned claim (JSON).
    pub plan: String,
    /// FHIR R4 Claim (JSON).
    pub resource: String,
    pub batch_id: Option<String>,
    pub created_us: i64,
    pub updated_us: i64,
}

/// A claim line as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[allow(missing_docs)]
pub struct ClaimLineRow {
    pub claim_id: String,
    pub line_no: i64,
    /// REF*6R.
    pub line_id: String,
    pub revenue_code: Option<String>,
    pub code: String,
    /// Joined with `:`.
    pub modifiers: String,
    pub units: i64,
    pub charge_cents: i64,
    pub expected_cents: i64,
    pub informational: bool,
}

/// One lifecycle transition.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[allow(missing_docs)]
pub struct ClaimEventRow {
    pub seq: i64,
    pub claim_id: String,
    pub at_us: i64,
    pub actor: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub reason: String,
}

/// A new claim with its lines.
#[derive(Debug, Clone)]
pub struct NewClaim {
    /// The row (status, active and times are set by the store).
    pub row: ClaimRow,
    /// Lines.
    pub lines: Vec<ClaimLineRow>,
}

/// A session whose current version billing has not settled.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnbilledSession {
    /// Session id.
    pub id: String,
    /// Its current version.
    pub current_version: i64,
    /// The version billing settled last (0: none).
    pub billed_version: i64,
}

/// What settling a session version does to its claims.
#[derive(Debug, Clone)]
pub enum Settlement {
    /// Nothing to file (not billable, and no claim to retire; or the active claim already
    /// covers an identical bill).
    Nothing {
        /// Why (recorded nowhere else: the billing decision is recomputed on demand).
        reason: String,
    },
    /// Retire the active claim (to `retire_to`) and, if given, file `new`.
    Change {
        /// The active claim and the status it moves to (`cancelled` before it was sent,
        /// `replaced` / `voided` after, when `new` is its frequency 7 / 8 successor).
        retire: Option<(String, &'static str)>,
        /// The claim to file.
        new: Option<Box<NewClaim>>,
        /// Why (the lifecycle events carry it).
        reason: String,
    },
}

impl<'a> SettleGuard<'a> {
    /// With the active claim as read.
    pub fn with_active(mut self, active: Option<&'a ClaimRow>) -> Self {
        self.active_claim = active.map(|a| (a.id.as_str(), a.status.as_str()));
        self
    }
}

/// The outcome of [`Store::settle_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Written.
    Done,
    /// Someone else settled this version, a newer version arrived, or the active claim or the
    /// day's visits changed since the caller looked: decide again.
    Stale,
}

/// What the caller saw when it decided, checked again inside the transaction.
#[derive(Debug, Clone)]
pub struct SettleGuard<'a> {
    /// Session.
    pub session_id: &'a str,
    /// The version decided on.
    pub version: i64,
    /// `billed_version` as read.
    pub billed_version: i64,
    /// The active claim's id and status as read.
    pub active_claim: Option<(&'a str, &'a str)>,
    /// Patient and date of service, with the other sessions whose active claims that day were
    /// seen (sorted).
    pub visits: Option<(&'a str, &'a str, Vec<String>)>,
    /// What the decision said, kept for reports: the reason codes that kept it from billing
    /// (comma-separated; empty when billable) and the face-to-face minutes.
    pub outcome: Option<(String, i64)>,
}

/// Marks a student's other sessions of one day ($1 patient, $2 date, not $3) unsettled when
/// none of their claims went to the payer: a visit may have been freed.
const REOPEN_DAY: &str = "UPDATE sessions SET billed_version = 0 WHERE patient_id = $1 AND service_date = $2 AND id <> $3 AND billed_version > 0 \
     AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.session_id = sessions.id AND c.active = 1 AND c.frequency <> '8' AND c.status NOT IN ('ready', 'held'))";

pub(crate) const CLAIM_COLUMNS: &str = "id, pcn, session_id, session_version, patient_id, service_date, site_id, lea_id, program, program_version, visit_category, form, \
     biller, payer, rendering_npi, frequency, replaces, payer_claim_number, status, active, charge_cents, expected_cents, plan, resource, \
     batch_id, created_us, updated_us";

/// A line of another session's active claim (frequency limits).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedLine {
    /// Procedure code.
    pub code: String,
    /// Units.
    pub units: i64,
    /// Rendering provider.
    pub rendering_npi: String,
    /// Student.
    pub patient_id: Option<String>,
    /// Date of service.
    pub service_date: String,
}

impl Store {
    /// Lines with one of `codes` of other sessions' active claims (voids aside) by `npi` on
    /// `date`, or of `patient_id` from `year_from` to `year_to` (dates as YYYY-MM-DD text, which
    /// sorts). Two indexed look-ups; nothing when `codes` is empty.
    #[allow(clippy::too_many_arguments)]
    pub async fn claimed_lines(
        &self,
        except_session: &str,
        codes: &[String],
        npi: &str,
        date: &str,
        patient_id: &str,
        year_from: &str,
        year_to: &str,
    ) -> Result<Vec<ClaimedLine>, StoreError> {
        if codes.is_empty() {
            return Ok(Vec::new());
        }
        // Parameters numbered in the order they first appear (SQLite numbers named parameters
        // that way): the codes, then the session, provider and day, then student and year.
        let k = codes.len();
        let list = (1..=k).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
        let (sess, npi_p, day, pat, from, to) = (k + 1, k + 2, k + 3, k + 4, k + 5, k + 6);
        let sql = format!(
            "SELECT l.code, l.units, c.rendering_npi, c.patient_id, c.service_date FROM claims c JOIN claim_lines l ON l.claim_id = c.id \
             WHERE l.code IN ({list}) AND c.active = 1 AND c.frequency <> '8' AND c.session_id <> ${sess} AND c.rendering_npi = ${npi_p} \
             AND c.service_date = ${day} \
             UNION ALL \
             SELECT l.code, l.units, c.rendering_npi, c.patient_id, c.service_date FROM claims c JOIN claim_lines l ON l.claim_id = c.id \
             WHERE l.code IN ({list}) AND c.active = 1 AND c.frequency <> '8' AND c.session_id <> ${sess} AND c.patient_id = ${pat} \
             AND c.service_date >= ${from} AND c.service_date <= ${to} AND NOT (c.rendering_npi = ${npi_p} AND c.service_date = ${day})"
        );
        // (The second part leaves out the provider's own lines of that day, which the first
        // already has.)
        let rows: Vec<ClaimedLine> = with_db!(self.db(), pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for c in codes {
                q = q.bind(c);
            }
            q.bind(except_session).bind(npi).bind(date).bind(patient_id).bind(year_from).bind(year_to).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Active claims of `patient_id` on `service_date` for sessions other than `except_session`.
    pub async fn claimed_visits(
        &self,
        patient_id: &str,
        service_date: &str,
        except_session: &str,
    ) -> Result<Vec<ClaimedVisit>, StoreError> {
        let sql = "SELECT session_id, biller, program, visit_category FROM claims \
                   WHERE active = 1 AND patient_id = $1 AND service_date = $2 AND session_id <> $3 AND frequency <> '8' \
                   ORDER BY created_us";
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sql).bind(patient_id).bind(service_date).bind(except_session).fetch_all(pool).await?
        }))
    }

    /// The program of the session's latest claim that was not cancelled before it was sent: a
    /// session claimed under one program is never claimed under another.
    pub async fn claimed_program(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT program FROM claims WHERE session_id = $1 AND status <> 'cancelled' ORDER BY created_us DESC LIMIT 1";
        Ok(with_db!(self.db(), pool => {
            sqlx::query_scalar(sql).bind(session_id).fetch_optional(pool).await?
        }))
    }

    /// Up to `limit` sessions whose current version billing has not settled, oldest change first.
    pub async fn unbilled_sessions(&self, limit: i64) -> Result<Vec<UnbilledSession>, StoreError> {
        let sql = "SELECT id, current_version, billed_version FROM sessions WHERE billed_version < current_version \
                   AND (billing_retry_us IS NULL OR billing_retry_us < $2) ORDER BY updated_at LIMIT $1";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(limit).bind(super::now_us()).fetch_all(pool).await? }))
    }

    /// A settlement failed: the worker leaves the session until `retry_us` (the error is logged).
    pub async fn billing_retry_later(&self, session_id: &str, retry_us: i64) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query("UPDATE sessions SET billing_retry_us = $1 WHERE id = $2").bind(retry_us).bind(session_id).execute(pool).await?;
        });
        Ok(())
    }

    /// Marks the sessions of these students unsettled again unless their active claim went to
    /// the payer: a consent changed, so a session held for want of a payment consent may now be
    /// billable, and a claim not yet sent may no longer be.
    pub async fn unsettle_unclaimed(&self, patient_ids: &[&str]) -> Result<u64, StoreError> {
        let mut n = 0;
        for p in patient_ids {
            n += with_db!(self.db(), pool => {
                sqlx::query(
                    "UPDATE sessions SET billed_version = 0 WHERE patient_id = $1 AND billed_version > 0 \
                     AND NOT EXISTS (SELECT 1 FROM claims c WHERE c.session_id = sessions.id AND c.active = 1 AND c.frequency <> '8' AND c.status NOT IN ('ready', 'held'))",
                )
                .bind(*p)
                .execute(pool)
                .await?
                .rows_affected()
            });
        }
        Ok(n)
    }

    /// The session's active claim.
    pub async fn active_claim(&self, session_id: &str) -> Result<Option<ClaimRow>, StoreError> {
        let sql = format!("SELECT {CLAIM_COLUMNS} FROM claims WHERE session_id = $1 AND active = 1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(session_id).fetch_optional(pool).await? }))
    }

    /// One claim.
    pub async fn claim(&self, id: &str) -> Result<Option<ClaimRow>, StoreError> {
        let sql = format!("SELECT {CLAIM_COLUMNS} FROM claims WHERE id = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? }))
    }

    /// Claims matching the filters, newest first, at most `limit`.
    pub async fn claims(&self, f: &ClaimFilter<'_>, limit: i64) -> Result<Vec<ClaimRow>, StoreError> {
        let sql = format!(
            "SELECT {CLAIM_COLUMNS} FROM claims WHERE ($1 IS NULL OR session_id = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR patient_id = $3) AND ($4 IS NULL OR pcn = $4) AND ($5 IS NULL OR batch_id = $5) \
             ORDER BY created_us DESC, id LIMIT $6"
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(f.session_id)
                .bind(f.status)
                .bind(f.patient_id)
                .bind(f.pcn)
                .bind(f.batch_id)
                .bind(limit)
                .fetch_all(pool)
                .await?
        }))
    }

    /// A claim's lines in order.
    pub async fn claim_lines(&self, claim_id: &str) -> Result<Vec<ClaimLineRow>, StoreError> {
        let sql = "SELECT claim_id, line_no, line_id, revenue_code, code, modifiers, units, charge_cents, expected_cents, \
                   informational <> 0 AS informational FROM claim_lines WHERE claim_id = $1 ORDER BY line_no";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(claim_id).fetch_all(pool).await? }))
    }

    /// A claim's lifecycle.
    pub async fn claim_events(&self, claim_id: &str) -> Result<Vec<ClaimEventRow>, StoreError> {
        let sql = "SELECT seq, claim_id, at_us, actor, from_status, to_status, reason FROM claim_events WHERE claim_id = $1 ORDER BY seq";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(claim_id).fetch_all(pool).await? }))
    }

    /// Settles one session version (see [`Settlement`]) if what the caller saw still holds.
    pub async fn settle_session(&self, g: &SettleGuard<'_>, s: Settlement, actor: &str, now_us: i64) -> Result<Settled, StoreError> {
        let begin = self.begin_write();
        let pg = matches!(self.db(), Db::Postgres(_));
        with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            if let (true, Some((patient, _, _))) = (pg, &g.visits) {
                // Sessions of one student on one day settle one at a time (the visit limit).
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))").bind(patient).execute(&mut *tx).await?;
            }
            let moved = sqlx::query(
                "UPDATE sessions SET billed_version = $1, billing_reasons = COALESCE($2, billing_reasons), billing_minutes = COALESCE($3, billing_minutes) \
                 WHERE id = $4 AND billed_version = $5 AND current_version = $1",
            )
                .bind(g.version)
                .bind(g.outcome.as_ref().map(|o| o.0.as_str()))
                .bind(g.outcome.as_ref().map(|o| o.1))
                .bind(g.session_id)
                .bind(g.billed_version)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved != 1 {
                return Ok(Settled::Stale);
            }
            let active: Option<(String, String)> = sqlx::query_as("SELECT id, status FROM claims WHERE session_id = $1 AND active = 1")
                .bind(g.session_id)
                .fetch_optional(&mut *tx)
                .await?;
            if active.as_ref().map(|(i, st)| (i.as_str(), st.as_str())) != g.active_claim {
                return Ok(Settled::Stale);
            }
            if let Some((patient, date, seen)) = &g.visits {
                let mut now: Vec<String> = sqlx::query_scalar(
                    "SELECT session_id FROM claims WHERE active = 1 AND patient_id = $1 AND service_date = $2 AND session_id <> $3 AND frequency <> '8'",
                )
                .bind(*patient)
                .bind(*date)
                .bind(g.session_id)
                .fetch_all(&mut *tx)
                .await?;
                now.sort();
                if &now != seen {
                    return Ok(Settled::Stale);
                }
            }
            if let Settlement::Change { retire, new, reason } = s {
                if let (Some(_), Some((patient, date, _))) = (&retire, &g.visits) {
                    // A visit may have been freed: the student's other sessions that day without
                    // a claim (or with only a void) are looked at again.
                    sqlx::query(REOPEN_DAY).bind(*patient).bind(*date).bind(g.session_id).execute(&mut *tx).await?;
                }
                if let Some((old, to)) = retire {
                    let from: Option<String> = sqlx::query_scalar("SELECT status FROM claims WHERE id = $1 AND active = 1")
                        .bind(&old)
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(from) = from else { return Ok(Settled::Stale) };
                    // The status read before deciding must still hold (a batch may have taken
                    // the claim meanwhile: then it went to the payer and needs another answer).
                    let moved = sqlx::query(
                        "UPDATE claims SET status = $1, active = 0, updated_us = $2 WHERE id = $3 AND active = 1 AND status = $4",
                    )
                    .bind(to)
                    .bind(now_us)
                    .bind(&old)
                    .bind(&from)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if moved != 1 || g.active_claim.is_none_or(|(_, st)| st != from) {
                        return Ok(Settled::Stale);
                    }
                    sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, $4, $5, $6)")
                        .bind(&old)
                        .bind(now_us)
                        .bind(actor)
                        .bind(&from)
                        .bind(to)
                        .bind(&reason)
                        .execute(&mut *tx)
                        .await?;
                }
                if let Some(c) = new {
                    let r = &c.row;
                    sqlx::query(
                        "INSERT INTO claims (id, pcn, session_id, session_version, patient_id, service_date, site_id, lea_id, program, program_version, form, \
                         biller, payer, rendering_npi, frequency, replaces, payer_claim_number, status, active, charge_cents, expected_cents, plan, resource, \
                         batch_id, created_us, updated_us, visit_category) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, 'ready', 1, $18, $19, $20, $21, NULL, $22, $22, $23)",
                    )
                    .bind(&r.id)
                    .bind(&r.pcn)
                    .bind(&r.session_id)
                    .bind(r.session_version)
                    .bind(&r.patient_id)
                    .bind(&r.service_date)
                    .bind(&r.site_id)
                    .bind(&r.lea_id)
                    .bind(&r.program)
                    .bind(&r.program_version)
                    .bind(&r.form)
                    .bind(&r.biller)
                    .bind(&r.payer)
                    .bind(&r.rendering_npi)
                    .bind(&r.frequency)
                    .bind(&r.replaces)
                    .bind(&r.payer_claim_number)
                    .bind(r.charge_cents)
                    .bind(r.expected_cents)
                    .bind(&r.plan)
                    .bind(&r.resource)
                    .bind(now_us)
                    .bind(&r.visit_category)
                    .execute(&mut *tx)
                    .await?;
                    for l in &c.lines {
                        sqlx::query(
                            "INSERT INTO claim_lines (claim_id, line_no, line_id, revenue_code, code, modifiers, units, charge_cents, expected_cents, informational) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                        )
                        .bind(&r.id)
                        .bind(l.line_no)
                        .bind(&l.line_id)
                        .bind(&l.revenue_code)
                        .bind(&l.code)
                        .bind(&l.modifiers)
                        .bind(l.units)
                        .bind(l.charge_cents)
                        .bind(l.expected_cents)
                        .bind(i64::from(l.informational))
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, NULL, 'ready', $4)")
                        .bind(&r.id)
                        .bind(now_us)
                        .bind(actor)
                        .bind(&reason)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
        });
        Ok(Settled::Done)
    }
}

/// Filters of a claim listing.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClaimFilter<'a> {
    /// Session.
    pub session_id: Option<&'a str>,
    /// Status.
    pub status: Option<&'a str>,
    /// Patient id.
    pub patient_id: Option<&'a str>,
    /// CLM01.
    pub pcn: Option<&'a str>,
    /// Batch.
    pub batch_id: Option<&'a str>,
}

/// An X12 batch as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[allow(missing_docs)]
pub struct BatchRow {
    pub id: String,
    pub payer: String,
    pub biller: String,
    pub implementation: String,
    pub isa_control: i64,
    pub gs_control: i64,
    pub st_control: String,
    pub claim_count: i64,
    pub total_cents: i64,
    pub x12: String,
    pub status: String,
    pub created_by: String,
    pub created_us: i64,
    pub attempts: i64,
    pub next_attempt_us: Option<i64>,
    pub queued_us: Option<i64>,
    pub last_error: Option<String>,
    pub submitted_us: Option<i64>,
}

const BATCH_COLUMNS: &str = "id, payer, biller, implementation, isa_control, gs_control, st_control, claim_count, total_cents, x12, status, created_by, \
     created_us, attempts, next_attempt_us, queued_us, last_error, submitted_us";

impl Store {
    /// Claims ready to batch: active, status `ready`, and (for replacements and voids) with the
    /// payer's claim number they refer to. Oldest first, at most `limit`.
    pub async fn ready_claims(&self, limit: i64) -> Result<Vec<ClaimRow>, StoreError> {
        let sql = format!(
            "SELECT {CLAIM_COLUMNS} FROM claims WHERE active = 1 AND status = 'ready' \
             AND (frequency = '1' OR payer_claim_number IS NOT NULL) ORDER BY created_us, id LIMIT $1"
        );
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await? }))
    }

    /// The next value of an X12 control-number counter (`isa`, `gs`); committed at once, so a
    /// number is never used twice (a failed batch leaves a gap, which X12 allows).
    pub async fn next_control_number(&self, name: &str) -> Result<i64, StoreError> {
        let begin = self.begin_write();
        Ok(with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let n: i64 = sqlx::query_scalar("UPDATE x12_counters SET value = CASE WHEN value >= 999999999 THEN 1 ELSE value + 1 END WHERE name = $1 RETURNING value")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        }))
    }

    /// Session records by (session id, version): the canonical JSON of each.
    pub async fn session_records(&self, keys: &[(&str, i64)]) -> Result<std::collections::HashMap<(String, i64), String>, StoreError> {
        let mut ids: Vec<&str> = keys.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let wanted: std::collections::HashSet<(&str, i64)> = keys.iter().copied().collect();
        let mut out = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "SELECT session_id, version, record FROM session_versions WHERE session_id IN ({})",
                super::fhir::placeholders(1, chunk.len(), matches!(self.db(), Db::Sqlite(_)))
            );
            let rows: Vec<(String, i64, String)> = with_db!(self.db(), pool => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for id in chunk {
                    q = q.bind(*id);
                }
                q.fetch_all(pool).await?
            });
            for (id, v, record) in rows {
                if wanted.contains(&(id.as_str(), v)) {
                    out.insert((id, v), record);
                }
            }
        }
        Ok(out)
    }

    /// Stores a batch and moves its claims from `ready` to `batched`; `false` (nothing written)
    /// when any of them is no longer ready (another batch took it, or it was replaced).
    pub async fn insert_batch(&self, b: &BatchRow, claim_ids: &[&str], actor: &str) -> Result<bool, StoreError> {
        let begin = self.begin_write();
        with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            sqlx::query(
                "INSERT INTO claim_batches (id, payer, biller, implementation, isa_control, gs_control, st_control, claim_count, total_cents, x12, status, created_by, \
                 created_us, attempts, next_attempt_us, queued_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 0, $14, $14)",
            )
            .bind(&b.id)
            .bind(&b.payer)
            .bind(&b.biller)
            .bind(&b.implementation)
            .bind(b.isa_control)
            .bind(b.gs_control)
            .bind(&b.st_control)
            .bind(b.claim_count)
            .bind(b.total_cents)
            .bind(&b.x12)
            .bind(&b.status)
            .bind(&b.created_by)
            .bind(b.created_us)
            .bind(b.next_attempt_us)
            .execute(&mut *tx)
            .await?;
            // Set-based: the claims in chunks (each must still be ready), then one event each.
            let mut moved = 0u64;
            for chunk in claim_ids.chunks(500) {
                let list = (4..4 + chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
                let sql = format!(
                    "UPDATE claims SET status = 'batched', batch_id = $1, updated_us = $2 WHERE status = $3 AND active = 1 AND id IN ({list})"
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&b.id).bind(b.created_us).bind("ready");
                for id in chunk {
                    q = q.bind(*id);
                }
                moved += q.execute(&mut *tx).await?.rows_affected();
            }
            if moved != claim_ids.len() as u64 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) \
                 SELECT id, $1, $2, 'ready', 'batched', $3 FROM claims WHERE batch_id = $4",
            )
            .bind(b.created_us)
            .bind(actor)
            .bind(format!("X12 batch {} (ISA {:09})", b.id, b.isa_control))
            .bind(&b.id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    /// One batch.
    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM claim_batches WHERE id = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? }))
    }

    /// Batches, newest first, optionally in one status.
    pub async fn batches(&self, status: Option<&str>, limit: i64) -> Result<Vec<BatchRow>, StoreError> {
        let sql =
            format!("SELECT {BATCH_COLUMNS} FROM claim_batches WHERE ($1 IS NULL OR status = $1) ORDER BY created_us DESC, id LIMIT $2");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(status).bind(limit).fetch_all(pool).await? }))
    }

    /// Takes the lease of a queued batch that is due and not leased by a live submitter.
    pub async fn lease_due_batch(&self, owner: &str, now_us: i64, lease_us: i64) -> Result<Option<BatchRow>, StoreError> {
        let pick = "SELECT id FROM claim_batches WHERE status = 'queued' AND next_attempt_us <= $1 \
                    AND (lease_until_us IS NULL OR lease_until_us < $1) ORDER BY next_attempt_us, id LIMIT 1";
        let id: Option<String> = with_db!(self.db(), pool => { sqlx::query_scalar(pick).bind(now_us).fetch_optional(pool).await? });
        let Some(id) = id else { return Ok(None) };
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE claim_batches SET lease_owner = $1, lease_until_us = $2 WHERE id = $3 AND status = 'queued' \
                 AND (lease_until_us IS NULL OR lease_until_us < $4)",
            )
            .bind(owner)
            .bind(now_us + lease_us)
            .bind(&id)
            .bind(now_us)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if n == 1 { self.batch(&id).await } else { Ok(None) }
    }

    /// The clearinghouse took the batch: it and its claims become `submitted`.
    pub async fn batch_submitted(&self, id: &str, owner: &str, actor: &str, now_us: i64) -> Result<bool, StoreError> {
        let begin = self.begin_write();
        Ok(with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let n = sqlx::query(
                "UPDATE claim_batches SET status = 'submitted', submitted_us = $1, attempts = attempts + 1, last_error = NULL, \
                 lease_owner = NULL, lease_until_us = NULL WHERE id = $2 AND lease_owner = $3 AND status = 'queued'",
            )
            .bind(now_us)
            .bind(id)
            .bind(owner)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) \
                 SELECT id, $1, $2, 'batched', 'submitted', $3 FROM claims WHERE batch_id = $4 AND status = 'batched'",
            )
            .bind(now_us)
            .bind(actor)
            .bind(format!("batch {id} accepted by the clearinghouse"))
            .bind(id)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE claims SET status = 'submitted', updated_us = $1 WHERE batch_id = $2 AND status = 'batched'")
                .bind(now_us)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            true
        }))
    }

    /// A submission attempt failed: retry at `next_attempt_us`, or, when `failed`, stop
    /// (status `failed`, visible to admins).
    pub async fn batch_attempt_failed(
        &self,
        id: &str,
        owner: &str,
        error: &str,
        next_attempt_us: i64,
        failed: bool,
    ) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE claim_batches SET attempts = attempts + 1, last_error = $1, next_attempt_us = $2, status = $3, \
                 lease_owner = NULL, lease_until_us = NULL WHERE id = $4 AND lease_owner = $5 AND status = 'queued'",
            )
            .bind(error)
            .bind(next_attempt_us)
            .bind(if failed { "failed" } else { "queued" })
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Queues a failed (or never sent) batch again; `false` when it is not failed or built.
    pub async fn batch_requeue(&self, id: &str, now_us: i64) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE claim_batches SET status = 'queued', attempts = 0, next_attempt_us = $1, queued_us = $1, lease_owner = NULL, lease_until_us = NULL \
                 WHERE id = $2 AND status IN ('failed', 'built')",
            )
            .bind(now_us)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }
}

impl Store {
    /// The batch whose functional group had this GS06 (999 AK102 names it).
    pub async fn batch_by_group(&self, gs_control: i64) -> Result<Option<BatchRow>, StoreError> {
        let sql = format!("SELECT {BATCH_COLUMNS} FROM claim_batches WHERE gs_control = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(gs_control).fetch_optional(pool).await? }))
    }

    /// A claim by CLM01.
    pub async fn claim_by_pcn(&self, pcn: &str) -> Result<Option<ClaimRow>, StoreError> {
        let sql = format!("SELECT {CLAIM_COLUMNS} FROM claims WHERE pcn = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(pcn).fetch_optional(pool).await? }))
    }

    /// Moves a claim to `to` if its status is one of `from`, recording the transition (and the
    /// payer's claim number, when given); `false` when it was in none of them.
    #[allow(clippy::too_many_arguments)]
    pub async fn claim_transition(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        reason: &str,
        actor: &str,
        payer_claim_number: Option<&str>,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let begin = self.begin_write();
        Ok(with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let status: Option<String> = sqlx::query_scalar("SELECT status FROM claims WHERE id = $1").bind(id).fetch_optional(&mut *tx).await?;
            let Some(status) = status.filter(|s| from.contains(&s.as_str())) else { return Ok(false) };
            let moved = sqlx::query(
                "UPDATE claims SET status = $1, updated_us = $2, payer_claim_number = COALESCE($3, payer_claim_number) WHERE id = $4 AND status = $5",
            )
            .bind(to)
            .bind(now_us)
            .bind(payer_claim_number)
            .bind(id)
            .bind(&status)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 {
                return Ok(false);
            }
            // A replacement or void the payer rejected: the claim it refers to still stands, so
            // the session is settled again (another replacement or void of that claim).
            if to == "rejected" {
                sqlx::query(
                    "UPDATE sessions SET billed_version = 0 WHERE id = (SELECT session_id FROM claims WHERE id = $1 AND frequency <> '1' AND active = 1)",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            // A void the payer accepted: the session may bill again (a new original).
            if to == "accepted" {
                sqlx::query(
                    "UPDATE sessions SET billed_version = 0 WHERE id = (SELECT session_id FROM claims WHERE id = $1 AND frequency = '8' AND active = 1)",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
            }
            // A replacement or void waiting for the payer's number of the claim it refers to.
            if let Some(n) = payer_claim_number {
                sqlx::query("UPDATE claims SET payer_claim_number = $1 WHERE replaces = $2 AND payer_claim_number IS NULL")
                    .bind(n)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(now_us)
                .bind(actor)
                .bind(&status)
                .bind(to)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            true
        }))
    }
}

impl Store {
    /// The payer answered about a claim this gateway already retired (replaced or voided): its
    /// claim number is kept (and handed to the successor waiting for it); a rejection means the
    /// payer never had it, so a successor not yet sent is withdrawn and the session is settled
    /// again (a new original). Whether anything changed.
    #[allow(clippy::too_many_arguments)]
    pub async fn ack_retired(
        &self,
        id: &str,
        rejected: bool,
        payer_claim_number: Option<&str>,
        reason: &str,
        actor: &str,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let begin = self.begin_write();
        Ok(with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let row: Option<(String, String, Option<String>)> =
                sqlx::query_as("SELECT status, session_id, payer_claim_number FROM claims WHERE id = $1 AND active = 0")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some((status, session, known)) = row.filter(|(st, _, _)| matches!(st.as_str(), "replaced" | "voided")) else {
                return Ok(false);
            };
            let mut changed = false;
            if let Some(n) = payer_claim_number.filter(|n| known.as_deref() != Some(*n)) {
                sqlx::query("UPDATE claims SET payer_claim_number = $1, updated_us = $2 WHERE id = $3")
                    .bind(n)
                    .bind(now_us)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE claims SET payer_claim_number = $1 WHERE replaces = $2 AND payer_claim_number IS NULL")
                    .bind(n)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, $4, $4, $5)")
                    .bind(id)
                    .bind(now_us)
                    .bind(actor)
                    .bind(&status)
                    .bind(format!("{reason}; payer claim number {n}"))
                    .execute(&mut *tx)
                    .await?;
                changed = true;
            }
            if rejected {
                sqlx::query("UPDATE claims SET status = 'rejected', updated_us = $1 WHERE id = $2").bind(now_us).bind(id).execute(&mut *tx).await?;
                sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, $4, 'rejected', $5)")
                    .bind(id)
                    .bind(now_us)
                    .bind(actor)
                    .bind(&status)
                    .bind(reason)
                    .execute(&mut *tx)
                    .await?;
                let successors: Vec<(String, String)> =
                    sqlx::query_as("SELECT id, status FROM claims WHERE replaces = $1 AND active = 1 AND status IN ('ready', 'held')")
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                for (s, st) in successors {
                    sqlx::query("UPDATE claims SET status = 'cancelled', active = 0, updated_us = $1 WHERE id = $2")
                        .bind(now_us)
                        .bind(&s)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, $4, 'cancelled', $5)")
                        .bind(&s)
                        .bind(now_us)
                        .bind(actor)
                        .bind(&st)
                        .bind("the claim it refers to was rejected by the payer; the session is billed again")
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("UPDATE sessions SET billed_version = 0 WHERE id = $1").bind(&session).execute(&mut *tx).await?;
                // Withdrawing the successor may free the day's visit for another session.
                let day: Option<(Option<String>, Option<String>)> =
                    sqlx::query_as("SELECT patient_id, service_date FROM sessions WHERE id = $1").bind(&session).fetch_optional(&mut *tx).await?;
                if let Some((Some(patient), Some(date))) = day {
                    sqlx::query(REOPEN_DAY).bind(&patient).bind(&date).bind(&session).execute(&mut *tx).await?;
                }
                changed = true;
            }
            tx.commit().await?;
            changed
        }))
    }

    /// Puts a ready claim on hold: it cannot be written to X12 as it is (the reason says why);
    /// an amendment of its session replaces it.
    pub async fn hold_claim(&self, id: &str, reason: &str, actor: &str, now_us: i64) -> Result<bool, StoreError> {
        self.claim_transition(id, &["ready"], "held", reason, actor, None, now_us).await
    }
}
