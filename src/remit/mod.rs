//! Finance: X12 835 remittances posted to claims (issue 7).
//!
//! A file is read twice with the streaming reader: first to check it (a fatal syntax error, an
//! envelope error, an amount that does not parse or a payment without its TRN02 refuses the
//! whole file, naming segment, id and element: nothing is posted), then to post it. Each 835
//! transaction set is one payment, posted in one database transaction, a chunk of claims at a
//! time ([`post::post_claim`]), so memory does not grow with the file; the same payment (payer +
//! TRN02) twice is a no-op reported as `duplicate`. PLB adjustments go to the provider ledger.
//!
//! - [`codes`]: the CARC / RARC / PLB / CLP02 / group tables of `mappings/remit/`.
//! - [`post`]: matching and ledger entries for one CLP (pure).
//! - [`fhir`]: `ClaimResponse` and `PaymentReconciliation`, built from the stored rows.
//! - [`reports`]: reconciliation, aging, denials, PPS gap, sustainability.

pub mod codes;
pub mod fhir;
pub mod post;
pub mod reports;

use std::collections::HashMap;
use std::io::Read;

use serde::Serialize;

use crate::store::{ChunkRows, ExceptionRow, ProviderLedgerRow, RemitTx, RemittanceRow, StatusChange, Store, StoreError};
use crate::x12::ReadError;
use crate::x12::reader::Severity;
use crate::x12::remit835::{ClaimPayment, RemitItem, Remittance, RemittanceReader};

pub use codes::RemitCodes;

/// Claims posted per chunk (one set of multi-row statements).
pub const CHUNK: usize = 1_000;
/// Unmatched CLP01s listed in a summary (the exceptions queue holds them all).
const LISTED: usize = 100;

/// What posting one payment (835 transaction set) did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct PaymentSummary {
    /// posted | duplicate (this payer's TRN02 was posted before: nothing changed).
    pub status: String,
    /// The payment's id (`/api/v1/remittances/{id}`, `PaymentReconciliation/{id}`).
    pub remittance_id: String,
    /// ST02.
    pub control_number: String,
    /// Segment number of the ST.
    pub segment: usize,
    /// The payer key (TRN03, else the payer's id, else its name).
    pub payer: String,
    /// N1*PR name.
    pub payer_name: String,
    /// TRN02 check / EFT trace number.
    pub trace_number: String,
    /// BPR16.
    pub payment_date: Option<String>,
    /// BPR02 (negative for a debit).
    pub paid_cents: i64,
    /// CLP count.
    pub claim_count: i64,
    /// Σ CLP03.
    pub charge_cents: i64,
    /// Σ CLP04.
    pub claims_paid_cents: i64,
    /// Σ PLB.
    pub provider_adjustments_cents: i64,
    /// BPR02 = Σ CLP04 − Σ PLB.
    pub balanced: bool,
    /// CLPs posted to a claim.
    pub matched: i64,
    /// CLPs that match no claim (exceptions queue).
    pub unmatched: i64,
    /// The first unmatched CLP01s.
    pub unmatched_claims: Vec<String>,
    /// Exceptions opened.
    pub exceptions: i64,
    /// Problems found (imbalances; for a duplicate, what differs from the payment on file).
    pub errors: Vec<String>,
}

/// The answer to one 835 file.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct RemitReport {
    /// One entry per transaction set, in file order.
    pub transactions: Vec<PaymentSummary>,
    /// Tolerated framing the reader noted (warnings).
    pub findings: Vec<String>,
}

/// Why a file was refused (nothing was posted) or posting failed.
#[derive(Debug, thiserror::Error)]
pub enum RemitError {
    /// The file is not a postable 835: every problem, located.
    #[error("the 835 was refused: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<ReadError>),
    /// The store failed (the payment being posted was rolled back).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn located(segment: usize, id: &str, element: &str, message: String) -> ReadError {
    ReadError { segment, id: id.to_string(), element: Some(element.to_string()), message, severity: Severity::Error }
}

/// First pass: reads the whole file and returns every problem that refuses it (fatal syntax,
/// envelope errors, amounts that do not parse, a payment without TRN02), and the number of
/// transaction sets.
pub fn check<R: Read>(input: R) -> Result<usize, Vec<ReadError>> {
    let mut reader = RemittanceReader::new(input);
    let mut problems = Vec::new();
    let mut count = 0;
    while let Some(item) = reader.next_item() {
        match item {
            Err(e) => {
                problems.push(e);
                break;
            }
            Ok(RemitItem::End(r)) => {
                count += 1;
                if r.trace_number.trim().is_empty() {
                    problems.push(located(r.segment, "ST", "TRN02", format!("payment {} has no TRN02 trace number", r.control_number)));
                }
                if !matches!(r.credit_debit.as_str(), "C" | "D") {
                    problems.push(located(
                        r.segment,
                        "ST",
                        "BPR03",
                        format!("payment {} has no BPR03 credit/debit flag", r.control_number),
                    ));
                }
                problems.extend(r.problems);
            }
            Ok(_) => {}
        }
    }
    problems.extend(reader.findings().iter().filter(|f| f.severity >= Severity::Error).cloned());
    if count == 0 && problems.is_empty() {
        problems.push(ReadError {
            segment: 0,
            id: String::new(),
            element: None,
            message: "the file holds no 835 transaction set".into(),
            severity: Severity::Error,
        });
    }
    if problems.is_empty() { Ok(count) } else { Err(problems) }
}

/// The tolerated framing findings (warnings) of a file.
fn warnings<R: Read>(reader: &RemittanceReader<R>) -> Vec<String> {
    reader.findings().iter().filter(|f| f.severity == Severity::Warning).map(ToString::to_string).collect()
}

/// Checks and posts an 835 file. `open` gives the input (called twice: check, then post);
/// `progress` is told the claims posted so far.
pub async fn ingest<R: Read, F: FnMut() -> std::io::Result<R>>(
    store: &Store,
    codes: &RemitCodes,
    mut open: F,
    actor: &str,
    progress: &mut dyn FnMut(u64),
) -> Result<RemitReport, RemitError> {
    let io = |e: std::io::Error| {
        RemitError::Invalid(vec![ReadError {
            segment: 0,
            id: String::new(),
            element: None,
            message: format!("reading the input failed: {e}"),
            severity: Severity::Fatal,
        }])
    };
    check(open().map_err(io)?).map_err(RemitError::Invalid)?;
    let mut reader = RemittanceReader::new(open().map_err(io)?);
    let mut report = RemitReport::default();
    let mut open_payment: Option<Open> = None;
    let mut posted = 0u64;
    while let Some(item) = reader.next_item() {
        let item = item.map_err(|e| RemitError::Invalid(vec![e]))?;
        match item {
            RemitItem::Begin(h) => {
                open_payment = Some(Open::begin(store, &h, actor).await?);
            }
            RemitItem::Claim(c) => {
                let Some(p) = open_payment.as_mut() else { continue };
                p.summary.claim_count += 1;
                p.summary.charge_cents = p.summary.charge_cents.saturating_add(c.charge_cents);
                p.summary.claims_paid_cents = p.summary.claims_paid_cents.saturating_add(c.paid_cents);
                if p.tx.is_some() {
                    p.chunk.push(*c);
                    if p.chunk.len() >= CHUNK {
                        posted += p.chunk.len() as u64;
                        p.flush(codes, actor).await?;
                        progress(posted);
                    }
                }
            }
            RemitItem::End(r) => {
                let Some(p) = open_payment.take() else { continue };
                posted += p.chunk.len() as u64;
                let summary = p.end(store, codes, &r, actor).await?;
                progress(posted);
                report.transactions.push(summary);
            }
        }
    }
    report.findings = warnings(&reader);
    Ok(report)
}

/// Checks and posts one 835 file from disk (the CLI), with a progress bar over the bytes of
/// each pass when `progress`.
pub async fn post_file(
    store: &Store,
    codes: &RemitCodes,
    path: &std::path::Path,
    actor: &str,
    progress: bool,
) -> Result<RemitReport, RemitError> {
    let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    let mut pass = 0;
    let bars: Vec<indicatif::ProgressBar> = Vec::new();
    let bars = std::sync::Mutex::new(bars);
    let open = || {
        pass += 1;
        let bar = if progress { indicatif::ProgressBar::new(len) } else { indicatif::ProgressBar::hidden() };
        bar.set_style(style.clone());
        bar.set_message(if pass == 1 { "checking" } else { "posting " });
        if let Ok(mut b) = bars.lock() {
            if let Some(prev) = b.last() {
                prev.finish();
            }
            b.push(bar.clone());
        }
        std::fs::File::open(path).map(|f| bar.wrap_read(std::io::BufReader::with_capacity(1 << 20, f)))
    };
    let out = ingest(store, codes, open, actor, &mut |_| {}).await;
    if let Ok(b) = bars.lock() {
        for bar in b.iter() {
            bar.finish_and_clear();
        }
    }
    out
}

/// A payment being posted.
struct Open {
    tx: Option<RemitTx>,
    row: RemittanceRow,
    chunk: Vec<ClaimPayment>,
    ordinal: i64,
    summary: PaymentSummary,
}

fn payer_key(h: &Remittance) -> String {
    [h.trace_payer.trim(), h.payer_id.as_deref().unwrap_or_default().trim(), h.payer_name.trim()]
        .into_iter()
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_string()
}

impl Open {
    async fn begin(store: &Store, h: &Remittance, actor: &str) -> Result<Open, StoreError> {
        let now = crate::store::now_us();
        let signed = if h.credit_debit == "D" { -h.paid_cents } else { h.paid_cents };
        let row = RemittanceRow {
            id: uuid::Uuid::now_v7().to_string(),
            payer: payer_key(h),
            trace_number: h.trace_number.trim().to_string(),
            payer_name: h.payer_name.clone(),
            payee_id: h.payee_id.clone(),
            control_number: h.control_number.clone(),
            handling: h.handling.clone(),
            method: h.method.clone(),
            credit_debit: h.credit_debit.clone(),
            payment_date: h.payment_date.map(|d| d.format("%Y-%m-%d").to_string()),
            paid_cents: signed,
            claims_paid_cents: 0,
            charge_cents: 0,
            provider_adjustments_cents: 0,
            claim_count: 0,
            matched: 0,
            unmatched: 0,
            balanced: 1,
            problems: "[]".into(),
            received_by: actor.to_string(),
            received_us: now,
        };
        let tx = store.begin_remittance(&row).await?;
        let mut summary = PaymentSummary {
            status: if tx.is_some() { "posted".into() } else { "duplicate".into() },
            remittance_id: row.id.clone(),
            control_number: row.control_number.clone(),
            segment: h.segment,
            payer: row.payer.clone(),
            payer_name: row.payer_name.clone(),
            trace_number: row.trace_number.clone(),
            payment_date: row.payment_date.clone(),
            paid_cents: signed,
            ..PaymentSummary::default()
        };
        if tx.is_none()
            && let Some(existing) = store.remittance_by_trace(&row.payer, &row.trace_number).await?
        {
            summary.remittance_id = existing.id.clone();
            if existing.paid_cents != signed {
                summary.errors.push(format!(
                    "TRN02 {} of payer {} was posted before with BPR02 {} cents; this file says {} cents: nothing was posted",
                    row.trace_number, row.payer, existing.paid_cents, signed
                ));
            }
        }
        Ok(Open { tx, row, chunk: Vec::with_capacity(CHUNK), ordinal: 0, summary })
    }

    /// Posts the buffered claims.
    async fn flush(&mut self, codes: &RemitCodes, actor: &str) -> Result<(), StoreError> {
        let Some(tx) = self.tx.as_mut() else {
            self.chunk.clear();
            return Ok(());
        };
        if self.chunk.is_empty() {
            return Ok(());
        }
        let pcns: Vec<&str> = self.chunk.iter().map(|c| c.pcn.as_str()).collect();
        let targets = tx.targets(&pcns).await?;
        let ctx = post::Context { codes, remittance_id: &self.row.id, actor, now_us: self.row.received_us };
        // Balances before this chunk, for the claims whose status a payment may move.
        let movable: Vec<&str> =
            targets.values().filter(|t| t.active && post::POSTABLE.contains(&t.status.as_str())).map(|t| t.id.as_str()).collect();
        let mut balance = tx.balances(&movable).await?;
        let mut status: HashMap<String, String> = targets.values().map(|t| (t.id.clone(), t.status.clone())).collect();
        let mut rows = ChunkRows::default();
        let mut changes: Vec<StatusChange> = Vec::new();
        for c in &self.chunk {
            self.ordinal += 1;
            let target = targets.get(c.pcn.as_str());
            let posted = post::post_claim(&ctx, self.ordinal, c, target, &mut rows);
            match &posted.claim_id {
                Some(id) => {
                    self.summary.matched += 1;
                    // Each payment moves the claim in turn: a reversal and the corrected
                    // payment after it are two transitions.
                    if let (Some(b), Some(from)) = (balance.get_mut(id), status.get_mut(id)) {
                        let entries = c
                            .adjustments
                            .iter()
                            .chain(c.services.iter().flat_map(|s| s.adjustments.iter()))
                            .fold(c.paid_cents, |sum, a| sum.saturating_add(a.amount_cents));
                        *b = b.saturating_sub(entries);
                        let to = post::next_status(posted.outcome, posted.denial, *b);
                        if to != from {
                            let (text, _) = codes.status(&c.status);
                            changes.push(StatusChange {
                                claim_id: id.clone(),
                                from: from.clone(),
                                to: to.to_string(),
                                reason: format!(
                                    "835 TRN {} CLP02 {} ({text}): paid {} of {}; balance {}",
                                    self.row.trace_number,
                                    c.status,
                                    domain_cents(c.paid_cents),
                                    domain_cents(c.charge_cents),
                                    domain_cents(*b)
                                ),
                            });
                            *from = to.to_string();
                        }
                    }
                }
                None => {
                    self.summary.unmatched += 1;
                    if self.summary.unmatched_claims.len() < LISTED {
                        self.summary.unmatched_claims.push(c.pcn.to_string());
                    }
                }
            }
        }
        self.summary.exceptions += rows.exceptions.len() as i64;
        tx.write_chunk(&rows).await?;
        tx.change_statuses(&changes, actor, self.row.received_us).await?;
        self.chunk.clear();
        Ok(())
    }

    /// Posts the rest, the PLBs and the totals; commits.
    async fn end(mut self, store: &Store, codes: &RemitCodes, r: &Remittance, actor: &str) -> Result<PaymentSummary, StoreError> {
        self.flush(codes, actor).await?;
        let plb: i64 = r.provider_adjustments_cents();
        self.summary.provider_adjustments_cents = plb;
        let expected = self.summary.claims_paid_cents.saturating_sub(plb);
        self.summary.balanced = self.summary.paid_cents == expected;
        if !self.summary.balanced {
            self.summary.errors.push(format!(
                "BPR02 {} cents ≠ Σ CLP04 {} − Σ PLB {} = {} cents",
                self.summary.paid_cents, self.summary.claims_paid_cents, plb, expected
            ));
        }
        let Some(mut tx) = self.tx.take() else {
            // A duplicate: report what is on file.
            if let Some(existing) = store.remittance(&self.summary.remittance_id).await? {
                let errors = std::mem::take(&mut self.summary.errors);
                self.summary = PaymentSummary { status: "duplicate".into(), errors, ..summary_of(&existing) };
            }
            return Ok(self.summary);
        };
        let entries: Vec<ProviderLedgerRow> = r
            .provider_adjustments
            .iter()
            .map(|p| ProviderLedgerRow {
                remittance_id: self.row.id.clone(),
                provider: p.provider.to_string(),
                fiscal_date: p.fiscal_date.map(|d| d.format("%Y-%m-%d").to_string()),
                reason: p.reason.to_string(),
                reference: p.reference.as_deref().map(str::to_owned),
                amount_cents: p.amount_cents,
                at_us: self.row.received_us,
            })
            .collect();
        tx.insert_provider_ledger(&entries).await?;
        if !self.summary.balanced {
            let x = ExceptionRow {
                id: format!("{}:remittance-out-of-balance", self.row.id),
                remittance_id: self.row.id.clone(),
                payment_id: None,
                claim_id: None,
                line_no: None,
                kind: "remittance-out-of-balance".into(),
                detail: self.summary.errors.join("; "),
                amount_cents: self.summary.paid_cents.saturating_sub(expected),
                status: "open".into(),
                resolution: None,
                resolved_by: None,
                resolved_us: None,
                created_us: self.row.received_us,
            };
            tx.insert_exceptions(std::slice::from_ref(&x)).await?;
            self.summary.exceptions += 1;
        }
        let row = RemittanceRow {
            claims_paid_cents: self.summary.claims_paid_cents,
            charge_cents: self.summary.charge_cents,
            provider_adjustments_cents: plb,
            claim_count: self.summary.claim_count,
            matched: self.summary.matched,
            unmatched: self.summary.unmatched,
            balanced: i64::from(self.summary.balanced),
            problems: serde_json::to_string(&self.summary.errors).unwrap_or_else(|_| "[]".into()),
            ..self.row.clone()
        };
        tx.finish(&row).await?;
        tracing::info!(remittance = %row.id, claims = row.claim_count, matched = row.matched, unmatched = row.unmatched, balanced = self.summary.balanced, "835 payment posted");
        Ok(self.summary)
    }
}

fn domain_cents(c: i64) -> String {
    format!("${}", crate::domain::Cents(c))
}

/// A stored payment as a summary.
pub fn summary_of(r: &RemittanceRow) -> PaymentSummary {
    PaymentSummary {
        status: "posted".into(),
        remittance_id: r.id.clone(),
        control_number: r.control_number.clone(),
        segment: 0,
        payer: r.payer.clone(),
        payer_name: r.payer_name.clone(),
        trace_number: r.trace_number.clone(),
        payment_date: r.payment_date.clone(),
        paid_cents: r.paid_cents,
        claim_count: r.claim_count,
        charge_cents: r.charge_cents,
        claims_paid_cents: r.claims_paid_cents,
        provider_adjustments_cents: r.provider_adjustments_cents,
        balanced: r.balanced == 1,
        matched: r.matched,
        unmatched: r.unmatched,
        unmatched_claims: Vec::new(),
        exceptions: 0,
        errors: serde_json::from_str(&r.problems).unwrap_or_default(),
    }
}
