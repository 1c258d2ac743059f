//! The flow of a session through the gateway, as code:
//!
//! ```text
//! receive (intake::batch / intake::csv)  ->  validate (validate::Validator)  ->  store (store::Store::write_intake)
//! ```
//!
//! Every record ends in an accounted outcome: stored (created / amended / duplicate) or rejected
//! with its issues into the rejected lane. A batch is written in one transaction.

use chrono::{DateTime, Utc};

use crate::fhir::OperationOutcome;
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::intake::receipt::{BatchReceipt, RecordResult, RecordStatus};
use crate::intake::{RawRecord, canonical_json, sha256_hex};
use crate::store::{IntakeRecord, NewVersion, Rejection, Store, StoreError, WriteJob};
use crate::validate::Validator;

/// Namespace of session ids: `uuid_v5(NS, "{lea}\n{source_id}")`, so a session's id is stable.
const SESSION_ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c1e_a7e0_0b2e_4d1a_9a55_77e3_c0a5_e55e);

/// The session id for an LEA's source id.
pub fn session_id(lea: &str, source_id: &str) -> String {
    uuid::Uuid::new_v5(&SESSION_ID_NAMESPACE, format!("{lea}\n{source_id}").as_bytes()).to_string()
}

/// Who is submitting.
#[derive(Debug, Clone)]
pub struct Submitter {
    /// API client id (or `cli:import`).
    pub client_id: String,
    /// The only LEA this submitter may submit for; `None` for admins and the CLI.
    pub lea: Option<String>,
    /// Request id (HTTP) for the stored version.
    pub request_id: Option<String>,
}

/// A record after validation.
#[derive(Debug)]
pub enum Checked {
    /// Ready to store.
    Valid(Box<IntakeRecord>),
    /// Refused with these issues.
    Rejected(Vec<OutcomeIssue>),
}

/// Records after validation, still in order.
#[derive(Debug)]
pub struct Prepared {
    items: Vec<(RawRecord, Checked)>,
}

impl Prepared {
    /// Number of rejected records.
    pub fn rejected(&self) -> usize {
        self.items.iter().filter(|(_, c)| matches!(c, Checked::Rejected(_))).count()
    }
}

/// A top-level text field, without NUL characters (PostgreSQL text cannot store them) and cut
/// to 200 characters, for receipts and the rejected lane.
fn text_field(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(serde_json::Value::as_str).map(|s| s.chars().filter(|c| *c != '\0').take(200).collect())
}

/// Validation (CPU only): parse result -> LEA scope -> schema + semantic rules -> canonical form.
pub fn prepare(validator: &Validator, who: &Submitter, records: Vec<RawRecord>, now: DateTime<Utc>) -> Prepared {
    let items = records
        .into_iter()
        .map(|rec| {
            let checked = match &rec.parsed {
                Err(issue) => Checked::Rejected(vec![issue.clone()]),
                Ok(value) => check_one(validator, who, value, &rec, now),
            };
            (rec, checked)
        })
        .collect();
    Prepared { items }
}

fn check_one(validator: &Validator, who: &Submitter, value: &serde_json::Value, rec: &RawRecord, now: DateTime<Utc>) -> Checked {
    if let (Some(scope), Some(lea)) = (&who.lea, value.get("lea").and_then(serde_json::Value::as_str))
        && lea != scope
    {
        return Checked::Rejected(vec![
            OutcomeIssue::error(IssueCode::Security, format!("this client submits for LEA {scope:?} only")).at_pointer("/lea"),
        ]);
    }
    match validator.validate(value, now) {
        Err(issues) => Checked::Rejected(issues),
        Ok(valid) => {
            let canonical = canonical_json(value);
            Checked::Valid(Box::new(IntakeRecord {
                session_id: session_id(valid.lea(), valid.source_id()),
                lea: valid.lea().to_owned(),
                source_id: valid.source_id().to_owned(),
                site: valid.site().to_owned(),
                service_start: valid.start.with_timezone(&Utc),
                content_sha256: sha256_hex(&canonical),
                raw_sha256: sha256_hex(&rec.raw),
                raw: rec.raw.clone(),
                raw_format: rec.format.media_type(),
                record: String::from_utf8(canonical).unwrap_or_default(),
            }))
        }
    }
}

/// Stores what `prepare` accepted (all of it, or, when `atomic` and anything was rejected,
/// nothing) together with the rejected lane, and builds the receipt.
pub async fn commit(
    store: &Store,
    who: &Submitter,
    prepared: Prepared,
    atomic: bool,
    batch_id: Option<String>,
) -> Result<BatchReceipt, StoreError> {
    let received_at = crate::store::now_micros();
    let store_valid = !(atomic && prepared.rejected() > 0);
    let mut to_store = Vec::new();
    let mut rejections = Vec::new();
    for (rec, checked) in &prepared.items {
        match checked {
            Checked::Valid(r) if store_valid => to_store.push((**r).clone()),
            Checked::Valid(_) => {}
            Checked::Rejected(issues) => {
                let parsed = rec.parsed.as_ref().ok();
                rejections.push(Rejection {
                    lea: parsed.and_then(|v| text_field(v, "lea")),
                    record_index: i64::try_from(rec.index).unwrap_or(i64::MAX),
                    source_id: parsed.and_then(|v| text_field(v, "source_id")),
                    raw_sha256: sha256_hex(&rec.raw),
                    raw: rec.raw.clone(),
                    issues_json: serde_json::to_string(&OperationOutcome::new(issues.clone())).unwrap_or_default(),
                })
            }
        }
    }
    let batch_id = batch_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let meta =
        NewVersion { client_id: who.client_id.clone(), request_id: who.request_id.clone(), batch_id: Some(batch_id.clone()), received_at };
    let mut outcomes = store.write_intake(WriteJob { who: meta, records: to_store, rejections }).await?.into_iter();

    let mut receipt = BatchReceipt {
        batch_id,
        atomic,
        committed: store_valid,
        received: prepared.items.len(),
        created: 0,
        amended: 0,
        duplicate: 0,
        rejected: 0,
        results: Vec::with_capacity(prepared.items.len()),
    };
    for (rec, checked) in prepared.items {
        let source_id = rec.parsed.as_ref().ok().and_then(|v| text_field(v, "source_id"));
        let mut result = RecordResult {
            index: rec.index,
            line: rec.line,
            source_id,
            status: RecordStatus::NotStored,
            id: None,
            version: None,
            received_at: None,
            outcome: None,
        };
        match checked {
            Checked::Valid(_) if store_valid => {
                let o = outcomes.next().ok_or_else(|| StoreError::Corrupt("fewer write outcomes than records".into()))?;
                result.status = o.status.into();
                result.id = Some(o.id);
                result.version = Some(o.version);
                result.received_at = Some(o.received_at);
            }
            Checked::Valid(_) => {}
            Checked::Rejected(issues) => {
                result.status = RecordStatus::Rejected;
                result.outcome = Some(OperationOutcome::new(issues));
            }
        }
        match result.status {
            RecordStatus::Created => receipt.created += 1,
            RecordStatus::Amended => receipt.amended += 1,
            RecordStatus::Duplicate => receipt.duplicate += 1,
            RecordStatus::Rejected => receipt.rejected += 1,
            RecordStatus::NotStored => {}
        }
        receipt.results.push(result);
    }
    tracing::info!(
        batch_id = %receipt.batch_id,
        intake.received = receipt.received,
        intake.created = receipt.created,
        intake.amended = receipt.amended,
        intake.duplicate = receipt.duplicate,
        intake.rejected = receipt.rejected,
        intake.committed = receipt.committed,
        "intake batch processed"
    );
    Ok(receipt)
}
