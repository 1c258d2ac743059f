//! Remittances: the rows 835 posting writes (the payment, each claim payment and service line,
//! the append-only claim and provider ledgers, the exceptions queue) and what reports read.
//!
//! One 835 transaction set is posted in one database transaction ([`RemitTx`]), streamed in
//! chunks of claims with multi-row statements, so a file of any size is posted with bounded
//! memory and either all of a payment is posted or none of it. The same payment twice (payer +
//! TRN02) is refused by a unique index, so re-posting changes nothing even across instances.

use std::collections::HashMap;

use super::fhir::{placeholders, values_sql};
use super::{Store, StoreError, with_db};

/// A database transaction on either backend.
pub enum RemitTx {
    /// SQLite.
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
}

macro_rules! with_tx {
    ($tx:expr, $t:ident => $body:expr) => {
        match $tx {
            RemitTx::Sqlite($t) => $body,
            RemitTx::Postgres($t) => $body,
        }
    };
}

/// The payment (BPR/TRN) as first written; totals are set when it ends.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
#[allow(missing_docs)]
pub struct RemittanceRow {
    pub id: String,
    pub payer: String,
    pub trace_number: String,
    pub payer_name: String,
    pub payee_id: Option<String>,
    pub control_number: String,
    pub handling: String,
    pub method: String,
    pub credit_debit: String,
    pub payment_date: Option<String>,
    /// BPR02, negative for a debit.
    pub paid_cents: i64,
    pub claims_paid_cents: i64,
    pub charge_cents: i64,
    pub provider_adjustments_cents: i64,
    pub claim_count: i64,
    pub matched: i64,
    pub unmatched: i64,
    /// 1 when BPR02 = Σ CLP04 − Σ PLB.
    pub balanced: i64,
    /// JSON list of strings.
    pub problems: String,
    pub received_by: String,
    pub received_us: i64,
}

const REMITTANCE_COLUMNS: &str = "id, payer, trace_number, payer_name, payee_id, control_number, handling, method, credit_debit, payment_date, paid_cents, \
     claims_paid_cents, charge_cents, provider_adjustments_cents, claim_count, matched, unmatched, balanced, problems, received_by, received_us";

/// A claim the 835 may be posted to, with its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostTarget {
    /// Claim id.
    pub id: String,
    /// CLM01.
    pub pcn: String,
    /// Status now.
    pub status: String,
    /// Active claim of its session.
    pub active: bool,
    /// Date of service.
    pub service_date: String,
    /// Charge.
    pub charge_cents: i64,
    /// Lines: (line_no, line_id, revenue code, code, modifiers, charge).
    pub lines: Vec<TargetLine>,
}

/// A claim line as matching sees it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
#[allow(missing_docs)]
pub struct TargetLine {
    pub claim_id: String,
    pub line_no: i64,
    pub line_id: String,
    pub revenue_code: Option<String>,
    pub code: String,
    pub modifiers: String,
    pub charge_cents: i64,
}

/// A CLP row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
#[allow(missing_docs)]
pub struct PaymentRow {
    pub id: String,
    pub remittance_id: String,
    pub ordinal: i64,
    pub claim_id: Option<String>,
    pub pcn: String,
    pub status: String,
    pub charge_cents: i64,
    pub paid_cents: i64,
    pub patient_responsibility_cents: i64,
    pub payer_claim_number: Option<String>,
    pub facility: Option<String>,
    pub frequency: Option<String>,
    /// RARC joined with ':'.
    pub remarks: String,
    pub segment: i64,
    pub posted_us: i64,
}

/// An SVC row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
#[allow(missing_docs)]
pub struct PaymentLineRow {
    pub payment_id: String,
    pub line_no: i64,
    pub claim_line_no: Option<i64>,
    pub matched_by: String,
    pub qualifier: String,
    pub procedure_code: String,
    pub modifiers: String,
    pub revenue_code: Option<String>,
    pub units: Option<String>,
    pub submitted_procedure: Option<String>,
    pub service_date: Option<String>,
    pub line_id: Option<String>,
    pub charge_cents: i64,
    pub paid_cents: i64,
    pub allowed_cents: Option<i64>,
    pub remarks: String,
    pub segment: i64,
}

/// A claim ledger entry.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
#[allow(missing_docs)]
pub struct LedgerRow {
    pub remittance_id: String,
    pub payment_id: String,
    pub claim_id: Option<String>,
    pub line_no: Option<i64>,
    /// paid | adjustment | write-off.
    pub kind: String,
    pub group_code: Option<String>,
    pub reason: Option<String>,
    pub quantity: Option<String>,
    pub amount_cents: i64,
    pub actor: String,
    pub at_us: i64,
}

/// A provider ledger entry (PLB).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
#[allow(missing_docs)]
pub struct ProviderLedgerRow {
    pub remittance_id: String,
    pub provider: String,
    pub fiscal_date: Option<String>,
    pub reason: String,
    pub reference: Option<String>,
    pub amount_cents: i64,
    pub at_us: i64,
}

/// An exceptions-queue item.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
#[allow(missing_docs)]
pub struct ExceptionRow {
    pub id: String,
    pub remittance_id: String,
    pub payment_id: Option<String>,
    pub claim_id: Option<String>,
    pub line_no: Option<i64>,
    pub kind: String,
    pub detail: String,
    pub amount_cents: i64,
    pub status: String,
    pub resolution: Option<String>,
    pub resolved_by: Option<String>,
    pub resolved_us: Option<i64>,
    pub created_us: i64,
}

/// A claim's balance ($1 the claim): charge − Σ ledger.
const BALANCE: &str = "SELECT c.charge_cents - CAST(COALESCE((SELECT SUM(amount_cents) FROM remit_ledger l WHERE l.claim_id = c.id), 0) AS BIGINT) FROM claims c WHERE c.id = $1";

const EXCEPTION_COLUMNS: &str = "id, remittance_id, payment_id, claim_id, line_no, kind, detail, amount_cents, status, resolution, resolved_by, resolved_us, created_us";

/// A claim status change posting decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    /// Claim.
    pub claim_id: String,
    /// From (as read).
    pub from: String,
    /// To.
    pub to: String,
    /// Why (the lifecycle event).
    pub reason: String,
}

/// What one chunk of claims writes.
#[derive(Debug, Default, Clone)]
pub struct ChunkRows {
    /// CLP rows.
    pub payments: Vec<PaymentRow>,
    /// SVC rows.
    pub lines: Vec<PaymentLineRow>,
    /// Ledger entries.
    pub ledger: Vec<LedgerRow>,
    /// Exceptions.
    pub exceptions: Vec<ExceptionRow>,
    /// Payer claim numbers learned: (claim id, CLP07).
    pub payer_numbers: Vec<(String, String)>,
}

/// Rows per multi-row statement: keeps every statement under both backends' bind limits
/// (SQLite 32,766; PostgreSQL 65,535) for tables of up to 18 columns.
const ROWS_PER_STATEMENT: usize = 1_500;

/// The page cache of the connection posting a payment, in KiB, for the transaction (SQLite):
/// a posting touches each page about once and spills dirty pages to the WAL, so a small cache
/// costs it nothing measurable, and a 200 MB 835 posts within its memory bound
/// (`cargo bench --bench remit_post`). Set back to the pool's size before the commit.
const POSTING_CACHE_KIB: i64 = 4_096;

impl Store {
    /// Begins posting a payment: writes its row in a new transaction. `None` when the payer's
    /// TRN02 was posted before (nothing is written).
    pub async fn begin_remittance(&self, r: &RemittanceRow) -> Result<Option<RemitTx>, StoreError> {
        let begin = self.begin_write();
        let sql = format!(
            "INSERT INTO remittances ({REMITTANCE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) ON CONFLICT (payer, trace_number) DO NOTHING"
        );
        macro_rules! go {
            ($pool:expr, $variant:ident) => {{
                let mut tx = $pool.begin_with(begin).await?;
                let n = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(&r.id)
                    .bind(&r.payer)
                    .bind(&r.trace_number)
                    .bind(&r.payer_name)
                    .bind(&r.payee_id)
                    .bind(&r.control_number)
                    .bind(&r.handling)
                    .bind(&r.method)
                    .bind(&r.credit_debit)
                    .bind(&r.payment_date)
                    .bind(r.paid_cents)
                    .bind(r.claims_paid_cents)
                    .bind(r.charge_cents)
                    .bind(r.provider_adjustments_cents)
                    .bind(r.claim_count)
                    .bind(r.matched)
                    .bind(r.unmatched)
                    .bind(r.balanced)
                    .bind(&r.problems)
                    .bind(&r.received_by)
                    .bind(r.received_us)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 1 { Some(RemitTx::$variant(tx)) } else { None }
            }};
        }
        let shrink = format!("PRAGMA cache_size = -{POSTING_CACHE_KIB}");
        Ok(match self.db() {
            super::Db::Sqlite(pool) => {
                let mut tx = go!(pool, Sqlite);
                if let Some(RemitTx::Sqlite(t)) = tx.as_mut() {
                    sqlx::query(sqlx::AssertSqlSafe(shrink)).execute(&mut **t).await?;
                }
                tx
            }
            super::Db::Postgres(pool) => go!(pool, Postgres),
        })
    }

    /// A payment by payer and TRN02.
    pub async fn remittance_by_trace(&self, payer: &str, trace: &str) -> Result<Option<RemittanceRow>, StoreError> {
        let sql = format!("SELECT {REMITTANCE_COLUMNS} FROM remittances WHERE payer = $1 AND trace_number = $2");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(payer).bind(trace).fetch_optional(pool).await? }))
    }

    /// A payment by id.
    pub async fn remittance(&self, id: &str) -> Result<Option<RemittanceRow>, StoreError> {
        let sql = format!("SELECT {REMITTANCE_COLUMNS} FROM remittances WHERE id = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? }))
    }

    /// Payments, newest first.
    pub async fn remittances(&self, limit: i64) -> Result<Vec<RemittanceRow>, StoreError> {
        let sql = format!("SELECT {REMITTANCE_COLUMNS} FROM remittances ORDER BY received_us DESC, id LIMIT $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(pool).await? }))
    }

    /// The claim payments of a payment (in file order) or of a claim (oldest first).
    pub async fn claim_payments(
        &self,
        remittance_id: Option<&str>,
        claim_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<PaymentRow>, StoreError> {
        let sql = "SELECT id, remittance_id, ordinal, claim_id, pcn, status, charge_cents, paid_cents, patient_responsibility_cents, payer_claim_number, \
                   facility, frequency, remarks, segment, posted_us FROM claim_payments \
                   WHERE ($1 IS NULL OR remittance_id = $1) AND ($2 IS NULL OR claim_id = $2) ORDER BY posted_us, remittance_id, ordinal LIMIT $3";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(remittance_id).bind(claim_id).bind(limit).fetch_all(pool).await? }))
    }

    /// One claim payment.
    pub async fn claim_payment(&self, id: &str) -> Result<Option<PaymentRow>, StoreError> {
        let sql = "SELECT id, remittance_id, ordinal, claim_id, pcn, status, charge_cents, paid_cents, patient_responsibility_cents, payer_claim_number, \
                   facility, frequency, remarks, segment, posted_us FROM claim_payments WHERE id = $1";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(id).fetch_optional(pool).await? }))
    }

    /// The service lines of claim payments.
    pub async fn payment_lines(&self, payment_ids: &[&str]) -> Result<Vec<PaymentLineRow>, StoreError> {
        if payment_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT payment_id, line_no, claim_line_no, matched_by, qualifier, procedure_code, modifiers, revenue_code, units, submitted_procedure, \
             service_date, line_id, charge_cents, paid_cents, allowed_cents, remarks, segment FROM payment_lines WHERE payment_id IN ({}) ORDER BY payment_id, line_no",
            placeholders(1, payment_ids.len(), matches!(self.db(), super::Db::Sqlite(_)))
        );
        Ok(with_db!(self.db(), pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for id in payment_ids { q = q.bind(*id); }
            q.fetch_all(pool).await?
        }))
    }

    /// The ledger entries of claim payments.
    pub async fn ledger_of_payments(&self, payment_ids: &[&str]) -> Result<Vec<LedgerRow>, StoreError> {
        if payment_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT remittance_id, payment_id, claim_id, line_no, kind, group_code, reason, quantity, amount_cents, actor, at_us FROM remit_ledger \
             WHERE payment_id IN ({}) ORDER BY seq",
            placeholders(1, payment_ids.len(), matches!(self.db(), super::Db::Sqlite(_)))
        );
        Ok(with_db!(self.db(), pool => {
            let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for id in payment_ids { q = q.bind(*id); }
            q.fetch_all(pool).await?
        }))
    }

    /// The provider ledger of a payment.
    pub async fn provider_ledger(&self, remittance_id: &str) -> Result<Vec<ProviderLedgerRow>, StoreError> {
        let sql = "SELECT remittance_id, provider, fiscal_date, reason, reference, amount_cents, at_us FROM provider_ledger WHERE remittance_id = $1 ORDER BY seq";
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sql).bind(remittance_id).fetch_all(pool).await? }))
    }

    /// A claim's balance: charge − Σ paid − Σ adjustments.
    pub async fn claim_balance(&self, claim_id: &str) -> Result<Option<i64>, StoreError> {
        Ok(with_db!(self.db(), pool => { sqlx::query_scalar(BALANCE).bind(claim_id).fetch_optional(pool).await? }))
    }

    /// Exceptions, oldest first, by status (`open`, `resolved`, or all) and payment.
    pub async fn remit_exceptions(
        &self,
        status: Option<&str>,
        remittance_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ExceptionRow>, StoreError> {
        let sql = format!(
            "SELECT {EXCEPTION_COLUMNS} FROM remit_exceptions WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR remittance_id = $2) ORDER BY created_us, id LIMIT $3"
        );
        Ok(
            with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(status).bind(remittance_id).bind(limit).fetch_all(pool).await? }),
        )
    }

    /// The exceptions of one claim.
    pub async fn claim_exceptions(&self, claim_id: &str) -> Result<Vec<ExceptionRow>, StoreError> {
        let sql = format!("SELECT {EXCEPTION_COLUMNS} FROM remit_exceptions WHERE claim_id = $1 ORDER BY created_us, id");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(claim_id).fetch_all(pool).await? }))
    }

    /// One exception.
    pub async fn remit_exception(&self, id: &str) -> Result<Option<ExceptionRow>, StoreError> {
        let sql = format!("SELECT {EXCEPTION_COLUMNS} FROM remit_exceptions WHERE id = $1");
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? }))
    }

    /// Resolves an open exception. With `attach`, an unmatched claim payment is posted to that
    /// claim (its ledger entries, which had no claim, get it: filled once, never changed);
    /// with `write_off`, the claim's remaining balance is written off (a ledger entry). With
    /// `close`, the claim moves to `closed` (from `adjudicated`). `false` when the exception
    /// was not open.
    #[allow(clippy::too_many_arguments)]
    pub async fn resolve_exception(
        &self,
        id: &str,
        resolution: &str,
        attach: Option<&str>,
        write_off: bool,
        close: bool,
        actor: &str,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let begin = self.begin_write();
        Ok(with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let row: Option<(Option<String>, Option<String>, String)> =
                sqlx::query_as("SELECT payment_id, claim_id, remittance_id FROM remit_exceptions WHERE id = $1 AND status = 'open'")
                    .bind(id).fetch_optional(&mut *tx).await?;
            let Some((payment, mut claim, remittance)) = row else { return Ok(false) };
            if let (Some(target), Some(payment)) = (attach, payment.as_deref()) {
                let n = sqlx::query("UPDATE claim_payments SET claim_id = $1 WHERE id = $2 AND claim_id IS NULL")
                    .bind(target).bind(payment).execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    sqlx::query("UPDATE remit_ledger SET claim_id = $1 WHERE payment_id = $2 AND claim_id IS NULL")
                        .bind(target).bind(payment).execute(&mut *tx).await?;
                    sqlx::query("UPDATE remit_exceptions SET claim_id = $1 WHERE payment_id = $2 AND claim_id IS NULL")
                        .bind(target).bind(payment).execute(&mut *tx).await?;
                    claim = Some(target.to_string());
                }
            }
            if let (true, Some(c)) = (write_off, claim.as_deref()) {
                let balance: Option<i64> = sqlx::query_scalar(BALANCE).bind(c).fetch_optional(&mut *tx).await?;
                if let Some(b) = balance.filter(|b| *b != 0) {
                    sqlx::query("INSERT INTO remit_ledger (remittance_id, payment_id, claim_id, line_no, kind, group_code, reason, quantity, amount_cents, actor, at_us) \
                                 VALUES ($1, $2, $3, NULL, 'write-off', NULL, $4, NULL, $5, $6, $7)")
                        .bind(&remittance).bind(payment.as_deref().unwrap_or_default()).bind(c).bind(resolution).bind(b).bind(actor).bind(now_us)
                        .execute(&mut *tx).await?;
                }
            }
            if let (true, Some(c)) = (close, claim.as_deref()) {
                let n = sqlx::query("UPDATE claims SET status = 'closed', updated_us = $1 WHERE id = $2 AND status = 'adjudicated'")
                    .bind(now_us).bind(c).execute(&mut *tx).await?.rows_affected();
                if n == 1 {
                    sqlx::query("INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES ($1, $2, $3, 'adjudicated', 'closed', $4)")
                        .bind(c).bind(now_us).bind(actor).bind(format!("exception {id} resolved: {resolution}")).execute(&mut *tx).await?;
                }
            }
            sqlx::query("UPDATE remit_exceptions SET status = 'resolved', resolution = $1, resolved_by = $2, resolved_us = $3 WHERE id = $4")
                .bind(resolution).bind(actor).bind(now_us).bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            true
        }))
    }
}

/// A report dimension: the SQL expression over `claims c` that keys a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// Payer.
    Payer,
    /// School site.
    Site,
    /// Rendering clinician (NPI).
    Clinician,
    /// Month of service (YYYY-MM).
    Month,
    /// Program.
    Program,
    /// Site and month (`site|YYYY-MM`).
    SiteMonth,
}

impl Dim {
    fn sql(self) -> &'static str {
        match self {
            Dim::Payer => "c.payer",
            Dim::Site => "c.site_id",
            Dim::Clinician => "c.rendering_npi",
            Dim::Month => "substr(c.service_date, 1, 7)",
            Dim::Program => "c.program",
            Dim::SiteMonth => "c.site_id || '|' || substr(c.service_date, 1, 7)",
        }
    }
}

/// The claims reports count: each session's active claim that went to the payer (voids and
/// claims not yet sent aside), by date of service ($1 from, $2 to: NULL for open) and, when
/// `$3` is not NULL, only the programs listed in it (comma-separated, with leading and
/// trailing commas).
const REPORT_CLAIMS: &str = "c.active = 1 AND c.frequency <> '8' AND c.status IN ('batched', 'submitted', 'accepted', 'rejected', 'adjudicated', 'closed') \
     AND ($1 IS NULL OR c.service_date >= $1) AND ($2 IS NULL OR c.service_date <= $2) AND ($3 IS NULL OR $3 LIKE '%,' || c.program || ',%')";

/// Claims by key: (key, claims, Σ charge, Σ expected).
pub type ClaimTotals = (String, i64, i64, i64);
/// Ledger sums by key: (key, kind, group, reason, Σ amount).
pub type LedgerTotals = (String, String, Option<String>, Option<String>, i64);

/// Report filter.
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    /// First date of service.
    pub from: Option<String>,
    /// Last date of service.
    pub to: Option<String>,
    /// Only these programs.
    pub programs: Option<Vec<String>>,
}

impl ReportFilter {
    fn programs(&self) -> Option<String> {
        self.programs.as_ref().map(|p| format!(",{},", p.join(",")))
    }
}

impl Store {
    /// Claims per key.
    pub async fn report_claims(&self, dim: Dim, f: &ReportFilter) -> Result<Vec<ClaimTotals>, StoreError> {
        let sql = format!(
            "SELECT {k} AS k, COUNT(*), CAST(COALESCE(SUM(c.charge_cents), 0) AS BIGINT), CAST(COALESCE(SUM(c.expected_cents), 0) AS BIGINT) \
             FROM claims c WHERE {REPORT_CLAIMS} GROUP BY {k} ORDER BY 1",
            k = dim.sql()
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&f.from).bind(&f.to).bind(f.programs()).fetch_all(pool).await?
        }))
    }

    /// Ledger entries of the report's claims per key, kind, group and reason.
    pub async fn report_ledger(&self, dim: Dim, f: &ReportFilter) -> Result<Vec<LedgerTotals>, StoreError> {
        let sql = format!(
            "SELECT {k} AS k, l.kind, l.group_code, l.reason, CAST(SUM(l.amount_cents) AS BIGINT) FROM remit_ledger l JOIN claims c ON c.id = l.claim_id \
             WHERE {REPORT_CLAIMS} GROUP BY {k}, l.kind, l.group_code, l.reason ORDER BY 1",
            k = dim.sql()
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&f.from).bind(&f.to).bind(f.programs()).fetch_all(pool).await?
        }))
    }

    /// Outstanding claims per key and date of service: (key, date, claims, Σ outstanding).
    pub async fn report_outstanding(&self, dim: Dim, f: &ReportFilter) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let sql = format!(
            "WITH b AS (SELECT {k} AS k, c.service_date AS d, \
                 c.charge_cents - CAST(COALESCE((SELECT SUM(l.amount_cents) FROM remit_ledger l WHERE l.claim_id = c.id), 0) AS BIGINT) AS due \
                 FROM claims c WHERE {REPORT_CLAIMS}) \
             SELECT k, d, COUNT(*), CAST(SUM(due) AS BIGINT) FROM b WHERE due <> 0 GROUP BY k, d ORDER BY k, d",
            k = dim.sql()
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&f.from).bind(&f.to).bind(f.programs()).fetch_all(pool).await?
        }))
    }

    /// Adjustments other than patient responsibility by group and reason: (group, reason,
    /// claims, lines, Σ amount).
    pub async fn report_adjustments(&self, f: &ReportFilter) -> Result<Vec<(String, String, i64, i64, i64)>, StoreError> {
        let sql = format!(
            "SELECT l.group_code, l.reason, COUNT(DISTINCT l.claim_id), CAST(SUM(CASE WHEN l.line_no IS NULL THEN 0 ELSE 1 END) AS BIGINT), \
             CAST(SUM(l.amount_cents) AS BIGINT) FROM remit_ledger l JOIN claims c ON c.id = l.claim_id \
             WHERE {REPORT_CLAIMS} AND l.kind = 'adjustment' AND l.group_code <> 'PR' GROUP BY l.group_code, l.reason"
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&f.from).bind(&f.to).bind(f.programs()).fetch_all(pool).await?
        }))
    }

    /// The remark codes that came with adjustments: (group, reason, remarks joined with ':').
    pub async fn report_adjustment_remarks(&self, f: &ReportFilter) -> Result<Vec<(String, String, String)>, StoreError> {
        let sql = format!(
            "SELECT l.group_code, l.reason, COALESCE(pl.remarks, cp.remarks) FROM remit_ledger l JOIN claims c ON c.id = l.claim_id \
             JOIN claim_payments cp ON cp.id = l.payment_id LEFT JOIN payment_lines pl ON pl.payment_id = l.payment_id AND pl.line_no = l.line_no \
             WHERE {REPORT_CLAIMS} AND l.kind = 'adjustment' AND l.group_code <> 'PR' AND COALESCE(pl.remarks, cp.remarks) <> '' \
             GROUP BY l.group_code, l.reason, COALESCE(pl.remarks, cp.remarks)"
        );
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(&f.from).bind(&f.to).bind(f.programs()).fetch_all(pool).await?
        }))
    }

    /// Sessions per site and month of service: (site, month, sessions, billable, billable
    /// minutes), and the not-billable ones by reason codes: (site, month, reasons, sessions;
    /// `not-settled` when billing has not decided yet).
    #[allow(clippy::type_complexity)]
    pub async fn report_sessions(
        &self,
        f: &ReportFilter,
    ) -> Result<(Vec<(String, String, i64, i64, i64)>, Vec<(String, String, String, i64)>), StoreError> {
        let range = "service_date IS NOT NULL AND ($1 IS NULL OR service_date >= $1) AND ($2 IS NULL OR service_date <= $2)";
        let totals = format!(
            "SELECT site_id, substr(service_date, 1, 7), COUNT(*), CAST(SUM(CASE WHEN billing_reasons = '' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN billing_reasons = '' THEN COALESCE(billing_minutes, 0) ELSE 0 END) AS BIGINT) FROM sessions WHERE {range} \
             GROUP BY site_id, substr(service_date, 1, 7) ORDER BY 1, 2"
        );
        let reasons = format!(
            "SELECT site_id, substr(service_date, 1, 7), COALESCE(billing_reasons, 'not-settled'), COUNT(*) FROM sessions \
             WHERE {range} AND (billing_reasons IS NULL OR billing_reasons <> '') GROUP BY site_id, substr(service_date, 1, 7), COALESCE(billing_reasons, 'not-settled')"
        );
        Ok(with_db!(self.db(), pool => {
            let a = sqlx::query_as(sqlx::AssertSqlSafe(totals)).bind(&f.from).bind(&f.to).fetch_all(pool).await?;
            let b = sqlx::query_as(sqlx::AssertSqlSafe(reasons)).bind(&f.from).bind(&f.to).fetch_all(pool).await?;
            (a, b)
        }))
    }

    /// Claims of a site (drill-down), newest date of service first.
    pub async fn claims_of_site(&self, site: &str, limit: i64) -> Result<Vec<super::ClaimRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM claims WHERE site_id = $1 ORDER BY service_date DESC, created_us DESC LIMIT $2",
            super::claims::CLAIM_COLUMNS
        );
        Ok(with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(site).bind(limit).fetch_all(pool).await? }))
    }
}

impl RemitTx {
    /// Whether this backend's statements take `?` placeholders: SQLite looks a numbered
    /// parameter's name up in a list, so binding n `$N` parameters costs n² (see `fhir.rs`).
    fn positional(&self) -> bool {
        matches!(self, RemitTx::Sqlite(_))
    }

    /// The claims with these CLM01s, with their lines.
    pub async fn targets(&mut self, pcns: &[&str]) -> Result<HashMap<String, PostTarget>, StoreError> {
        let mut out: HashMap<String, PostTarget> = HashMap::with_capacity(pcns.len());
        for chunk in pcns.chunks(ROWS_PER_STATEMENT * 4) {
            let sql = format!(
                "SELECT id, pcn, status, active, service_date, charge_cents FROM claims WHERE pcn IN ({})",
                placeholders(1, chunk.len(), self.positional())
            );
            let rows: Vec<(String, String, String, i64, String, i64)> = with_tx!(self, t => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for p in chunk { q = q.bind(*p); }
                q.fetch_all(&mut **t).await?
            });
            for (id, pcn, status, active, service_date, charge_cents) in rows {
                out.insert(pcn.clone(), PostTarget { id, pcn, status, active: active == 1, service_date, charge_cents, lines: Vec::new() });
            }
        }
        let by_id: HashMap<String, String> = out.values().map(|t| (t.id.clone(), t.pcn.clone())).collect();
        let ids: Vec<&str> = by_id.keys().map(String::as_str).collect();
        for chunk in ids.chunks(ROWS_PER_STATEMENT * 4) {
            let sql = format!(
                "SELECT claim_id, line_no, line_id, revenue_code, code, modifiers, charge_cents FROM claim_lines WHERE claim_id IN ({}) ORDER BY claim_id, line_no",
                placeholders(1, chunk.len(), self.positional())
            );
            let rows: Vec<TargetLine> = with_tx!(self, t => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for p in chunk { q = q.bind(*p); }
                q.fetch_all(&mut **t).await?
            });
            for l in rows {
                if let Some(t) = by_id.get(&l.claim_id).and_then(|pcn| out.get_mut(pcn)) {
                    t.lines.push(l);
                }
            }
        }
        Ok(out)
    }

    /// Writes a chunk's rows with multi-row statements.
    pub async fn write_chunk(&mut self, rows: &ChunkRows) -> Result<(), StoreError> {
        for part in rows.payments.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO claim_payments (id, remittance_id, ordinal, claim_id, pcn, status, charge_cents, paid_cents, patient_responsibility_cents, \
                 payer_claim_number, facility, frequency, remarks, segment, posted_us) VALUES {}",
                values_sql(part.len(), 15, self.positional())
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for p in part {
                    q = q.bind(&p.id).bind(&p.remittance_id).bind(p.ordinal).bind(&p.claim_id).bind(&p.pcn).bind(&p.status).bind(p.charge_cents)
                        .bind(p.paid_cents).bind(p.patient_responsibility_cents).bind(&p.payer_claim_number).bind(&p.facility).bind(&p.frequency)
                        .bind(&p.remarks).bind(p.segment).bind(p.posted_us);
                }
                q.execute(&mut **t).await?;
            });
        }
        for part in rows.lines.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO payment_lines (payment_id, line_no, claim_line_no, matched_by, qualifier, procedure_code, modifiers, revenue_code, units, \
                 submitted_procedure, service_date, line_id, charge_cents, paid_cents, allowed_cents, remarks, segment) VALUES {}",
                values_sql(part.len(), 17, self.positional())
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for l in part {
                    q = q.bind(&l.payment_id).bind(l.line_no).bind(l.claim_line_no).bind(&l.matched_by).bind(&l.qualifier).bind(&l.procedure_code)
                        .bind(&l.modifiers).bind(&l.revenue_code).bind(&l.units).bind(&l.submitted_procedure).bind(&l.service_date).bind(&l.line_id)
                        .bind(l.charge_cents).bind(l.paid_cents).bind(l.allowed_cents).bind(&l.remarks).bind(l.segment);
                }
                q.execute(&mut **t).await?;
            });
        }
        for part in rows.ledger.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO remit_ledger (remittance_id, payment_id, claim_id, line_no, kind, group_code, reason, quantity, amount_cents, actor, at_us) VALUES {}",
                values_sql(part.len(), 11, self.positional())
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for e in part {
                    q = q.bind(&e.remittance_id).bind(&e.payment_id).bind(&e.claim_id).bind(e.line_no).bind(&e.kind).bind(&e.group_code)
                        .bind(&e.reason).bind(&e.quantity).bind(e.amount_cents).bind(&e.actor).bind(e.at_us);
                }
                q.execute(&mut **t).await?;
            });
        }
        self.insert_exceptions(&rows.exceptions).await?;
        for part in rows.payer_numbers.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE claims SET payer_claim_number = v.column2 FROM (VALUES {}) AS v WHERE claims.id = v.column1 \
                 AND (claims.payer_claim_number IS NULL OR claims.payer_claim_number <> v.column2)",
                values_sql(part.len(), 2, self.positional())
            );
            let ids = placeholders(1, part.len(), self.positional());
            // Replacements and voids waiting for the number of the claim they refer to.
            let successors = format!(
                "UPDATE claims SET payer_claim_number = (SELECT p.payer_claim_number FROM claims p WHERE p.id = claims.replaces) \
                 WHERE payer_claim_number IS NULL AND replaces IN ({ids})"
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for (id, n) in part { q = q.bind(id).bind(n); }
                q.execute(&mut **t).await?;
                let mut q = sqlx::query(sqlx::AssertSqlSafe(successors));
                for (id, _) in part { q = q.bind(id); }
                q.execute(&mut **t).await?;
            });
        }
        Ok(())
    }

    /// Writes exceptions.
    pub async fn insert_exceptions(&mut self, exceptions: &[ExceptionRow]) -> Result<(), StoreError> {
        for part in exceptions.chunks(ROWS_PER_STATEMENT) {
            let sql =
                format!("INSERT INTO remit_exceptions ({EXCEPTION_COLUMNS}) VALUES {}", values_sql(part.len(), 13, self.positional()));
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for x in part {
                    q = q.bind(&x.id).bind(&x.remittance_id).bind(&x.payment_id).bind(&x.claim_id).bind(x.line_no).bind(&x.kind).bind(&x.detail)
                        .bind(x.amount_cents).bind(&x.status).bind(&x.resolution).bind(&x.resolved_by).bind(x.resolved_us).bind(x.created_us);
                }
                q.execute(&mut **t).await?;
            });
        }
        Ok(())
    }

    /// Balances (charge − Σ ledger) of claims, as this transaction sees them.
    pub async fn balances(&mut self, claim_ids: &[&str]) -> Result<HashMap<String, i64>, StoreError> {
        let mut out = HashMap::with_capacity(claim_ids.len());
        for chunk in claim_ids.chunks(ROWS_PER_STATEMENT * 4) {
            let sql = format!(
                "SELECT c.id, c.charge_cents - CAST(COALESCE(SUM(l.amount_cents), 0) AS BIGINT) FROM claims c LEFT JOIN remit_ledger l ON l.claim_id = c.id \
                 WHERE c.id IN ({}) GROUP BY c.id, c.charge_cents",
                placeholders(1, chunk.len(), self.positional())
            );
            let rows: Vec<(String, i64)> = with_tx!(self, t => {
                let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql));
                for p in chunk { q = q.bind(*p); }
                q.fetch_all(&mut **t).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Moves claims through the given transitions, in order (a claim may move more than once:
    /// reversed, then paid again): each claim's status goes from its first `from` to its last
    /// `to` only if it is still in that first status (a claim another writer moved meanwhile
    /// keeps its status), and every step is recorded.
    pub async fn change_statuses(&mut self, changes: &[StatusChange], actor: &str, now_us: i64) -> Result<(), StoreError> {
        let mut net: Vec<(&str, &str, &str)> = Vec::new();
        let mut at: HashMap<&str, usize> = HashMap::new();
        for c in changes {
            match at.get(c.claim_id.as_str()) {
                Some(&i) => net[i].2 = c.to.as_str(),
                None => {
                    at.insert(c.claim_id.as_str(), net.len());
                    net.push((c.claim_id.as_str(), c.from.as_str(), c.to.as_str()));
                }
            }
        }
        let mut moved: std::collections::HashSet<String> = std::collections::HashSet::new();
        for part in net.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "UPDATE claims SET status = v.column3, updated_us = v.column4 FROM (VALUES {}) AS v WHERE claims.id = v.column1 \
                 AND claims.status = v.column2 RETURNING claims.id",
                values_sql(part.len(), 4, self.positional())
            );
            let ids: Vec<String> = with_tx!(self, t => {
                let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
                for (id, from, to) in part { q = q.bind(*id).bind(*from).bind(*to).bind(now_us); }
                q.fetch_all(&mut **t).await?
            });
            moved.extend(ids);
        }
        let changes: Vec<&StatusChange> = changes.iter().filter(|c| moved.contains(&c.claim_id)).collect();
        for part in changes.chunks(ROWS_PER_STATEMENT) {
            let events = format!(
                "INSERT INTO claim_events (claim_id, at_us, actor, from_status, to_status, reason) VALUES {}",
                values_sql(part.len(), 6, self.positional())
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(events));
                for c in part { q = q.bind(&c.claim_id).bind(now_us).bind(actor).bind(&c.from).bind(&c.to).bind(&c.reason); }
                q.execute(&mut **t).await?;
            });
        }
        Ok(())
    }

    /// Writes the PLB entries.
    pub async fn insert_provider_ledger(&mut self, rows: &[ProviderLedgerRow]) -> Result<(), StoreError> {
        for part in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO provider_ledger (remittance_id, provider, fiscal_date, reason, reference, amount_cents, at_us) VALUES {}",
                values_sql(part.len(), 7, self.positional())
            );
            with_tx!(self, t => {
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
                for p in part {
                    q = q.bind(&p.remittance_id).bind(&p.provider).bind(&p.fiscal_date).bind(&p.reason).bind(&p.reference).bind(p.amount_cents).bind(p.at_us);
                }
                q.execute(&mut **t).await?;
            });
        }
        Ok(())
    }

    /// Sets the payment's totals and commits.
    pub async fn finish(mut self, r: &RemittanceRow) -> Result<(), StoreError> {
        let sql = "UPDATE remittances SET claims_paid_cents = $1, charge_cents = $2, provider_adjustments_cents = $3, claim_count = $4, matched = $5, \
                   unmatched = $6, balanced = $7, problems = $8 WHERE id = $9";
        with_tx!(&mut self, t => {
            sqlx::query(sql).bind(r.claims_paid_cents).bind(r.charge_cents).bind(r.provider_adjustments_cents).bind(r.claim_count).bind(r.matched)
                .bind(r.unmatched).bind(r.balanced).bind(&r.problems).bind(&r.id).execute(&mut **t).await?;
        });
        match self {
            RemitTx::Sqlite(mut t) => {
                let restore = format!("PRAGMA cache_size = -{}", super::READ_CACHE_KIB);
                sqlx::query(sqlx::AssertSqlSafe(restore)).execute(&mut *t).await?;
                t.commit().await?
            }
            RemitTx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}
