//! Stage 7b: claims. A billable session version becomes exactly one active claim (a FHIR R4
//! `Claim` plus its lines), filed under the funding path billing chose; an amendment replaces it
//! (cancelled before it was sent, a frequency-7 replacement after) and a session that stops
//! being billable after submission gets a frequency-8 void. The claim worker settles every
//! session version whose billing has not been settled ([`Claimer`]); X12 batches are built by
//! [`batch`].
//!
//! Lifecycle (every transition recorded with who, when, why in `claim_events`):
//! `ready -> batched -> submitted -> accepted | rejected -> adjudicated -> closed`, and
//! `cancelled` (withdrawn before it was sent), `replaced` (by a frequency-7 claim), `voided`
//! (by a frequency-8 claim).

pub mod acks;
pub mod batch;
pub mod submit;

use std::sync::Arc;
use std::time::Duration;

use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::billing::{PlannedClaim, Subject};
use crate::pipeline::{BillingSubjectError, Pipeline};
use crate::store::{ClaimLineRow, ClaimRow, NewClaim, SettleGuard, Settled, Settlement, Store, StoreError, UnbilledSession};

/// CPT / HCPCS code system (FHIR `productOrService`).
pub const CPT_SYSTEM: &str = "http://www.ama-assn.org/go/cpt";
/// HCPCS level II code system.
pub const HCPCS_SYSTEM: &str = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets";
/// NUBC revenue codes.
pub const REVENUE_SYSTEM: &str = "https://www.nubc.org/CodeSystem/RevenueCodes";
/// CMS place of service codes.
pub const POS_SYSTEM: &str = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set";
/// The gateway's claim numbers (CLM01).
pub const PCN_SYSTEM: &str = "urn:wellness-gateway:claim-number";
/// Payer ids.
pub const PAYER_SYSTEM: &str = "urn:wellness-gateway:payer";

/// Statuses in which the payer has (or may have) the claim: an amendment needs a frequency-7
/// replacement, a withdrawal a frequency-8 void.
pub const SENT: &[&str] = &["batched", "submitted", "accepted", "adjudicated", "closed"];

/// Why settling failed.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A produced Claim does not pass the official FHIR R4 schema (a defect of the gateway).
    #[error("the Claim built for session {session} does not pass the FHIR R4 schema: {problems}")]
    InvalidResource {
        /// Session id.
        session: String,
        /// Schema violations.
        problems: String,
    },
}

fn code_system(code: &str) -> &'static str {
    if code.bytes().next().is_some_and(|b| b.is_ascii_alphabetic()) { HCPCS_SYSTEM } else { CPT_SYSTEM }
}

/// A new claim number: `W` and 19 upper-case hexadecimal digits (CLM01 holds 20 characters).
fn new_pcn() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string().to_ascii_uppercase();
    format!("W{}", &u[..19])
}

/// Builds the FHIR R4 Claim of a planned claim.
#[allow(clippy::too_many_arguments)]
pub fn fhir_claim(
    pipeline: &Pipeline,
    id: &str,
    pcn: &str,
    subject: &Subject,
    plan: &PlannedClaim,
    frequency: &str,
    prior: Option<&ClaimRow>,
    created: &str,
) -> Value {
    let payer = pipeline.billing.payers.get(&plan.payer);
    let patient = subject.facts.patient_id.clone().unwrap_or_default();
    let mut care_team = vec![json!({
        "sequence": 1,
        "provider": { "reference": format!("Practitioner/{}", crate::mapping::engine::practitioner_id(&plan.rendering_npi)) },
        "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole", "code": "primary" }] },
        "qualification": { "coding": [{ "system": "urn:wellness-gateway:codesystem:credential", "code": subject.valid.raw.clinician.credential }] }
    })];
    if let Some(npi) = &plan.supervising_npi {
        care_team.push(json!({
            "sequence": 2,
            "provider": { "reference": format!("Practitioner/{}", crate::mapping::engine::practitioner_id(npi)) },
            "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claimcareteamrole", "code": "supervisor" }] }
        }));
    }
    let diagnosis: Vec<Value> = plan
        .diagnoses
        .iter()
        .enumerate()
        .map(|(i, d)| {
            json!({ "sequence": i + 1, "diagnosisCodeableConcept": { "coding": [{ "system": "http://hl7.org/fhir/sid/icd-10-cm", "code": d }] } })
        })
        .collect();
    let pointers: Vec<usize> = (1..=plan.diagnoses.len().min(4)).collect();
    let date = subject.facts.date_of_service().to_string();
    let items: Vec<Value> = plan
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let mut item = json!({
                "sequence": i + 1,
                "careTeamSequence": [1],
                "diagnosisSequence": pointers,
                "productOrService": { "coding": [{ "system": code_system(&l.code), "code": l.code }] },
                "servicedDate": date,
                "quantity": { "value": l.units },
                "net": { "value": money(l.charge_cents.0), "currency": "USD" },
                "encounter": [{ "reference": format!("Encounter/{}", subject.session_id) }]
            });
            // The unit price when the charge divides evenly into the units (always, for the
            // shipped tables); never a rounded amount.
            if l.units > 0 && l.charge_cents.0 % i64::from(l.units) == 0 {
                item["unitPrice"] = json!({ "value": money(l.charge_cents.0 / i64::from(l.units)), "currency": "USD" });
            }
            if !l.modifiers.is_empty() {
                item["modifier"] =
                    l.modifiers.iter().map(|m| json!({ "coding": [{ "system": code_system(&l.code), "code": m }] })).collect();
            }
            if let Some(rev) = &l.revenue_code {
                item["revenue"] = json!({ "coding": [{ "system": REVENUE_SYSTEM, "code": rev }] });
            }
            if let Some(pos) = &plan.place_of_service {
                item["locationCodeableConcept"] = json!({ "coding": [{ "system": POS_SYSTEM, "code": pos }] });
            }
            item
        })
        .collect();
    let mut claim = json!({
        "resourceType": "Claim",
        "id": id,
        "identifier": [{ "system": PCN_SYSTEM, "value": pcn }],
        "status": "active",
        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": plan.form.code() }] },
        "use": "claim",
        "patient": { "reference": format!("Patient/{patient}") },
        "created": created,
        "insurer": {
            "identifier": { "system": PAYER_SYSTEM, "value": payer.map(|p| p.payer_id.as_str()).unwrap_or(plan.payer.as_str()) },
            "display": payer.map(|p| p.name.as_str()).unwrap_or(plan.payer.as_str())
        },
        "provider": { "reference": format!("Organization/{}", plan.biller) },
        "priority": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/processpriority", "code": "normal" }] },
        "facility": { "reference": format!("Location/{}", subject.facts.site_id) },
        "careTeam": care_team,
        "diagnosis": diagnosis,
        "supportingInfo": [{
            "sequence": 1,
            "category": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claiminformationcategory", "code": "info" }], "text": "face-to-face minutes" },
            "valueQuantity": { "value": subject.valid.minutes_face_to_face, "unit": "min", "system": "http://unitsofmeasure.org", "code": "min" }
        }],
        "insurance": [{
            "sequence": 1,
            "focal": true,
            "coverage": { "reference": format!("Coverage/{}", crate::mapping::engine::coverage_id(&patient)) }
        }],
        "item": items,
        "total": { "value": money(plan.charge_cents.0), "currency": "USD" },
        "extension": [{ "url": "urn:wellness-gateway:fhir:extension:claim-frequency", "valueCode": frequency }]
    });
    if let Some(p) = prior {
        claim["related"] = json!([{
            "claim": { "reference": format!("Claim/{}", p.id) },
            "relationship": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/ex-relatedclaimrelationship", "code": "prior" }] },
            "reference": p.payer_claim_number.as_ref().map(|n| json!({ "value": n })).unwrap_or_else(|| json!({ "system": PCN_SYSTEM, "value": p.pcn }))
        }]);
    }
    if frequency == "8" {
        claim["status"] = json!("cancelled");
    }
    claim
}

/// Dollars as a JSON number with exactly the cents (built from the decimal text, never a float
/// computation).
pub(crate) fn money(cents: i64) -> Value {
    let text = crate::domain::Cents(cents).to_string();
    serde_json::from_str::<serde_json::Number>(&text).map(Value::Number).unwrap_or(Value::Null)
}

/// The claim rows of a planned claim.
#[allow(clippy::too_many_arguments)]
fn new_claim(
    pipeline: &Pipeline,
    subject: &Subject,
    version: i64,
    program: &str,
    program_version: NaiveDate,
    plan: &PlannedClaim,
    frequency: &str,
    prior: Option<&ClaimRow>,
    now_us: i64,
) -> Result<NewClaim, ClaimError> {
    let id = uuid::Uuid::now_v7().to_string();
    let pcn = new_pcn();
    let created = crate::fhir::instant(now_us);
    let resource = fhir_claim(pipeline, &id, &pcn, subject, plan, frequency, prior, &created);
    if let Err(v) = pipeline.mapper.fhir().validate(&resource) {
        let problems = v.iter().map(|x| format!("{}: {}", x.pointer, x.message)).collect::<Vec<_>>().join("; ");
        return Err(ClaimError::InvalidResource { session: subject.session_id.clone(), problems });
    }
    let lines = plan
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| ClaimLineRow {
            claim_id: id.clone(),
            line_no: i as i64 + 1,
            line_id: format!("{pcn}-{}", i + 1),
            revenue_code: l.revenue_code.clone(),
            code: l.code.clone(),
            modifiers: l.modifiers.join(":"),
            units: i64::from(l.units),
            charge_cents: l.charge_cents.0,
            expected_cents: l.expected_cents.0,
            informational: l.informational,
        })
        .collect();
    let row = ClaimRow {
        id: id.clone(),
        pcn,
        session_id: subject.session_id.clone(),
        session_version: version,
        patient_id: subject.facts.patient_id.clone(),
        service_date: subject.facts.date_of_service().to_string(),
        site_id: subject.facts.site_id.clone(),
        lea_id: subject.facts.lea_id.clone(),
        program: program.to_string(),
        program_version: program_version.to_string(),
        visit_category: plan.visit_category.clone(),
        form: plan.form.code().to_string(),
        biller: plan.biller.clone(),
        payer: plan.payer.clone(),
        rendering_npi: plan.rendering_npi.clone(),
        frequency: frequency.to_string(),
        replaces: prior.map(|p| p.id.clone()),
        payer_claim_number: prior.and_then(|p| p.payer_claim_number.clone()),
        status: "ready".into(),
        active: 1,
        charge_cents: plan.charge_cents.0,
        expected_cents: plan.expected_cents.0,
        plan: serde_json::to_string(plan).unwrap_or_default(),
        resource: resource.to_string(),
        batch_id: None,
        created_us: now_us,
        updated_us: now_us,
    };
    Ok(NewClaim { row, lines })
}

/// A frequency-8 void of `prior`: the same claim (its date, member, lines and session
/// version) with a new claim number, pointing at the payer's number of `prior`.
fn void_claim(prior: &ClaimRow, lines: &[ClaimLineRow], now_us: i64) -> Result<NewClaim, ClaimError> {
    let id = uuid::Uuid::now_v7().to_string();
    let pcn = new_pcn();
    let mut resource: Value = serde_json::from_str(&prior.resource)
        .map_err(|e| StoreError::Corrupt(format!("claim {} has an unreadable resource: {e}", prior.id)))?;
    resource["id"] = json!(id);
    resource["identifier"] = json!([{ "system": PCN_SYSTEM, "value": pcn }]);
    resource["status"] = json!("cancelled");
    resource["created"] = json!(crate::fhir::instant(now_us));
    resource["extension"] = json!([{ "url": "urn:wellness-gateway:fhir:extension:claim-frequency", "valueCode": "8" }]);
    resource["related"] = json!([{
        "claim": { "reference": format!("Claim/{}", prior.id) },
        "relationship": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/ex-relatedclaimrelationship", "code": "prior" }] },
        "reference": prior.payer_claim_number.as_ref().map(|n| json!({ "value": n })).unwrap_or_else(|| json!({ "system": PCN_SYSTEM, "value": prior.pcn }))
    }]);
    let lines = lines.iter().map(|l| ClaimLineRow { claim_id: id.clone(), line_id: format!("{pcn}-{}", l.line_no), ..l.clone() }).collect();
    let row = ClaimRow {
        id,
        pcn,
        frequency: "8".into(),
        replaces: Some(prior.id.clone()),
        payer_claim_number: prior.payer_claim_number.clone(),
        status: "ready".into(),
        active: 1,
        resource: resource.to_string(),
        batch_id: None,
        created_us: now_us,
        updated_us: now_us,
        ..prior.clone()
    };
    Ok(NewClaim { row, lines })
}

/// Reasons that stop a new claim but do not undo one the payer already has: a revoked consent
/// does not reach back to a disclosure made, and a closed filing window does not withdraw a
/// claim filed in time.
fn only_blocks_new_filings(reasons: &[crate::billing::Reason]) -> bool {
    !reasons.is_empty()
        && reasons
            .iter()
            .all(|r| matches!(r.code, crate::billing::ReasonCode::TimelyFilingExpired | crate::billing::ReasonCode::NoPaymentConsent))
}

/// Settles one session version: decides billing and writes the claim change. `Ok(Stale)` when
/// something moved underneath (the caller tries again on its next pass).
pub async fn settle(store: &Store, pipeline: &Pipeline, s: &UnbilledSession, actor: &str, today: NaiveDate) -> Result<Settled, ClaimError> {
    let now_us = crate::store::now_us();
    fn guard_base<'a>(s: &'a UnbilledSession, active: Option<&'a ClaimRow>) -> SettleGuard<'a> {
        SettleGuard {
            session_id: &s.id,
            version: s.current_version,
            billed_version: s.billed_version,
            active_claim: None,
            visits: None,
            outcome: None,
        }
        .with_active(active)
    }
    let subject = match pipeline.billing_stored(store, &s.id).await {
        Ok(Some(subject)) => subject,
        Ok(None) => return Ok(Settled::Stale),
        Err(BillingSubjectError::Store(e)) => return Err(e.into()),
        Err(BillingSubjectError::Invalid(_)) => {
            // The configuration changed under a stored record; nothing can be billed until it
            // is amended (which makes a new version and brings it back here).
            tracing::warn!(session = %s.id, version = s.current_version, "stored session no longer validates; not billed");
            let active = store.active_claim(&s.id).await?;
            let mut guard = guard_base(s, active.as_ref());
            guard.outcome = Some(("record-invalid".into(), 0));
            return Ok(store
                .settle_session(&guard, Settlement::Nothing { reason: "record no longer validates".into() }, actor, now_us)
                .await?);
        }
    };
    let active = store.active_claim(&s.id).await?;
    let (decision, visits_seen) =
        crate::billing::decide_subject_counted(store, &pipeline.consent, &pipeline.billing, &subject, today).await?;
    let date = subject.facts.date_of_service().to_string();
    let mut guard = guard_base(s, active.as_ref());
    if let Some(p) = subject.facts.patient_id.as_deref() {
        guard.visits = Some((p, &date, visits_seen));
    }
    let mut codes: Vec<String> = Vec::new();
    for r in &decision.reasons {
        let c = serde_json::to_value(r.code).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        if !codes.contains(&c) {
            codes.push(c);
        }
    }
    let billable = decision.claim.is_some();
    guard.outcome = Some((if billable { String::new() } else { codes.join(",") }, subject.valid.minutes_face_to_face));
    let sent = active.as_ref().is_some_and(|a| SENT.contains(&a.status.as_str()));
    // An unsent replacement or void stands for a claim the payer has: what follows it refers
    // to that claim, never starts over with an original.
    let predecessor = match active.as_ref() {
        Some(a) if !sent && a.frequency != "1" => match a.replaces.as_deref() {
            Some(p) => store.claim(p).await?,
            None => None,
        },
        _ => None,
    };
    let void_of =
        |prior: &ClaimRow, lines: &[ClaimLineRow], retire: (String, &'static str), why: String| -> Result<Settlement, ClaimError> {
            Ok(Settlement::Change { retire: Some(retire), new: Some(Box::new(void_claim(prior, lines, now_us)?)), reason: why })
        };
    let not_billable = || decision.reasons.iter().map(|r| format!("{:?}", r.code)).collect::<Vec<_>>().join(", ");
    let same_bill = |plan: &PlannedClaim, a: &ClaimRow| serde_json::to_string(plan).unwrap_or_default() == a.plan;
    let settlement = match (decision.claim.as_ref(), active.as_ref()) {
        (Some(plan), None) => {
            let program = decision.program.as_deref().unwrap_or_default();
            let version = decision.program_version.unwrap_or(today);
            let new = new_claim(pipeline, &subject, s.current_version, program, version, plan, "1", None, now_us)?;
            Settlement::Change {
                retire: None,
                new: Some(Box::new(new)),
                reason: format!("session version {} is billable under {program}", s.current_version),
            }
        }
        (Some(plan), Some(a)) if a.frequency != "8" && same_bill(plan, a) => {
            Settlement::Nothing { reason: format!("version {} bills the same as claim {}", s.current_version, a.pcn) }
        }
        // A void on its way to the payer: billing again waits for its acknowledgement (an
        // accepted void brings the session back here).
        (Some(_), Some(a)) if a.frequency == "8" && matches!(a.status.as_str(), "batched" | "submitted") => {
            Settlement::Nothing { reason: format!("void {} is not acknowledged yet", a.pcn) }
        }
        // The member changed after the payer got the claim: void it; the new member's original
        // follows once the void is accepted.
        (Some(_), Some(a)) if sent && a.frequency != "8" && a.patient_id != subject.facts.patient_id => {
            let lines = store.claim_lines(&a.id).await?;
            void_of(
                a,
                &lines,
                (a.id.clone(), "voided"),
                format!("session version {} names another student: claim {} voided", s.current_version, a.pcn),
            )?
        }
        (Some(plan), Some(a)) => {
            let program = decision.program.as_deref().unwrap_or_default();
            let version = decision.program_version.unwrap_or(today);
            let (freq, prior, to) = match (sent, &predecessor) {
                // The payer accepted the void: billing again starts with a new original.
                (true, _) if a.frequency == "8" => ("1", None, "closed"),
                (true, _) => ("7", Some(a), "replaced"),
                (false, Some(p)) => ("7", Some(p), "cancelled"),
                (false, None) => ("1", None, "cancelled"),
            };
            let new = new_claim(pipeline, &subject, s.current_version, program, version, plan, freq, prior, now_us)?;
            Settlement::Change {
                retire: Some((a.id.clone(), to)),
                new: Some(Box::new(new)),
                reason: format!("session amended (version {}): claim {} {to}", s.current_version, a.pcn),
            }
        }
        (None, Some(a)) if a.frequency == "8" && a.status != "rejected" => {
            Settlement::Nothing { reason: format!("claim {} voids it already", a.pcn) }
        }
        (None, Some(a)) if sent && only_blocks_new_filings(&decision.reasons) => {
            Settlement::Nothing { reason: format!("claim {} stands: {} stop only new claims", a.pcn, not_billable()) }
        }
        (None, Some(a)) if sent => {
            let lines = store.claim_lines(&a.id).await?;
            void_of(
                a,
                &lines,
                (a.id.clone(), "voided"),
                format!("session version {} is not billable ({}): claim {} voided", s.current_version, not_billable(), a.pcn),
            )?
        }
        (None, Some(a)) => match &predecessor {
            // An unsent replacement: withdraw it and void the claim the payer has.
            Some(p) => {
                let lines = store.claim_lines(&p.id).await?;
                void_of(
                    p,
                    &lines,
                    (a.id.clone(), "cancelled"),
                    format!(
                        "session version {} is not billable ({}): replacement {} withdrawn, claim {} voided",
                        s.current_version,
                        not_billable(),
                        a.pcn,
                        p.pcn
                    ),
                )?
            }
            None => Settlement::Change {
                retire: Some((a.id.clone(), "cancelled")),
                new: None,
                reason: format!("session version {} is not billable; claim {} withdrawn before it was sent", s.current_version, a.pcn),
            },
        },
        (None, None) => Settlement::Nothing { reason: "not billable".into() },
    };
    if let Settlement::Nothing { reason } = &settlement {
        tracing::debug!(session = %s.id, version = s.current_version, %reason, "session settled without a claim change");
    }
    Ok(store.settle_session(&guard, settlement, actor, now_us).await?)
}

/// Figures of one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassFigures {
    /// Session versions settled.
    pub settled: usize,
    /// Left for the next pass (something moved underneath).
    pub stale: usize,
    /// Failed (logged).
    pub failed: usize,
}

/// One pass over the sessions whose billing is not settled (at most `limit`).
pub async fn run_pass(store: &Store, pipeline: &Pipeline, actor: &str, today: NaiveDate, limit: i64) -> Result<PassFigures, StoreError> {
    let mut f = PassFigures::default();
    for s in store.unbilled_sessions(limit).await? {
        match settle(store, pipeline, &s, actor, today).await {
            Ok(Settled::Done) => f.settled += 1,
            Ok(Settled::Stale) => f.stale += 1,
            Err(e) => {
                f.failed += 1;
                tracing::error!(session = %s.id, version = s.current_version, error = %e, "claim settlement failed; retried in 10 minutes");
                store.billing_retry_later(&s.id, crate::store::now_us() + 600_000_000).await?;
            }
        }
    }
    Ok(f)
}

/// The claim worker: settles unsettled session versions every `billing.poll_seconds`.
#[derive(Clone)]
pub struct Claimer {
    store: Store,
    pipeline: Pipeline,
    poll: Duration,
    actor: Arc<str>,
}

impl Claimer {
    /// A worker over `store`.
    pub fn new(store: Store, pipeline: Pipeline) -> Claimer {
        let poll = Duration::from_secs(pipeline.settings.billing.poll_seconds.max(1));
        let actor: Arc<str> = Arc::from(format!("claim-worker:{}", uuid::Uuid::new_v4().simple()));
        Claimer { store, pipeline, poll, actor }
    }

    /// Runs until the task is dropped.
    pub async fn run(self) {
        loop {
            let today = chrono::Utc::now().date_naive();
            loop {
                match run_pass(&self.store, &self.pipeline, &self.actor, today, 500).await {
                    Ok(f) if f.settled + f.failed > 0 => {
                        tracing::info!(settled = f.settled, stale = f.stale, failed = f.failed, "claim worker pass");
                        if f.settled == 0 {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "claim worker could not read unsettled sessions");
                        break;
                    }
                }
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
