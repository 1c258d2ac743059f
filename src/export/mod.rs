//! Stage 6 (bulk): FHIR Bulk Data `$export` for FQHC partners (Bulk Data IG v2 behaviour).
//!
//! A kick-off ([`parse_kickoff`]) stores a job ([`Params`]) and answers 202 with a status URL.
//! A worker ([`run::Exporter`]) on some instance takes the job under a lease, reads the
//! exported types page by page in `_lastUpdated` order up to the job's `transactionTime`,
//! judges every resource through the same consent decision as a read ([`crate::serve`]), and
//! writes the permitted, redacted resources as NDJSON files split at the configured size. Each
//! finished file is recorded together with a checkpoint, so an interrupted job (a crash, a
//! restart, a lost lease) resumes after the last recorded file on whichever instance takes it.
//!
//! Consent is evaluated while the job runs; when it ends, every file holding a student whose
//! consent changed since the job started is judged again, so a revocation during an export
//! leaves nothing of that student in its output. The manifest says when consent was evaluated;
//! a download re-judges any file whose students' consents changed after that.
//!
//! `_since` exports also re-send all data the partner may see of students whose consent changed
//! since `_since` (a new consent opens records older than `_since`), and list in the manifest
//! extension [`WITHDRAWN_EXTENSION`] the students previously disclosed to the client of whom it
//! may no longer see something: the partner purges what it holds of them and loads what this
//! export re-sends (this goes beyond the IG). Resource ids are never listed: a withheld resource
//! may be one the client never received, and its id would disclose that it exists.

pub mod files;
pub mod run;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::fhir::search::SearchRegistry;
use crate::fhir::{IssueCode, OutcomeIssue};

/// Resource types an export can hold, in output order: the patient compartment, then the
/// directory.
pub const EXPORTABLE: &[&str] = &[
    "Patient",
    "Encounter",
    "Condition",
    "Coverage",
    "RelatedPerson",
    "DocumentReference",
    "Provenance",
    "Organization",
    "Location",
    "Practitioner",
    "PractitionerRole",
];

/// Types about one student (the patient compartment as the gateway stores it).
pub const COMPARTMENT: &[&str] = &["Patient", "Encounter", "Condition", "Coverage", "RelatedPerson", "DocumentReference", "Provenance"];

/// Manifest extension listing what a client may no longer see (see the module doc).
pub const WITHDRAWN_EXTENSION: &str = "urn:wellness-gateway:bulk:withdrawn";
/// Manifest extension: when consent was evaluated for the whole output.
pub const CONSENT_EVALUATED_EXTENSION: &str = "urn:wellness-gateway:bulk:consent-evaluated-at";

/// The NDJSON media type.
pub const NDJSON: &str = "application/fhir+ndjson";

/// Which data an export covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// `/fhir/$export`: everything the partner may see.
    System,
    /// `/fhir/Patient/$export`: every student's compartment (or the listed students').
    Patient,
    /// `/fhir/Group/{id}/$export`: the compartments of a Group's members.
    Group,
}

/// A job's parameters, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// Level.
    pub level: Level,
    /// The Group (for [`Level::Group`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Types exported, in order.
    pub types: Vec<String>,
    /// `_since`, µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_us: Option<i64>,
    /// `_typeFilter` queries by type (the part after `?`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub type_filters: BTreeMap<String, String>,
    /// The `patient` parameter (POST kick-off): only these students.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patients: Option<Vec<String>>,
    /// Files are gzip-compressed.
    #[serde(default)]
    pub gzip: bool,
    /// Parameters ignored under `Prefer: handling=lenient` (reported in the manifest's `error`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
}

/// Where a job resumes, and what it counted so far (saved with each recorded file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// 0: the main pass; 1: the students whose consent changed since `_since`; 2: done.
    pub phase: u8,
    /// Index into `Params::types`.
    pub type_index: usize,
    /// When the pass goes student by student: the last student id of the chunks done (chunks
    /// are taken in id order, so students added meanwhile do not shift the position).
    pub chunk_after: Option<String>,
    /// The last student id of the chunk under way (its range is fixed when it starts).
    #[serde(default)]
    pub chunk_end: Option<String>,
    /// Keyset position within the type: (`_lastUpdated` µs, id) of the last resource judged.
    pub cursor: Option<(i64, String)>,
    /// On a pass in storage order (a full export: every type at once), the storage key of the
    /// last resource judged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_after: Option<i64>,
    /// Sequence number of the next file.
    pub next_seq: i64,
    /// Resources judged.
    pub judged: u64,
    /// Resources written, by type.
    pub written: BTreeMap<String, u64>,
    /// Resources withheld, by rule.
    pub withheld: BTreeMap<String, u64>,
    /// Students previously disclosed to this client whose data it may no longer (all) see (see
    /// [`WITHDRAWN_EXTENSION`]).
    pub withdrawn_patients: Vec<String>,
}

/// A kick-off request, as received.
#[derive(Debug, Default)]
pub struct Kickoff {
    /// Query parameters (GET) or Parameters (POST), as name/value pairs.
    pub params: Vec<(String, String)>,
    /// `patient` references of a POST.
    pub patients: Vec<String>,
    /// `Prefer: handling=lenient`: unsupported parameters are ignored instead of refused.
    pub lenient: bool,
}

fn issue(code: IssueCode, expression: &str, text: impl Into<String>) -> OutcomeIssue {
    OutcomeIssue::error(code, text).at_expression(expression)
}

/// Validates a kick-off into job parameters. `allowed(type)` says whether the client's scopes
/// allow reading a type; without `_type` the export holds every allowed type of the level.
pub fn parse_kickoff(
    level: Level,
    group: Option<&str>,
    k: Kickoff,
    allowed: impl Fn(&str) -> bool,
    registry: &SearchRegistry,
    gzip: bool,
) -> Result<Params, Vec<OutcomeIssue>> {
    let mut issues = Vec::new();
    let mut since_us = None;
    let mut requested: Option<Vec<String>> = None;
    let mut filters: Vec<String> = Vec::new();
    let mut ignored = Vec::new();
    for (name, value) in &k.params {
        match name.as_str() {
            "_outputFormat" => {
                if !matches!(value.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    issues.push(issue(
                        IssueCode::NotSupported,
                        name,
                        format!("_outputFormat `{value}` is not supported; use application/fhir+ndjson"),
                    ));
                }
            }
            "_since" => match chrono::DateTime::parse_from_rfc3339(value) {
                Ok(t) => since_us = Some(t.timestamp_micros()),
                Err(_) => issues.push(issue(
                    IssueCode::Value,
                    name,
                    format!("_since `{value}` is not a FHIR instant (e.g. 2026-11-01T00:00:00Z)"),
                )),
            },
            "_type" => {
                let list = requested.get_or_insert_with(Vec::new);
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    if !EXPORTABLE.contains(&t) {
                        issues.push(issue(
                            IssueCode::NotSupported,
                            name,
                            format!("resource type `{t}` cannot be exported; exportable types: {}", EXPORTABLE.join(", ")),
                        ));
                    } else if !list.iter().any(|x| x == t) {
                        list.push(t.to_string());
                    }
                }
            }
            "_typeFilter" => filters.push(value.clone()),
            // Unsupported optional parameters: refused unless the client asked for leniency.
            _ if k.lenient => ignored.push(name.clone()),
            "_elements" | "includeAssociatedData" | "_until" | "organizeOutputBy" | "allowPartialManifests" => issues.push(issue(
                IssueCode::NotSupported,
                name,
                format!("`{name}` is not supported by this server (send `Prefer: handling=lenient` to have it ignored)"),
            )),
            _ => issues.push(issue(IssueCode::NotSupported, name, format!("unknown $export parameter `{name}`"))),
        }
    }
    let defaults: &[&str] = if level == Level::System { EXPORTABLE } else { COMPARTMENT };
    let mut types: Vec<String> = match requested {
        Some(list) => {
            for t in &list {
                if !allowed(t) {
                    issues.push(issue(IssueCode::Security, "_type", format!("the access token's scopes do not allow reading {t}")));
                }
            }
            list
        }
        None => defaults.iter().filter(|t| allowed(t)).map(|t| t.to_string()).collect(),
    };
    // Output in the canonical order.
    types.sort_by_key(|t| EXPORTABLE.iter().position(|e| e == t));
    if types.is_empty() && issues.is_empty() {
        issues.push(issue(IssueCode::Security, "_type", "the access token's scopes allow none of the exportable types"));
    }
    let mut type_filters = BTreeMap::new();
    for f in filters {
        match parse_type_filter(&f, &types, registry) {
            Ok((ty, query)) => {
                if type_filters.insert(ty.clone(), query).is_some() {
                    issues.push(issue(
                        IssueCode::NotSupported,
                        "_typeFilter",
                        format!("only one _typeFilter per resource type is supported (two for {ty})"),
                    ));
                }
            }
            Err(i) => issues.extend(i),
        }
    }
    let patients = if k.patients.is_empty() {
        None
    } else if level == Level::System {
        issues.push(issue(IssueCode::NotSupported, "patient", "the `patient` parameter applies to Patient and Group exports only"));
        None
    } else {
        let mut ids = Vec::new();
        for r in &k.patients {
            match r.strip_prefix("Patient/").filter(|id| crate::fhir::search::is_id(id)) {
                Some(id) => ids.push(id.to_string()),
                None => issues.push(issue(IssueCode::Value, "patient", format!("`{r}` is not a Patient reference (Patient/<id>)"))),
            }
        }
        ids.sort();
        ids.dedup();
        Some(ids)
    };
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Params { level, group: group.map(str::to_string), types, since_us, type_filters, patients, gzip, ignored })
}

/// Checks one `_typeFilter` (`Type?param=value&...`): an exported type and search parameters
/// the server supports; returns (type, query).
fn parse_type_filter(value: &str, types: &[String], registry: &SearchRegistry) -> Result<(String, String), Vec<OutcomeIssue>> {
    let Some((ty, query)) = value.split_once('?') else {
        return Err(vec![issue(IssueCode::Value, "_typeFilter", format!("`{value}` is not of the form Type?parameter=value"))]);
    };
    if !types.iter().any(|t| t == ty) {
        return Err(vec![issue(
            IssueCode::Value,
            "_typeFilter",
            format!("`{ty}` is not one of the exported types ({})", types.join(", ")),
        )]);
    }
    let search = type_filter_search(ty, query, registry)?;
    if search.summary_count || !search.include.is_empty() || search.cursor.is_some() {
        return Err(vec![issue(
            IssueCode::NotSupported,
            "_typeFilter",
            "a _typeFilter may hold search parameters only (no _include, _summary, _count, _sort)",
        )]);
    }
    Ok((ty.to_string(), query.to_string()))
}

/// The search a `_typeFilter` query stands for.
pub fn type_filter_search(
    ty: &str,
    query: &str,
    registry: &SearchRegistry,
) -> Result<crate::fhir::search::SearchRequest, Vec<OutcomeIssue>> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| vec![issue(IssueCode::Value, "_typeFilter", format!("the _typeFilter query could not be read: {e}"))])?;
    if let Some((k, _)) = pairs.iter().find(|(k, _)| matches!(k.as_str(), "_count" | "_sort" | "_cursor" | "_include" | "_summary")) {
        return Err(vec![issue(IssueCode::NotSupported, "_typeFilter", format!("`{k}` is not allowed in a _typeFilter"))]);
    }
    registry.parse(ty, &pairs).map_err(|issues| {
        issues.into_iter().map(|i| OutcomeIssue { expression: vec!["_typeFilter".into()], ..i }).collect::<Vec<OutcomeIssue>>()
    })
}

/// A job as the status endpoint reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Queued or running: progress text.
    InProgress(String),
    /// Done: the manifest.
    Completed(Value),
    /// Failed: why.
    Failed(String),
    /// Cancelled, expired or unknown.
    Gone,
}

/// The status of a job: progress, the manifest (file URLs under `file_base`), or the failure.
pub fn status(job: &crate::store::ExportJobRow, files: &[crate::store::ExportFileRow], file_base: &str) -> Status {
    match job.status.as_str() {
        "queued" => Status::InProgress("queued".into()),
        "running" => Status::InProgress(job.progress.clone().unwrap_or_else(|| "running".into())),
        "failed" => Status::Failed(job.error.clone().unwrap_or_else(|| "the export failed".into())),
        "completed" => Status::Completed(manifest(job, files, file_base)),
        _ => Status::Gone,
    }
}

/// The completion manifest.
pub fn manifest(job: &crate::store::ExportJobRow, files: &[crate::store::ExportFileRow], file_base: &str) -> Value {
    let entry =
        |f: &crate::store::ExportFileRow| json!({ "type": f.resource_type, "url": format!("{file_base}/{}", f.name), "count": f.count });
    let output: Vec<Value> = files.iter().filter(|f| f.kind == "output").map(entry).collect();
    let error: Vec<Value> = files.iter().filter(|f| f.kind == "error").map(entry).collect();
    let mut extension = serde_json::Map::new();
    if let Some(at) = job.consent_evaluated_us {
        extension.insert(CONSENT_EVALUATED_EXTENSION.into(), json!(crate::fhir::instant(at)));
    }
    if let Some(w) = job.extension.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()) {
        extension.insert(WITHDRAWN_EXTENSION.into(), w);
    }
    json!({
        "transactionTime": crate::fhir::instant(job.transaction_us),
        "request": job.request,
        "requiresAccessToken": true,
        "output": output,
        "error": error,
        "extension": extension,
    })
}

/// The Groups a partner may export: one per school site it serves and one for the whole
/// partnership (id = the FQHC's id). (id, name, sites).
pub fn groups_of(settings: &crate::settings::Settings, fqhc: Option<&str>) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for p in settings.partnerships.iter().filter(|p| fqhc.is_none_or(|f| f == p.fqhc)) {
        let name = settings.organizations.iter().find(|o| o.id == p.fqhc).map(|o| o.name.clone()).unwrap_or_else(|| p.fqhc.clone());
        match out.iter_mut().find(|(id, _, _): &&mut (String, String, Vec<String>)| *id == p.fqhc) {
            Some((_, _, sites)) => sites.extend(p.sites.iter().cloned()),
            None => out.push((p.fqhc.clone(), format!("Students seen at school sites served by {name}"), p.sites.clone())),
        }
        for s in &p.sites {
            if !out.iter().any(|(id, _, _)| id == s) {
                let site = settings.sites.iter().find(|x| &x.id == s).map(|x| x.name.clone()).unwrap_or_else(|| s.clone());
                out.push((s.clone(), format!("Students seen at {site}"), vec![s.clone()]));
            }
        }
    }
    out
}

/// A Group resource (definitional: members are students with a session at its sites).
pub fn group_resource(id: &str, name: &str, sites: &[String]) -> Value {
    json!({
        "resourceType": "Group",
        "id": id,
        "type": "person",
        "actual": false,
        "name": name,
        "characteristic": sites.iter().map(|s| json!({
            "code": { "text": "had a counselling session at school site" },
            "valueCodeableConcept": { "coding": [{ "system": "urn:wellness-gateway:site", "code": s }] },
            "exclude": false,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn registry() -> Result<SearchRegistry, Box<dyn std::error::Error>> {
        Ok(SearchRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))?)
    }

    /// A kick-off that must be accepted.
    fn accepted(r: Result<Params, Vec<OutcomeIssue>>) -> Result<Params, String> {
        r.map_err(|issues| format!("refused: {issues:?}"))
    }

    fn kick(pairs: &[(&str, &str)]) -> Kickoff {
        Kickoff { params: pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(), ..Kickoff::default() }
    }

    #[test]
    fn kickoff_defaults_to_allowed_types_in_order() -> TestResult {
        let p = accepted(parse_kickoff(Level::System, None, kick(&[]), |t| t != "Coverage", &registry()?, false))?;
        assert_eq!(p.types.first().map(String::as_str), Some("Patient"));
        assert!(!p.types.contains(&"Coverage".to_string()));
        let p = accepted(parse_kickoff(Level::Patient, None, kick(&[("_type", "Encounter,Patient")]), |_| true, &registry()?, true))?;
        assert_eq!(p.types, ["Patient", "Encounter"]);
        assert!(p.gzip);
        Ok(())
    }

    #[test]
    fn kickoff_refuses_what_it_cannot_do() -> TestResult {
        let r = registry()?;
        let bad = |pairs: &[(&str, &str)]| parse_kickoff(Level::System, None, kick(pairs), |t| t != "Condition", &r, false).unwrap_err();
        assert_eq!(bad(&[("_outputFormat", "text/csv")])[0].expression, ["_outputFormat"]);
        assert_eq!(bad(&[("_since", "yesterday")])[0].expression, ["_since"]);
        assert_eq!(bad(&[("_type", "Consent")])[0].expression, ["_type"]);
        assert_eq!(bad(&[("_type", "Condition")])[0].code, IssueCode::Security);
        assert_eq!(bad(&[("_elements", "id")])[0].expression, ["_elements"]);
        assert_eq!(bad(&[("_typeFilter", "Encounter?bogus=1")])[0].expression, ["_typeFilter"]);
        assert_eq!(bad(&[("_type", "Patient"), ("_typeFilter", "Encounter?date=ge2026-01-01")])[0].expression, ["_typeFilter"]);
        assert_eq!(bad(&[("_typeFilter", "Encounter?date=ge2026-01-01&_count=5")])[0].expression, ["_typeFilter"]);
        let lenient = Kickoff { lenient: true, ..kick(&[("_elements", "id")]) };
        assert_eq!(accepted(parse_kickoff(Level::System, None, lenient, |_| true, &r, false))?.ignored, ["_elements"]);
        Ok(())
    }

    #[test]
    fn type_filter_and_since_are_kept() -> TestResult {
        let p = accepted(parse_kickoff(
            Level::System,
            None,
            kick(&[("_since", "2026-11-01T00:00:00Z"), ("_typeFilter", "Encounter?date=ge2026-09-01")]),
            |_| true,
            &registry()?,
            false,
        ))?;
        assert_eq!(p.since_us, Some(chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")?.timestamp_micros()));
        assert_eq!(p.type_filters.get("Encounter").map(String::as_str), Some("date=ge2026-09-01"));
        let back: Params = serde_json::from_str(&serde_json::to_string(&p)?)?;
        assert_eq!(back, p);
        Ok(())
    }
}
