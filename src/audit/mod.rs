//! The audit trail of partner disclosures: one FHIR `AuditEvent` per partner request, naming the
//! client, its FQHC, the purpose of use, the interaction, and every resource judged with its
//! decision, rule and consent (id/version). The event is written before the response is sent;
//! if it cannot be written, nothing is disclosed.
//!
//! Requests hand their event to one [`Auditor`] task, which appends whatever is queued in one
//! transaction (group commit: under load many requests share a commit) and answers each request
//! once its event is durable. The chain and its verification live in `store::audit`.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::domain::PurposeOfUse;
use crate::serve::Verdict;
use crate::store::{GENESIS_HASH, PREVIOUS_HASH_EXTENSION, PendingEvent, Store, event_hash};

/// Withheld resources listed one by one in an event (the rest are counted by rule).
pub const MAX_LISTED_WITHHELD: usize = 100;

/// Most events appended in one transaction.
const MAX_BATCH: usize = 256;

/// The FHIR interaction a partner performed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    /// read
    Read,
    /// vread
    Vread,
    /// history-instance
    History,
    /// search-type (and its `_include`s)
    Search,
    /// search-type with `_summary=count`
    Count,
    /// a subscription notification (id-only) sent to the partner
    Notify,
}

impl Interaction {
    fn code(self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::History => "history-instance",
            Interaction::Search | Interaction::Count => "search-type",
            Interaction::Notify => "operation",
        }
    }
}

/// What one partner request disclosed and withheld.
#[derive(Debug, Clone)]
pub struct Disclosure<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// The partner's FQHC.
    pub org: &'a str,
    /// The access token's id, if any.
    pub token_id: Option<&'a str>,
    /// Purpose of use.
    pub purpose: PurposeOfUse,
    /// Interaction.
    pub interaction: Interaction,
    /// The request id (X-Request-Id).
    pub request_id: Option<String>,
    /// The request path and query (may name identifiers: kept in the audit store, never logged).
    pub query: String,
    /// Every resource judged: (type, id, verdict).
    pub verdicts: &'a [(String, String, Verdict)],
    /// For `_summary=count`: the number answered.
    pub count: Option<i64>,
}

fn detail(kind: &str, value: &str) -> Value {
    json!({ "type": kind, "valueString": value })
}

/// Builds the AuditEvent of a disclosure.
pub fn event(d: &Disclosure<'_>, at: DateTime<Utc>) -> PendingEvent {
    // Time-ordered (UUIDv7): the id index grows at its right edge instead of taking each insert at
    // a random page (each of which a commit would copy into the WAL).
    let id = uuid::Uuid::now_v7().to_string();
    let disclosed = d.verdicts.iter().any(|(_, _, v)| v.permitted);
    let refused = d.verdicts.iter().any(|(_, _, v)| !v.permitted);
    // Every disclosed resource is listed; withheld ones up to MAX_LISTED_WITHHELD, the rest
    // counted by rule (a search over many hidden matches must not write an event the size of
    // the database).
    let mut entities: Vec<Value> = Vec::new();
    let mut listed_withheld = 0usize;
    let mut unlisted: std::collections::BTreeMap<&str, u64> = std::collections::BTreeMap::new();
    let mut patients: Vec<(String, bool)> = Vec::new();
    let mut patient_at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (ty, rid, v) in d.verdicts {
        if !v.permitted {
            if listed_withheld >= MAX_LISTED_WITHHELD {
                *unlisted.entry(v.rule).or_default() += 1;
                continue;
            }
            listed_withheld += 1;
        }
        let mut details = vec![detail("decision", if v.permitted { "permit" } else { "deny" }), detail("rule", v.rule)];
        if let Some((cid, ver)) = &v.consent {
            details.push(detail("consent", &format!("Consent/{cid}/_history/{ver}")));
        }
        if let Some(p) = &v.patient {
            details.push(detail("patient", &format!("Patient/{p}")));
            match patient_at.get(p.as_str()) {
                Some(&i) => patients[i].1 |= v.permitted,
                None => {
                    patient_at.insert(p.as_str(), patients.len());
                    patients.push((p.clone(), v.permitted));
                }
            }
        }
        let mut entity = json!({
            "what": { "reference": format!("{ty}/{rid}") },
            "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
        });
        // Moved in, not interpolated: `json!` serialises an interpolated value into a copy.
        entity["detail"] = Value::Array(details);
        entities.push(entity);
    }
    for (p, was_disclosed) in &patients {
        entities.push(patient_entity(p, *was_disclosed));
    }
    let mut query_details = Vec::new();
    if let Some(rid) = &d.request_id {
        query_details.push(detail("request-id", rid));
    }
    if let Some(n) = d.count {
        query_details.push(detail("count", &n.to_string()));
    }
    for (rule, n) in &unlisted {
        query_details.push(detail("withheld-not-listed", &format!("{rule}: {n}")));
    }
    let mut query = json!({
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
        "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query" },
        "query": base64_encode(d.query.as_bytes()),
    });
    if !query_details.is_empty() {
        query["detail"] = query_details.into();
    }
    entities.push(query);
    let event = rest_event(RestEvent {
        id: &id,
        subtype: d.interaction.code(),
        action: if matches!(d.interaction, Interaction::Search | Interaction::Count) { "E" } else { "R" },
        at,
        // 0 = success (something disclosed, or nothing matched); 4 = minor failure (all refused).
        outcome: if refused && !disclosed { "4" } else { "0" },
        client_id: d.client_id,
        org: d.org,
        purpose: d.purpose,
        token_id: d.token_id,
        entities,
    });
    PendingEvent { id, recorded_us: at.timestamp_micros(), client_id: d.client_id.to_string(), event, patients }
}

/// The entity naming a student an event is about.
fn patient_entity(patient: &str, disclosed: bool) -> Value {
    let mut entity = json!({
        "what": { "reference": format!("Patient/{patient}") },
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person" },
        "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient" },
    });
    entity["detail"] = Value::Array(vec![detail("disclosed", if disclosed { "true" } else { "false" })]);
    entity
}

/// What distinguishes one partner AuditEvent from another; [`rest_event`] adds the rest.
struct RestEvent<'a> {
    id: &'a str,
    subtype: &'static str,
    action: &'static str,
    at: DateTime<Utc>,
    outcome: &'static str,
    client_id: &'a str,
    org: &'a str,
    purpose: PurposeOfUse,
    token_id: Option<&'a str>,
    entities: Vec<Value>,
}

/// A partner AuditEvent: the recipient client and its purpose, the gateway as source, the FQHC.
fn rest_event(e: RestEvent<'_>) -> Value {
    let mut agent = json!({
        "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient" }] },
        "who": { "identifier": { "system": "urn:wellness-gateway:client-id", "value": e.client_id } },
        "requestor": true,
        "purposeOfUse": [{ "coding": [{ "system": PurposeOfUse::SYSTEM, "code": e.purpose.code() }] }],
    });
    if let Some(t) = e.token_id {
        agent["policy"] = json!([format!("urn:wellness-gateway:access-token:{t}")]);
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": e.id,
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation" },
        "subtype": [{ "system": "http://hl7.org/fhir/restful-interaction", "code": e.subtype }],
        "action": e.action,
        "recorded": e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "outcome": e.outcome,
        "purposeOfEvent": [{ "coding": [{ "system": PurposeOfUse::SYSTEM, "code": e.purpose.code() }] }],
        "agent": [agent, {
            "type": { "coding": [{ "system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110153", "display": "Source Role ID" }] },
            "who": { "display": "wellness-gateway" },
            "requestor": false,
        }],
        "source": {
            "observer": { "display": "wellness-gateway" },
            "type": [{ "system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server" }],
        },
        "extension": [{ "url": "urn:wellness-gateway:fhir:extension:partner-organization", "valueString": e.org }],
    });
    // Moved in (a `json!` interpolation would serialise the entities into a copy).
    event["entity"] = Value::Array(e.entities);
    event
}

/// What one bulk export disclosed: a completed job (counts), or one downloaded file (the
/// students whose data it holds).
#[derive(Debug, Clone)]
pub struct BulkDisclosure<'a> {
    /// Client id.
    pub client_id: &'a str,
    /// The partner's FQHC.
    pub org: &'a str,
    /// Purpose of use.
    pub purpose: PurposeOfUse,
    /// The request id (X-Request-Id), for a download.
    pub request_id: Option<String>,
    /// The kick-off URL (job) or the file URL (download).
    pub query: String,
    /// The job.
    pub job_id: &'a str,
    /// The file, for a download.
    pub file: Option<&'a str>,
    /// Students whose data was disclosed.
    pub patients: &'a [String],
    /// Counts (`written Encounter: 12`, `withheld no-consent: 3`), as details of the query entity.
    pub counts: Vec<(String, u64)>,
}

/// Builds the AuditEvent of a bulk export job or file download.
pub fn bulk_event(d: &BulkDisclosure<'_>, at: DateTime<Utc>) -> PendingEvent {
    let id = uuid::Uuid::now_v7().to_string();
    let mut entities: Vec<Value> = d.patients.iter().map(|p| patient_entity(p, true)).collect();
    let mut details = vec![detail("export-job", d.job_id)];
    if let Some(f) = d.file {
        details.push(detail("export-file", f));
    }
    if let Some(rid) = &d.request_id {
        details.push(detail("request-id", rid));
    }
    for (k, n) in &d.counts {
        details.push(detail(k, &n.to_string()));
    }
    let mut query = json!({
        "type": { "system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object" },
        "role": { "system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query" },
        "query": base64_encode(d.query.as_bytes()),
    });
    query["detail"] = Value::Array(details);
    entities.push(query);
    let event = rest_event(RestEvent {
        id: &id,
        subtype: "operation",
        action: if d.file.is_some() { "R" } else { "E" },
        at,
        outcome: "0",
        client_id: d.client_id,
        org: d.org,
        purpose: d.purpose,
        token_id: None,
        entities,
    });
    let patients = d.patients.iter().map(|p| (p.clone(), true)).collect();
    PendingEvent { id, recorded_us: at.timestamp_micros(), client_id: d.client_id.to_string(), event, patients }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

type Reply = oneshot::Sender<Result<(), String>>;

/// The one task that appends audit events (group commit).
#[derive(Debug, Clone)]
pub struct Auditor {
    tx: mpsc::Sender<(PendingEvent, Reply)>,
}

/// The audit trail could not be written; nothing may be disclosed.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written: {0}")]
pub struct AuditError(String);

impl Auditor {
    /// Starts the task on the current runtime.
    pub fn spawn(store: Store) -> Auditor {
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(run(store, rx));
        Auditor { tx }
    }

    /// Appends one event; returns once it is durable.
    pub async fn record(&self, event: PendingEvent) -> Result<(), AuditError> {
        let (reply, wait) = oneshot::channel();
        self.tx.send((event, reply)).await.map_err(|_| AuditError("the audit writer has stopped".into()))?;
        wait.await.map_err(|_| AuditError("the audit writer has stopped".into()))?.map_err(AuditError)
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<(PendingEvent, Reply)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (events, replies): (Vec<PendingEvent>, Vec<Reply>) = batch.into_iter().unzip();
        let n = events.len();
        let result = store.append_audit(events).await.map_err(|e| {
            tracing::error!(error = %e, events = n, "audit append failed; the disclosures are refused");
            e.to_string()
        });
        for reply in replies {
            let _ = reply.send(result.clone());
        }
    }
}

/// The result of checking the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Events checked.
    pub events: i64,
    /// The first broken position and why, if any.
    pub broken: Option<(i64, String)>,
}

/// Checks the whole chain: positions without gaps, each event naming its predecessor's hash,
/// each hash the SHA-256 of its event. Streams in pages (memory does not grow with the chain).
pub async fn verify(store: &Store) -> Result<VerifyReport, crate::store::StoreError> {
    let mut prev = GENESIS_HASH.to_string();
    let mut expected_seq = 1;
    let mut checked = 0;
    loop {
        let rows = store.audit_chain(expected_seq - 1, 1000).await?;
        if rows.is_empty() {
            return Ok(VerifyReport { events: checked, broken: None });
        }
        for r in rows {
            let broken = |why: String| Ok(VerifyReport { events: checked, broken: Some((r.seq, why)) });
            if r.seq != expected_seq {
                return broken(format!("events {expected_seq} to {} are missing", r.seq - 1));
            }
            if r.prev_hash != prev {
                return broken("its previous-hash does not match the event before it (an event was removed or replaced)".into());
            }
            let named = serde_json::from_str::<Value>(&r.event).ok().and_then(|e| {
                e["extension"].as_array()?.iter().find(|x| x["url"] == PREVIOUS_HASH_EXTENSION)?["valueString"].as_str().map(str::to_owned)
            });
            if named.as_deref() != Some(prev.as_str()) {
                return broken("the event does not name the hash of the event before it".into());
            }
            if event_hash(&r.event) != r.hash {
                return broken("its content does not match its hash (the event was edited)".into());
            }
            prev = r.hash;
            expected_seq += 1;
            checked += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(permitted: bool, patient: &str) -> Verdict {
        Verdict { permitted, rule: if permitted { "consent" } else { "no-consent" }, consent: None, patient: Some(patient.into()) }
    }

    #[test]
    fn withheld_resources_beyond_the_cap_are_counted_not_listed() -> Result<(), &'static str> {
        let mut verdicts: Vec<(String, String, Verdict)> =
            (0..150).map(|i| ("Encounter".into(), format!("e{i}"), verdict(false, "p1"))).collect();
        verdicts.push(("Encounter".into(), "ok1".into(), verdict(true, "p2")));
        verdicts.push(("Encounter".into(), "ok2".into(), verdict(true, "p1")));
        let d = Disclosure {
            client_id: "c",
            org: "fqhc-demo",
            token_id: None,
            purpose: PurposeOfUse::Treat,
            interaction: Interaction::Search,
            request_id: Some("r".into()),
            query: "/fhir/Encounter".into(),
            verdicts: &verdicts,
            count: None,
        };
        let e = event(&d, Utc::now());
        let entities = e.event["entity"].as_array().ok_or("no entities")?;
        let resources = entities.iter().filter(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Encounter/"))).count();
        assert_eq!(resources, MAX_LISTED_WITHHELD + 2);
        let query = entities.last().ok_or("no query entity")?;
        assert!(query["detail"].as_array().ok_or("no details")?.iter().any(|x| x["valueString"] == "no-consent: 50"), "{query}");
        assert_eq!(e.patients, vec![("p1".to_string(), true), ("p2".to_string(), true)]);
        assert_eq!(e.event["outcome"], "0");
        Ok(())
    }
}
