//! The flow of a session through the gateway, as code:
//!
//! ```text
//! receive (intake::batch / intake::csv)  ->  validate (validate::Validator)
//!   ->  map (mapping::Mapper, official R4 schema)  ->  store (store::Store::write_intake)
//! ```
//!
//! Every record ends in an accounted outcome: stored (created / amended / duplicate) or rejected
//! with its issues into the rejected lane. A batch is written in one transaction, the session
//! versions together with the FHIR resources they map to.

use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};

use crate::fhir::OperationOutcome;
use crate::fhir::resource::PreparedResource;
use crate::fhir::search::SearchRegistry;
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::intake::receipt::{BatchReceipt, RecordResult, RecordStatus};
use crate::intake::{RawRecord, canonical_json, sha256_hex};
use crate::mapping::{MapError, Mapper, MappingSet, SessionVersion};
use crate::settings::Settings;
use crate::store::{IntakeRecord, NewVersion, Rejection, SessionResources, Store, StoreError, WriteJob};
use crate::validate::{ValidSession, Validator};

/// Everything intake needs that is compiled once at start-up: the session validator, the
/// mappings with the official FHIR schema, and the search parameter definitions. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    /// Settings as loaded.
    pub settings: Arc<Settings>,
    /// Session schema and rules.
    pub validator: Validator,
    /// Mappings and FHIR validation.
    pub mapper: Arc<Mapper>,
    /// Search parameters (index rows of stored resources).
    pub search: Arc<SearchRegistry>,
    /// Consent category labels and partnerships.
    pub consent: Arc<crate::consent::ConsentRules>,
    /// Billing programs, payers and code tables (`mappings/billing/`).
    pub billing: Arc<crate::billing::BillingRules>,
    /// 835 code tables (`mappings/remit/`).
    pub remit: Arc<crate::remit::RemitCodes>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("mapper", &self.mapper).finish()
    }
}

impl Pipeline {
    /// Compiles the schemas, mappings and search definitions named by the settings.
    pub fn from_settings(settings: Arc<Settings>) -> anyhow::Result<Self> {
        let validator = Validator::new(&settings.rules.schemas_dir, settings.clone())?;
        let mapper = Arc::new(Mapper::from_settings(&settings, &validator)?);
        let search = Arc::new(SearchRegistry::load(&settings.rules.schemas_dir)?);
        let consent = Arc::new(crate::consent::ConsentRules::from_settings(&settings)?);
        let billing =
            Arc::new(crate::billing::BillingRules::load(&settings.rules.mappings_dir, validator.schemas().session_document(), &settings)?);
        for (i, c) in settings.billing.clearinghouses.iter().enumerate() {
            if !billing.payers.contains_key(&c.payer) {
                anyhow::bail!(
                    "configuration billing.clearinghouses[{i}].payer: {:?} is not a payer in mappings/billing/payers.toml",
                    c.payer
                );
            }
        }
        let remit = Arc::new(crate::remit::RemitCodes::load(&settings.rules.mappings_dir)?);
        Ok(Self { settings, validator, mapper, search, consent, billing, remit })
    }

    /// A draft session as billing sees it (validated and mapped, not stored): what
    /// `POST /api/v1/billing/$evaluate` decides on.
    pub fn billing_draft(
        &self,
        who: &Submitter,
        value: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<crate::billing::Subject, Vec<OutcomeIssue>> {
        let rec = RawRecord::from_value(value);
        let (valid, record) = check_one(&self.validator, who, value, &rec, now)?;
        let job = MapJob {
            pipeline: self.clone(),
            set: self.mapper.for_site(valid.site()),
            valid,
            record: record.record.clone(),
            content_sha256: record.content_sha256.clone(),
            raw_sha256: record.raw_sha256.clone(),
            received_at: now,
        };
        let (patient_id, security) = match job.map_with_facts(1, value) {
            Ok((_, facts)) => facts,
            Err(MapError::Missing(m)) => return Err(vec![missing_entry_issue(&m)]),
            Err(e) => return Err(vec![OutcomeIssue::error(IssueCode::BusinessRule, e.to_string())]),
        };
        let facts = crate::store::SessionFacts {
            id: record.session_id.clone(),
            lea_id: record.lea,
            site_id: record.site,
            service_start: record.service_start,
            patient_id,
            security,
            service_date: Some(record.service_date),
            adult_from: record.adult_from,
        };
        Ok(crate::billing::Subject { session_id: record.session_id, version: None, valid: job.valid, facts })
    }

    /// A stored session's current version as billing sees it; `None` when there is no such
    /// session. A stored record that no longer validates (the configuration changed under it)
    /// is reported with its issues.
    pub async fn billing_stored(&self, store: &Store, id: &str) -> Result<Option<crate::billing::Subject>, BillingSubjectError> {
        let Some(stored) = store.session(id, None).await? else { return Ok(None) };
        let (facts, _) = store.session_facts(&[id]).await?;
        let Some(facts) = facts.into_iter().next() else { return Ok(None) };
        let value: serde_json::Value =
            serde_json::from_str(&stored.record).map_err(|e| StoreError::Corrupt(format!("a stored session record is unreadable: {e}")))?;
        let valid = self.validator.validate(&value, stored.version.received_at).map_err(BillingSubjectError::Invalid)?;
        Ok(Some(crate::billing::Subject { session_id: stored.id, version: Some(stored.current_version), valid, facts }))
    }

    /// Validation and mapping (CPU only); see [`prepare`].
    pub fn prepare(&self, who: &Submitter, records: Vec<RawRecord>, now: DateTime<Utc>) -> Prepared {
        prepare(self, who, records, now)
    }
}

/// Why a stored session cannot be billed on.
#[derive(Debug, thiserror::Error)]
pub enum BillingSubjectError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored record no longer passes validation.
    #[error("the stored session no longer validates")]
    Invalid(Vec<OutcomeIssue>),
}

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
    /// The mapping produced an invalid resource: a defect of the mapping files, not of the
    /// record. The whole request fails (500) and nothing is stored.
    MappingDefect(String),
    /// A valid record already moved into the write job (by [`commit`]).
    Stored,
}

/// Records after validation, still in order.
#[derive(Debug)]
pub struct Prepared {
    items: Vec<(RawRecord, Checked)>,
    received_at: DateTime<Utc>,
}

impl Prepared {
    /// Number of rejected records.
    pub fn rejected(&self) -> usize {
        self.items.iter().filter(|(_, c)| matches!(c, Checked::Rejected(_))).count()
    }

    /// The first mapping defect, if any.
    pub fn mapping_defect(&self) -> Option<&str> {
        self.items.iter().find_map(|(_, c)| match c {
            Checked::MappingDefect(m) => Some(m.as_str()),
            _ => None,
        })
    }
}

/// A top-level text field, without NUL characters (PostgreSQL text cannot store them) and cut
/// to 200 characters, for receipts and the rejected lane.
fn text_field(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key).and_then(serde_json::Value::as_str).map(|s| s.chars().filter(|c| *c != '\0').take(200).collect())
}

/// Validation and mapping (CPU only): parse result -> LEA scope -> schema + semantic rules ->
/// canonical form -> FHIR resources (validated against the official schema). `now`, to the
/// microsecond, is the time of receipt the stored versions will carry.
pub fn prepare(pipeline: &Pipeline, who: &Submitter, records: Vec<RawRecord>, now: DateTime<Utc>) -> Prepared {
    let received_at = now.trunc_subsecs(6);
    let items = records
        .into_iter()
        .map(|mut rec| {
            let checked = match &rec.parsed {
                Err(issue) => Checked::Rejected(vec![issue.clone()]),
                Ok(value) => match check_one(&pipeline.validator, who, value, &rec, received_at) {
                    Ok(valid) => with_resources(pipeline, valid, value, received_at),
                    Err(issues) => Checked::Rejected(issues),
                },
            };
            if matches!(checked, Checked::Valid(_)) {
                // The accepted record carries its own copy of the bytes; until the write is
                // done only the receipt's identity fields are read.
                rec.keep_identity();
            }
            (rec, checked)
        })
        .collect();
    Prepared { items, received_at }
}

/// Everything one session version's mapping reads, owned so the store can map it again for
/// another version number. The record is kept as its canonical JSON text, parsed again only
/// when the store does map again (an amendment): a parsed tree per record held until its
/// write was ~5 KB each, and an import holds two chunks of records.
struct MapJob {
    pipeline: Pipeline,
    set: Arc<MappingSet>,
    valid: ValidSession,
    record: String,
    content_sha256: String,
    raw_sha256: String,
    received_at: DateTime<Utc>,
}

/// What the consent decision reads about a session, taken from its mapped Encounter: the
/// student's Patient id and the Encounter's security labels (JSON array of `system|code`).
fn disclosure_facts(resources: &[serde_json::Value]) -> (Option<String>, Option<String>) {
    let Some(enc) = resources.iter().find(|r| r["resourceType"] == "Encounter") else { return (None, None) };
    let patient = enc["subject"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).map(str::to_owned);
    let labels: Vec<String> = enc["meta"]["security"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| Some(format!("{}|{}", c["system"].as_str()?, c["code"].as_str()?))).collect())
        .unwrap_or_default();
    (patient, serde_json::to_string(&labels).ok())
}

impl MapJob {
    fn map(&self, version: i64) -> Result<Vec<PreparedResource>, MapError> {
        let record: serde_json::Value =
            serde_json::from_str(&self.record).map_err(|e| MapError::Unconfigured(format!("the canonical record is unreadable: {e}")))?;
        self.map_with_facts(version, &record).map(|(r, _)| r)
    }

    /// The resources of `record` (this job's record, parsed) and the session's [`disclosure_facts`].
    #[allow(clippy::type_complexity)]
    fn map_with_facts(
        &self,
        version: i64,
        record: &serde_json::Value,
    ) -> Result<(Vec<PreparedResource>, (Option<String>, Option<String>)), MapError> {
        let sv = SessionVersion {
            valid: &self.valid,
            record,
            version,
            content_sha256: &self.content_sha256,
            raw_sha256: &self.raw_sha256,
            received_at: self.received_at,
        };
        let mapped = self.pipeline.mapper.map_session(&self.pipeline.settings, &self.set, &sv)?;
        let facts = disclosure_facts(&mapped.resources);
        Ok((mapped.resources.into_iter().map(|r| PreparedResource::new(r, &self.pipeline.search)).collect(), facts))
    }
}

/// The OperationOutcome issue for a value with no mapping table entry.
pub fn missing_entry_issue(m: &crate::mapping::MissingEntry) -> OutcomeIssue {
    OutcomeIssue::error(
        IssueCode::CodeInvalid,
        format!("`{}` has a value with no entry in mapping table `{}` ({}); ask the gateway operator to add it", m.field, m.table, m.file),
    )
    .at_pointer(&m.pointer)
}

fn with_resources(
    pipeline: &Pipeline,
    (valid, mut record): (ValidSession, IntakeRecord),
    value: &serde_json::Value,
    received_at: DateTime<Utc>,
) -> Checked {
    let job = MapJob {
        pipeline: pipeline.clone(),
        set: pipeline.mapper.for_site(valid.site()),
        valid,
        record: record.record.clone(),
        content_sha256: record.content_sha256.clone(),
        raw_sha256: record.raw_sha256.clone(),
        received_at,
    };
    // Mapped for version 1 (the common case); the store maps again if the session exists.
    match job.map_with_facts(1, value) {
        Ok((resources, (patient_id, security))) => {
            record.patient_id = patient_id;
            record.security = security;
            let job = Arc::new(job);
            let remap = move |version: i64| job.map(version).map_err(|e| e.to_string());
            record.fhir = Some(SessionResources { assumed_version: 1, resources, remap: Arc::new(remap) });
            Checked::Valid(Box::new(record))
        }
        Err(MapError::Missing(m)) => Checked::Rejected(vec![missing_entry_issue(&m)]),
        Err(MapError::Unconfigured(m)) => Checked::Rejected(vec![OutcomeIssue::error(IssueCode::BusinessRule, m)]),
        Err(e @ MapError::Invalid { .. }) => Checked::MappingDefect(e.to_string()),
    }
}

fn check_one(
    validator: &Validator,
    who: &Submitter,
    value: &serde_json::Value,
    rec: &RawRecord,
    now: DateTime<Utc>,
) -> Result<(ValidSession, IntakeRecord), Vec<OutcomeIssue>> {
    if let (Some(scope), Some(lea)) = (&who.lea, value.get("lea").and_then(serde_json::Value::as_str))
        && lea != scope
    {
        return Err(vec![
            OutcomeIssue::error(IssueCode::Security, format!("this client submits for LEA {scope:?} only")).at_pointer("/lea"),
        ]);
    }
    let valid = validator.validate(value, now)?;
    let canonical = canonical_json(value);
    let record = IntakeRecord {
        session_id: session_id(valid.lea(), valid.source_id()),
        lea: valid.lea().to_owned(),
        source_id: valid.source_id().to_owned(),
        site: valid.site().to_owned(),
        service_start: valid.start.with_timezone(&Utc),
        service_date: valid.start.date_naive().to_string(),
        adult_from: valid.birth_date.checked_add_months(chrono::Months::new(18 * 12)).map(|d| d.to_string()),
        content_sha256: sha256_hex(&canonical),
        raw_sha256: sha256_hex(&rec.raw),
        raw: rec.raw.clone(),
        raw_format: rec.format.media_type(),
        record: String::from_utf8(canonical).unwrap_or_default(),
        fhir: None,
        patient_id: None,
        security: None,
    };
    Ok((valid, record))
}

/// Stores what `prepare` accepted (all of it, or, when `atomic` and anything was rejected,
/// nothing) together with the rejected lane, and builds the receipt.
pub async fn commit(
    store: &Store,
    who: &Submitter,
    mut prepared: Prepared,
    atomic: bool,
    batch_id: Option<String>,
) -> Result<BatchReceipt, StoreError> {
    if let Some(defect) = prepared.mapping_defect() {
        return Err(StoreError::Mapping(defect.to_string()));
    }
    let received_at = prepared.received_at;
    let store_valid = !(atomic && prepared.rejected() > 0);
    let mut to_store = Vec::new();
    let mut rejections = Vec::new();
    for (rec, checked) in &mut prepared.items {
        match checked {
            Checked::Valid(_) if store_valid => {
                if let Checked::Valid(r) = std::mem::replace(checked, Checked::Stored) {
                    to_store.push(*r);
                }
            }
            Checked::Valid(_) | Checked::MappingDefect(_) | Checked::Stored => {}
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
            Checked::Stored => {
                let o = outcomes.next().ok_or_else(|| StoreError::Corrupt("fewer write outcomes than records".into()))?;
                result.status = o.status.into();
                result.id = Some(o.id);
                result.version = Some(o.version);
                result.received_at = Some(o.received_at);
            }
            Checked::Valid(_) | Checked::MappingDefect(_) => {}
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
