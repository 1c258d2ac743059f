//! X12 batches: ready claims grouped by payer, billing provider and claim form into one
//! interchange each (ISA/GS/ST with persisted control numbers), written by the typed X12 layer
//! (`crate::x12`) as 837P (fee-schedule programs) or 837I (FQHC PPS visits).

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::Serialize;

use crate::billing::PlannedClaim;
use crate::pipeline::Pipeline;
use crate::settings::{Address, Settings};
use crate::store::{BatchRow, ClaimRow, Store, StoreError};
use crate::validate::RawSession;
use crate::x12::{self, claim837 as c837};

/// Why a batch could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Configuration the 837 needs is missing (names the key).
    #[error("{key}: {message}")]
    Config {
        /// Dotted configuration key.
        key: String,
        /// What is missing.
        message: String,
    },
    /// The X12 layer refused a value (names the segment and element).
    #[error("claim {claim}: {source}")]
    X12 {
        /// CLM01 (or the batch).
        claim: String,
        /// The X12 error.
        #[source]
        source: x12::X12Error,
    },
    /// A stored claim or session could not be read back.
    #[error("{0}")]
    Corrupt(String),
}

/// What a built batch answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchSummary {
    /// Batch id.
    pub id: String,
    /// Payer (configuration id).
    pub payer: String,
    /// Billing provider (configuration id).
    pub biller: String,
    /// `005010X222A1` (837P) or `005010X223A2` (837I).
    pub implementation: String,
    /// ISA13.
    pub isa_control: i64,
    /// GS06.
    pub gs_control: i64,
    /// Claims in it.
    pub claim_count: i64,
    /// Sum of the claims' charges, in cents.
    pub total_cents: i64,
    /// built (download it) | queued (being sent) | submitted | failed (retries exhausted).
    pub status: String,
    /// Submission attempts so far.
    pub attempts: i64,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When the clearinghouse took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submitted_at: Option<String>,
    /// CLM01 of each claim.
    pub claims: Vec<String>,
    /// Where to download the X12 file.
    pub x12: String,
}

impl BatchSummary {
    /// From a stored row and its claims' numbers.
    pub fn of(b: &BatchRow, claims: Vec<String>) -> BatchSummary {
        BatchSummary {
            id: b.id.clone(),
            payer: b.payer.clone(),
            biller: b.biller.clone(),
            implementation: b.implementation.clone(),
            isa_control: b.isa_control,
            gs_control: b.gs_control,
            claim_count: b.claim_count,
            total_cents: b.total_cents,
            status: b.status.clone(),
            attempts: b.attempts,
            last_error: b.last_error.clone(),
            submitted_at: b.submitted_us.map(crate::fhir::instant),
            claims,
            x12: format!("/api/v1/claims/batches/{}/x12", b.id),
        }
    }
}

fn config(key: impl Into<String>, message: impl Into<String>) -> BatchError {
    BatchError::Config { key: key.into(), message: message.into() }
}

fn address(a: &Address) -> c837::Address {
    c837::Address {
        line1: x12_text(&a.line1, 55),
        line2: a.line2.as_deref().map(|l| x12_text(l, 55)).filter(|l| !l.is_empty()),
        city: x12_text(&a.city, 30),
        state: a.state.clone(),
        zip: a.zip.clone(),
    }
}

fn billing_provider(settings: &Settings, biller: &str) -> Result<c837::BillingProvider, BatchError> {
    let (i, org) = settings
        .organizations
        .iter()
        .enumerate()
        .find(|(_, o)| o.id == biller)
        .ok_or_else(|| config("organizations", format!("billing provider {biller} is not configured")))?;
    let need = |v: &Option<String>, k: &str| {
        v.clone().ok_or_else(|| config(format!("organizations[{i}].{k}"), format!("{biller} bills claims and needs its {k}")))
    };
    Ok(c837::BillingProvider {
        name: org.name.to_ascii_uppercase(),
        npi: need(&org.npi, "npi")?,
        tin: need(&org.tin, "tin")?,
        taxonomy: need(&org.taxonomy, "taxonomy")?,
        address: address(
            org.address
                .as_ref()
                .ok_or_else(|| config(format!("organizations[{i}].address"), format!("{biller} bills claims and needs its address")))?,
        ),
    })
}

/// A NUCC taxonomy of a credential from the mapping table, when it is a NUCC code.
fn taxonomy(pipeline: &Pipeline, site: &str, credential: &str) -> Option<String> {
    let set = pipeline.mapper.for_site(site);
    let code = set.tables.get("credentials")?.entries.get(credential)?.get("taxonomy")?.get("code")?.as_str()?.to_string();
    (code.len() == 10).then_some(code)
}

fn sex(s: &str) -> c837::Sex {
    match s {
        "female" => c837::Sex::Female,
        "male" => c837::Sex::Male,
        _ => c837::Sex::Unknown,
    }
}

/// Text as an 837 carries it: ASCII (accents transliterated: Peña -> PENA), upper case, no X12
/// delimiter characters, at most `max` characters. Names and addresses never make a batch fail.
fn x12_text(s: &str, max: usize) -> String {
    let ascii = deunicode::deunicode(s).to_ascii_uppercase();
    let cleaned: String = ascii.chars().map(|c| if c.is_ascii_graphic() && !"*:~^|>{}".contains(c) { c } else { ' ' }).collect();
    let mut out = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    out.truncate(max);
    out.trim_end().to_string()
}

fn upper(s: &str) -> String {
    x12_text(s, 60)
}

/// The 837 claim of a stored claim and the session version it covers.
fn x12_claim(pipeline: &Pipeline, c: &ClaimRow, plan: &PlannedClaim, raw: &RawSession) -> Result<c837::Claim, BatchError> {
    let corrupt = |m: &str| BatchError::Corrupt(format!("claim {}: {m}", c.pcn));
    let dos = NaiveDate::parse_from_str(&c.service_date, "%Y-%m-%d").map_err(|_| corrupt("unreadable date of service"))?;
    let birth = NaiveDate::parse_from_str(&raw.student.birth_date, "%Y-%m-%d").map_err(|_| corrupt("unreadable birth date"))?;
    let home = raw.student.address.as_ref().ok_or_else(|| corrupt("the session has no student address"))?;
    let member_id =
        raw.student.medi_cal_cin.as_deref().map(str::to_ascii_uppercase).ok_or_else(|| corrupt("the session has no Medi-Cal CIN"))?;
    let site = pipeline.settings.site(&c.site_id).ok_or_else(|| config("sites", format!("site {} is not configured", c.site_id)))?;
    let site_index = pipeline.settings.sites.iter().position(|s| s.id == c.site_id).unwrap_or_default();
    let facility = c837::Facility {
        name: upper(&site.name),
        npi: None,
        address: address(
            site.address
                .as_ref()
                .ok_or_else(|| config(format!("sites[{site_index}].address"), "the service facility (school) needs its address"))?,
        ),
    };
    let clinician = &raw.clinician;
    let rendering = c837::Person {
        last: upper(&clinician.family_name),
        first: x12_text(&clinician.given_name, 35),
        npi: clinician.npi.clone(),
        taxonomy: taxonomy(pipeline, &c.site_id, &clinician.credential),
    };
    let supervising = match (&plan.supervising_npi, &clinician.supervisor) {
        (Some(_), Some(s)) => {
            Some(c837::Person { last: upper(&s.family_name), first: x12_text(&s.given_name, 35), npi: s.npi.clone(), taxonomy: None })
        }
        _ => None,
    };
    let institutional = plan.form == crate::billing::ClaimForm::Institutional;
    let pointers: Vec<u8> = (1..=plan.diagnoses.len().min(4) as u8).collect();
    let lines = plan
        .lines
        .iter()
        .enumerate()
        .map(|(i, l)| c837::Line {
            line_id: format!("{}-{}", c.pcn, i + 1),
            procedure: l.code.clone(),
            modifiers: l.modifiers.clone(),
            revenue_code: if institutional { l.revenue_code.clone() } else { None },
            charge_cents: l.charge_cents.0,
            units: l.units,
            service_date: dos,
            diagnosis_pointers: if institutional { Vec::new() } else { pointers.clone() },
        })
        .collect();
    let form = if institutional {
        c837::ClaimForm::Institutional(c837::InstitutionalForm {
            facility_type: plan.facility_type.clone().ok_or_else(|| corrupt("an institutional claim without a facility type"))?,
            patient_status: "01".into(),
            admission_type: None,
            admission_source: None,
            reason_for_visit: plan.diagnoses.first().map(|d| vec![d.replace('.', "")]).unwrap_or_default(),
        })
    } else {
        c837::ClaimForm::Professional {
            place_of_service: plan.place_of_service.clone().ok_or_else(|| corrupt("a professional claim without a place of service"))?,
        }
    };
    Ok(c837::Claim {
        patient_control_number: c.pcn.clone(),
        form,
        frequency: match c.frequency.as_str() {
            "7" => c837::Frequency::Replacement,
            "8" => c837::Frequency::Void,
            _ => c837::Frequency::Original,
        },
        payer_claim_number: c.payer_claim_number.clone(),
        // CLM09: "I" (informed consent for federally restricted data) when the claim carries
        // Part 2 (SUD) data, disclosed under the signed consent billing checked; "Y" otherwise.
        release_of_information: if plan.part2 { c837::ReleaseOfInformation::Informed } else { c837::ReleaseOfInformation::Yes },
        total_charge_cents: c.charge_cents,
        diagnoses: plan.diagnoses.iter().map(|d| d.replace('.', "")).collect(),
        rendering: Some(rendering.clone()),
        supervising: if institutional { None } else { supervising },
        attending: if institutional { Some(rendering) } else { None },
        service_facility: Some(facility),
        statement_from: dos,
        statement_to: dos,
        lines,
        subscriber: c837::Subscriber {
            member_id,
            last: upper(&raw.student.family_name),
            first: x12_text(&raw.student.given_name, 35),
            birth_date: birth,
            sex: sex(&raw.student.sex),
            address: address(home),
        },
    })
}

/// Ready claims grouped by (payer, billing provider, claim form), with the session records
/// they bill: what one batch each is built from.
pub struct Ready {
    /// Groups in a stable order.
    pub groups: BTreeMap<(String, String, String), Vec<ClaimRow>>,
    /// Session records by (session id, version).
    pub records: HashMap<(String, i64), String>,
}

/// Reads up to `limit` ready claims and the session versions they bill.
pub async fn ready(store: &Store, limit: i64) -> Result<Ready, BatchError> {
    let claims = store.ready_claims(limit).await?;
    let keys: Vec<(&str, i64)> = claims.iter().map(|c| (c.session_id.as_str(), c.session_version)).collect();
    let records = store.session_records(&keys).await?;
    let mut groups: BTreeMap<(String, String, String), Vec<ClaimRow>> = BTreeMap::new();
    for c in claims {
        groups.entry((c.payer.clone(), c.biller.clone(), c.form.clone())).or_default().push(c);
    }
    Ok(Ready { groups, records })
}

/// The typed 837 claim of one stored claim.
fn claim_of(pipeline: &Pipeline, c: &ClaimRow, records: &HashMap<(String, i64), String>) -> Result<c837::Claim, BatchError> {
    let plan: PlannedClaim =
        serde_json::from_str(&c.plan).map_err(|e| BatchError::Corrupt(format!("claim {} has an unreadable plan: {e}", c.pcn)))?;
    let record = records
        .get(&(c.session_id.clone(), c.session_version))
        .ok_or_else(|| BatchError::Corrupt(format!("claim {}: session version not found", c.pcn)))?;
    let raw: RawSession =
        serde_json::from_str(record).map_err(|e| BatchError::Corrupt(format!("claim {}: unreadable session record: {e}", c.pcn)))?;
    x12_claim(pipeline, c, &plan, &raw)
}

/// The typed 837 interchange of one group (pure: no I/O).
pub fn interchange(
    pipeline: &Pipeline,
    key: (&str, &str, &str),
    claims: &[ClaimRow],
    records: &HashMap<(String, i64), String>,
    isa: i64,
    gs: i64,
    now: chrono::NaiveDateTime,
) -> Result<c837::Interchange, BatchError> {
    let x_claims = claims.iter().map(|c| claim_of(pipeline, c, records)).collect::<Result<Vec<_>, _>>()?;
    interchange_of(pipeline, key, x_claims, isa, gs, now)
}

/// The typed 837 interchange of one group from its claims already in X12 form.
fn interchange_of(
    pipeline: &Pipeline,
    (payer_id, biller, form): (&str, &str, &str),
    x_claims: Vec<c837::Claim>,
    isa: i64,
    gs: i64,
    now: chrono::NaiveDateTime,
) -> Result<c837::Interchange, BatchError> {
    let settings = &pipeline.settings;
    let b = &settings.billing;
    let payer = pipeline
        .billing
        .payers
        .get(payer_id)
        .ok_or_else(|| config("mappings/billing/payers.toml", format!("payer {payer_id} is not configured")))?;
    let provider = billing_provider(settings, biller)?;
    let implementation = if form == "institutional" { c837::Implementation::Institutional } else { c837::Implementation::Professional };
    Ok(c837::Interchange {
        sender_qualifier: b.sender_qualifier.clone(),
        sender_id: b.sender_id.clone(),
        receiver_qualifier: b.receiver_qualifier.clone(),
        receiver_id: b.receiver_id.clone(),
        gs_sender: b.sender_id.clone(),
        gs_receiver: b.receiver_id.clone(),
        usage: if b.usage == "P" { x12::Usage::Production } else { x12::Usage::Test },
        ack_requested: true,
        isa_control: u32::try_from(isa).unwrap_or(1),
        gs_control: u32::try_from(gs).unwrap_or(1),
        created: now,
        implementation,
        transactions: vec![c837::Transaction837 {
            control_number: "0001".into(),
            reference: format!("{isa:09}"),
            created: now,
            submitter: c837::Submitter {
                name: b.submitter_name.clone(),
                id: b.sender_id.clone(),
                contact_name: b.contact_name.clone(),
                phone: b.contact_phone.clone(),
            },
            receiver: c837::Receiver { name: b.receiver_name.clone(), id: b.receiver_id.clone() },
            billing_provider: provider,
            payer: c837::Payer { name: upper(&payer.name), id: payer.payer_id.clone(), filing_indicator: payer.filing_indicator.clone() },
            claims: x_claims,
        }],
    })
}

/// What building batches did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct Built {
    /// The batches built.
    pub batches: Vec<BatchSummary>,
    /// Claims put on hold because they cannot be written as X12 (CLM01 and why; the session's
    /// amendment replaces them).
    pub held: Vec<HeldClaim>,
    /// Groups not built (a configuration problem, named by its key); their claims stay ready.
    pub errors: Vec<String>,
}

/// A claim put on hold.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HeldClaim {
    /// CLM01.
    pub claim_number: String,
    /// Why (no personal data).
    pub reason: String,
}

/// Builds one batch per (payer, billing provider, claim form) of the ready claims (at most
/// `limit`), stores each with its control numbers and moves its claims to `batched`. A claim
/// that cannot be written is put on hold and the rest go; a group whose configuration is
/// incomplete is reported and the other groups go.
pub async fn build(store: &Store, pipeline: &Pipeline, actor: &str, limit: i64) -> Result<Built, BatchError> {
    let ready = ready(store, limit).await?;
    let mut out = Built::default();
    for ((payer_id, biller, form), claims) in &ready.groups {
        let mut good = Vec::with_capacity(claims.len());
        let mut x_claims = Vec::with_capacity(claims.len());
        let mut config_error = None;
        for c in claims {
            match claim_of(pipeline, c, &ready.records) {
                Ok(x) => {
                    good.push(c);
                    x_claims.push(x);
                }
                Err(BatchError::Config { key, message }) => {
                    config_error = Some(format!("{payer_id}/{biller}: configuration {key}: {message}"));
                    break;
                }
                Err(BatchError::Store(e)) => return Err(BatchError::Store(e)),
                Err(e) => {
                    let reason = e.to_string();
                    if store.hold_claim(&c.id, &reason, actor, crate::store::now_us()).await? {
                        out.held.push(HeldClaim { claim_number: c.pcn.clone(), reason });
                    }
                }
            }
        }
        if let Some(e) = config_error {
            out.errors.push(e);
            continue;
        }
        if good.is_empty() {
            continue;
        }
        let isa = store.next_control_number("isa").await?;
        let gs = store.next_control_number("gs").await?;
        let now = chrono::Utc::now().naive_utc();
        let interchange = match interchange_of(pipeline, (payer_id, biller, form), x_claims, isa, gs, now) {
            Ok(i) => i,
            Err(BatchError::Store(e)) => return Err(BatchError::Store(e)),
            Err(e) => {
                out.errors.push(format!("{payer_id}/{biller}: {e}"));
                continue;
            }
        };
        let written = match c837::build_interchange(&interchange, &x12::Delimiters::readable()) {
            Ok(w) => w,
            Err(e) => {
                out.errors.push(format!("{payer_id}/{biller}: {e}"));
                continue;
            }
        };
        // With a clearinghouse for the payer the batch goes into the submission outbox.
        let queued = pipeline.settings.billing.clearinghouses.iter().any(|c| &c.payer == payer_id);
        let now_us = crate::store::now_us();
        let row = BatchRow {
            id: uuid::Uuid::now_v7().to_string(),
            payer: payer_id.clone(),
            biller: biller.clone(),
            implementation: interchange.implementation.version().to_string(),
            isa_control: isa,
            gs_control: gs,
            st_control: "0001".into(),
            claim_count: good.len() as i64,
            total_cents: good.iter().map(|c| c.charge_cents).sum(),
            x12: written.text,
            status: if queued { "queued".into() } else { "built".into() },
            created_by: actor.to_string(),
            created_us: now_us,
            attempts: 0,
            next_attempt_us: queued.then_some(now_us),
            queued_us: queued.then_some(now_us),
            last_error: None,
            submitted_us: None,
        };
        let ids: Vec<&str> = good.iter().map(|c| c.id.as_str()).collect();
        if store.insert_batch(&row, &ids, actor).await? {
            tracing::info!(batch = %row.id, payer = %payer_id, biller = %biller, claims = row.claim_count, isa = isa, "claim batch built");
            out.batches.push(BatchSummary::of(&row, good.iter().map(|c| c.pcn.clone()).collect()));
        } else {
            tracing::info!(payer = %payer_id, biller = %biller, "claims changed while batching; left for the next batch");
        }
    }
    Ok(out)
}
