//! The audit trail of partner disclosures: one FHIR `AuditEvent` per partner request, naming the
//! client, its FQHC, the purpose of use, the interaction, and every resource judged with its
//! decision, rule and consent (id/version). The event is written before the response is sent;
//! if it cannot be written, nothing is disclosed.
//!
//! On SQLite a request appends its event to the audit [`journal`] file on its own thread, and a
//! loader moves the journal into the database in large batches (see that module for why). On
//! PostgreSQL, where several gateway instances extend one chain, requests hand their event to
//! one [`Auditor`] task, which appends whatever is queued in one transaction (group commit: under
//! load many requests share a commit) and answers each request once its event is durable. The
//! chain and its verification live in `store::audit`.

pub mod journal;

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
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

/// A coding of fixed text.
#[derive(Debug, Clone, Copy, Serialize)]
struct Coding {
    system: &'static str,
    code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    display: Option<&'static str>,
}

const fn coding(system: &'static str, code: &'static str, display: &'static str) -> Coding {
    Coding { system, code, display: Some(display) }
}

const SYSTEM_OBJECT: Coding = coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object");
const PERSON: Coding = coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "1", "Person");
const PATIENT_ROLE: Coding = coding("http://terminology.hl7.org/CodeSystem/object-role", "1", "Patient");
const QUERY_ROLE: Coding = coding("http://terminology.hl7.org/CodeSystem/object-role", "24", "Query");

#[derive(Debug, Serialize)]
struct Concept {
    coding: [Coding; 1],
}

#[derive(Debug, Serialize)]
struct Detail {
    #[serde(rename = "type")]
    kind: Cow<'static, str>,
    #[serde(rename = "valueString")]
    value: String,
}

fn detail(kind: &'static str, value: impl Into<String>) -> Detail {
    Detail { kind: Cow::Borrowed(kind), value: value.into() }
}

#[derive(Debug, Serialize)]
struct Reference {
    reference: String,
}

/// An `AuditEvent.entity`.
#[derive(Debug, Serialize)]
struct Entity {
    #[serde(skip_serializing_if = "Option::is_none")]
    what: Option<Reference>,
    #[serde(rename = "type")]
    kind: Coding,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    detail: Vec<Detail>,
}

#[derive(Debug, Serialize)]
struct Identifier<'a> {
    system: &'static str,
    value: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Who<'a> {
    Identifier { identifier: Identifier<'a> },
    Display { display: &'static str },
}

#[derive(Debug, Serialize)]
struct Agent<'a> {
    #[serde(rename = "type")]
    kind: Concept,
    who: Who<'a>,
    requestor: bool,
    #[serde(rename = "purposeOfUse", skip_serializing_if = "Option::is_none")]
    purpose_of_use: Option<[Concept; 1]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<[String; 1]>,
}

#[derive(Debug, Serialize)]
struct Observer {
    display: &'static str,
}

#[derive(Debug, Serialize)]
struct Source {
    observer: Observer,
    #[serde(rename = "type")]
    kind: [Coding; 1],
}

#[derive(Debug, Serialize)]
struct Extension<'a> {
    url: &'static str,
    #[serde(rename = "valueString")]
    value: &'a str,
}

/// A partner AuditEvent as it is serialised: typed, straight to text (no intermediate JSON
/// tree). `extension` is the last member and never empty, so the store adds the chain's
/// previous-hash extension to the text without parsing it again (see `store::audit`).
#[derive(Debug, Serialize)]
struct AuditEventDoc<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: Coding,
    subtype: [Coding; 1],
    action: &'static str,
    recorded: String,
    outcome: &'static str,
    #[serde(rename = "purposeOfEvent")]
    purpose_of_event: [Concept; 1],
    agent: [Agent<'a>; 2],
    source: Source,
    entity: Vec<Entity>,
    extension: [Extension<'a>; 1],
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
    let mut entities: Vec<Entity> = Vec::new();
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
            details.push(detail("consent", format!("Consent/{cid}/_history/{ver}")));
        }
        if let Some(p) = &v.patient {
            details.push(detail("patient", format!("Patient/{p}")));
            match patient_at.get(p.as_str()) {
                Some(&i) => patients[i].1 |= v.permitted,
                None => {
                    patient_at.insert(p.as_str(), patients.len());
                    patients.push((p.clone(), v.permitted));
                }
            }
        }
        entities.push(Entity {
            what: Some(Reference { reference: format!("{ty}/{rid}") }),
            kind: SYSTEM_OBJECT,
            role: None,
            query: None,
            detail: details,
        });
    }
    for (p, was_disclosed) in &patients {
        entities.push(patient_entity(p, *was_disclosed));
    }
    let mut query_details = Vec::new();
    if let Some(rid) = &d.request_id {
        query_details.push(detail("request-id", rid.as_str()));
    }
    if let Some(n) = d.count {
        query_details.push(detail("count", n.to_string()));
    }
    for (rule, n) in &unlisted {
        query_details.push(detail("withheld-not-listed", format!("{rule}: {n}")));
    }
    entities.push(query_entity(&d.query, query_details));
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
fn patient_entity(patient: &str, disclosed: bool) -> Entity {
    Entity {
        what: Some(Reference { reference: format!("Patient/{patient}") }),
        kind: PERSON,
        role: Some(PATIENT_ROLE),
        query: None,
        detail: vec![detail("disclosed", if disclosed { "true" } else { "false" })],
    }
}

/// The entity carrying the request (base64, as FHIR's `entity.query` is).
fn query_entity(query: &str, details: Vec<Detail>) -> Entity {
    Entity { what: None, kind: SYSTEM_OBJECT, role: Some(QUERY_ROLE), query: Some(base64_encode(query.as_bytes())), detail: details }
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
    entities: Vec<Entity>,
}

/// A partner AuditEvent, serialised: the recipient client and its purpose, the gateway as
/// source, the FQHC.
fn rest_event(e: RestEvent<'_>) -> String {
    let purpose = || [Concept { coding: [Coding { system: PurposeOfUse::SYSTEM, code: e.purpose.code(), display: None }] }];
    let doc = AuditEventDoc {
        resource_type: "AuditEvent",
        id: e.id,
        kind: coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "Restful Operation"),
        subtype: [Coding { system: "http://hl7.org/fhir/restful-interaction", code: e.subtype, display: None }],
        action: e.action,
        recorded: e.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        outcome: e.outcome,
        purpose_of_event: purpose(),
        agent: [
            Agent {
                kind: Concept {
                    coding: [coding("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "IRCP", "information recipient")],
                },
                who: Who::Identifier { identifier: Identifier { system: "urn:wellness-gateway:client-id", value: e.client_id } },
                requestor: true,
                purpose_of_use: Some(purpose()),
                policy: e.token_id.map(|t| [format!("urn:wellness-gateway:access-token:{t}")]),
            },
            Agent {
                kind: Concept { coding: [coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")] },
                who: Who::Display { display: "wellness-gateway" },
                requestor: false,
                purpose_of_use: None,
                policy: None,
            },
        ],
        source: Source {
            observer: Observer { display: "wellness-gateway" },
            kind: [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "4", "Application Server")],
        },
        entity: e.entities,
        extension: [Extension { url: "urn:wellness-gateway:fhir:extension:partner-organization", value: e.org }],
    };
    // Cannot fail: these types hold only strings, booleans and sequences of them.
    serde_json::to_string(&doc).unwrap_or_default()
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
    let mut entities: Vec<Entity> = d.patients.iter().map(|p| patient_entity(p, true)).collect();
    let mut details = vec![detail("export-job", d.job_id)];
    if let Some(f) = d.file {
        details.push(detail("export-file", f));
    }
    if let Some(rid) = &d.request_id {
        details.push(detail("request-id", rid.as_str()));
    }
    for (k, n) in &d.counts {
        details.push(Detail { kind: Cow::Owned(k.clone()), value: n.to_string() });
    }
    entities.push(query_entity(&d.query, details));
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

/// Where partner requests' audit events go: the SQLite journal, or (PostgreSQL) one task that
/// appends them in group commits.
#[derive(Debug, Clone)]
pub struct Auditor {
    mode: Mode,
}

#[derive(Debug, Clone)]
enum Mode {
    Journal(Arc<journal::Journal>),
    Direct(mpsc::Sender<(PendingEvent, Reply)>),
}

/// The audit trail could not be written; nothing may be disclosed.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not be written: {0}")]
pub struct AuditError(String);

impl Auditor {
    /// Starts the auditor on the current runtime: on a SQLite file, opens its journal (loading
    /// what an earlier run left in it); otherwise starts the group-commit task.
    pub async fn start(store: Store, load_every: std::time::Duration) -> Result<Auditor, AuditError> {
        match store.sqlite_file() {
            Some(db) => {
                let journal = journal::Journal::open(store, &db, load_every).await.map_err(AuditError)?;
                Ok(Auditor { mode: Mode::Journal(journal) })
            }
            None => {
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(run(store, rx));
                Ok(Auditor { mode: Mode::Direct(tx) })
            }
        }
    }

    /// Appends one event; returns once it is durable.
    pub async fn record(&self, event: PendingEvent) -> Result<(), AuditError> {
        match &self.mode {
            Mode::Journal(j) => j.append(event).map_err(AuditError),
            Mode::Direct(tx) => {
                let (reply, wait) = oneshot::channel();
                tx.send((event, reply)).await.map_err(|_| AuditError("the audit writer has stopped".into()))?;
                wait.await.map_err(|_| AuditError("the audit writer has stopped".into()))?.map_err(AuditError)
            }
        }
    }

    /// Returns once every event recorded so far can be read from the database (call before
    /// reading the trail).
    pub async fn flush(&self) -> Result<(), AuditError> {
        match &self.mode {
            Mode::Journal(j) => j.flush().await.map_err(AuditError),
            Mode::Direct(_) => Ok(()),
        }
    }

    /// Loads what is pending and lets go of the journal (at shutdown).
    pub async fn close(&self) {
        if let Mode::Journal(j) = &self.mode {
            j.close().await;
        }
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
/// On SQLite the events still in the journal (not yet loaded by a running gateway) are
/// checked after the database's.
pub async fn verify(store: &Store) -> Result<VerifyReport, crate::store::StoreError> {
    let journaled = match store.sqlite_file() {
        Some(db) => journal::pending(&db).map_err(crate::store::StoreError::Corrupt)?,
        None => Vec::new(),
    };
    let mut prev = GENESIS_HASH.to_string();
    let mut expected_seq = 1;
    let mut checked = 0;
    let mut journaled = Some(journaled);
    loop {
        let mut rows = store.audit_chain(expected_seq - 1, 1000).await?;
        if rows.is_empty() {
            // The database's chain ends here; the journal's later events follow it.
            match journaled.take() {
                Some(j) => rows = j.into_iter().filter(|r| r.seq >= expected_seq).collect(),
                None => return Ok(VerifyReport { events: checked, broken: None }),
            }
            if rows.is_empty() {
                return Ok(VerifyReport { events: checked, broken: None });
            }
        }
        for r in rows {
            let broken = |why: String| Ok(VerifyReport { events: checked, broken: Some((r.seq, why)) });
            if r.seq != expected_seq {
                return broken(format!("events {expected_seq} to {} are missing", r.seq - 1));
            }
            if r.prev_hash != prev {
                return broken("its previous-hash does not match the event before it (an event was removed or replaced)".into());
            }
            let named = serde_json::from_str::<serde_json::Value>(&r.event).ok().and_then(|e| {
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
        let doc: serde_json::Value = serde_json::from_str(&e.event).map_err(|_| "not JSON")?;
        let entities = doc["entity"].as_array().ok_or("no entities")?;
        let resources = entities.iter().filter(|x| x["what"]["reference"].as_str().is_some_and(|r| r.starts_with("Encounter/"))).count();
        assert_eq!(resources, MAX_LISTED_WITHHELD + 2);
        let query = entities.last().ok_or("no query entity")?;
        assert!(query["detail"].as_array().ok_or("no details")?.iter().any(|x| x["valueString"] == "no-consent: 50"), "{query}");
        assert_eq!(e.patients, vec![("p1".to_string(), true), ("p2".to_string(), true)]);
        assert_eq!(doc["outcome"], "0");
        Ok(())
    }

    /// The store splices the chain's previous hash into the text these builders write: both
    /// kinds of event must keep `extension` last, or the append refuses them.
    #[test]
    fn every_event_kind_takes_the_previous_hash_as_its_last_extension() -> Result<(), String> {
        let verdicts = vec![("Encounter".to_string(), "e1".to_string(), verdict(true, "p1"))];
        let read = event(
            &Disclosure {
                client_id: "c",
                org: "fqhc-demo",
                token_id: Some("t"),
                purpose: PurposeOfUse::Treat,
                interaction: Interaction::Read,
                request_id: Some(r#"x","extension":[{"url":"y"}]}"#.into()),
                query: "/fhir/Encounter/e1".into(),
                verdicts: &verdicts,
                count: Some(1),
            },
            Utc::now(),
        );
        let patients = vec!["p1".to_string()];
        let bulk = bulk_event(
            &BulkDisclosure {
                client_id: "c",
                org: "fqhc-demo",
                purpose: PurposeOfUse::Treat,
                request_id: None,
                query: "/fhir/$export".into(),
                job_id: "j",
                file: Some("00001.Encounter.ndjson"),
                patients: &patients,
                counts: vec![("written Encounter".into(), 1)],
            },
            Utc::now(),
        );
        for e in [read, bulk] {
            let entities_before = serde_json::from_str::<serde_json::Value>(&e.event).map_err(|e| e.to_string())?["entity"].clone();
            let json = crate::store::audit::with_previous_hash(e.event, crate::store::audit::GENESIS_HASH).map_err(|e| e.to_string())?;
            let doc: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
            let ext = doc["extension"].as_array().ok_or("no extension")?;
            assert_eq!(ext.first().map(|x| &x["valueString"]), Some(&serde_json::json!("fqhc-demo")), "{json}");
            assert_eq!(ext.last().map(|x| &x["url"]), Some(&serde_json::json!(crate::store::audit::PREVIOUS_HASH_EXTENSION)), "{json}");
            assert_eq!(doc["entity"], entities_before, "{json}");
        }
        Ok(())
    }
}
