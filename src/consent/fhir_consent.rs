//! Reading a FHIR R4 `Consent` (scope `patient-privacy`) into a [`super::Directive`], for
//! `POST /fhir/Consent` and `PUT /fhir/Consent/{id}`.
//!
//! The directive is what the gateway enforces, so everything in the Consent must be something
//! it enforces: an element that would narrow or change the consent's meaning and that the
//! decision does not read (`provision.class`, `provision.code`, `provision.data`, an action other
//! than `disclose`/`access`, a nested provision that permits) is refused with its path rather than
//! silently dropped. The stored Consent is the gateway's rendering of the directive
//! ([`super::form::to_fhir`]).

use chrono::NaiveDate;
use serde_json::Value;

use super::form::{ANY_RECIPIENT_SYSTEM, DOCUMENT_SHA256_SYSTEM, GRANTED_BY_EXTENSION};
use super::model::{ANY_RECIPIENT, Category, CategoryLabels, Exception, Grantor, Period, Status};
use crate::domain::PurposeOfUse;
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::settings::{OrgKind, Settings};

/// What a FHIR Consent states, before the store gives it an id and version.
#[derive(Debug, Clone)]
pub struct ParsedConsent {
    /// The student's Patient id.
    pub patient: String,
    /// LEA (from `organization`, else the submitter's).
    pub lea: Option<String>,
    /// The LEA's id of the consent (identifier `urn:wellness-gateway:lea:<lea>:consent-id`).
    pub source_id: Option<String>,
    /// Status.
    pub status: Status,
    /// Signer: from the extension, or `Some(None)` = the patient themself (minor or adult
    /// decided by age), `None` = not stated.
    pub granted_by: Option<Grantor>,
    /// The patient signed (performer is the Patient).
    pub self_signed: bool,
    /// Recipients.
    pub recipients: Vec<String>,
    /// Purposes.
    pub purposes: Vec<PurposeOfUse>,
    /// Categories.
    pub categories: Vec<Category>,
    /// In force.
    pub period: Period,
    /// Dates of service.
    pub data_period: Option<Period>,
    /// Signature date.
    pub signed_on: NaiveDate,
    /// SHA-256 of the signed document.
    pub document_sha256: String,
    /// Deny exceptions.
    pub exceptions: Vec<Exception>,
}

struct Issues(Vec<OutcomeIssue>);

impl Issues {
    fn at(&mut self, pointer: &str, text: impl Into<String>) {
        self.0.push(OutcomeIssue::error(IssueCode::BusinessRule, text).at_pointer(pointer));
    }
}

fn date(v: &Value) -> Option<NaiveDate> {
    v.as_str().and_then(|s| s.get(..10)).and_then(|d| d.parse().ok())
}

/// A period's full dates; a partial date (`2027`, `2027-06`) is refused with its path, never read
/// as an open end.
fn read_period(v: &Value, at: &str, issues: &mut Issues) -> Period {
    let mut one = |key: &str| match &v[key] {
        Value::Null => None,
        x => match date(x) {
            Some(d) => Some(d),
            None => {
                issues.at(&format!("{at}/{key}"), "give a full date (YYYY-MM-DD); a partial date would widen the consent");
                None
            }
        },
    };
    let start = one("start");
    let end = one("end");
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        issues.at(&format!("{at}/end"), "the end is before the start");
    }
    Period { start, end }
}

fn codings(v: &Value) -> impl Iterator<Item = (usize, &Value)> {
    v.as_array().into_iter().flatten().enumerate()
}

fn read_recipients(actors: &Value, at: &str, settings: &Settings, issues: &mut Issues) -> Vec<String> {
    let mut out = Vec::new();
    for (i, a) in codings(actors) {
        let role_ok = a["role"]["coding"].as_array().is_some_and(|c| c.iter().any(|c| c["code"] == "IRCP"));
        if !role_ok {
            issues.at(&format!("{at}/{i}/role"), "an actor must have the role IRCP (information recipient)");
            continue;
        }
        let any = a["reference"]["identifier"]["system"] == ANY_RECIPIENT_SYSTEM && a["reference"]["identifier"]["value"] == ANY_RECIPIENT;
        match a["reference"]["reference"].as_str() {
            Some(r) => match r.strip_prefix("Organization/") {
                // FQHCs receive for treatment, payment and operations; an LEA is named when it
                // bills a fee-schedule program itself (payment disclosures to its payer).
                Some(org) if settings.organization(org).is_some() => out.push(org.to_string()),
                _ => issues
                    .at(&format!("{at}/{i}/reference/reference"), format!("`{r}` is not a configured organisation (Organization/<id>)")),
            },
            None if any => out.push(ANY_RECIPIENT.to_string()),
            None => issues.at(
                &format!("{at}/{i}/reference"),
                format!("name the recipient as Organization/<fqhc id> (or identifier {ANY_RECIPIENT_SYSTEM}|* for every partnered FQHC)"),
            ),
        }
    }
    out
}

fn read_purposes(v: &Value, at: &str, issues: &mut Issues) -> Vec<PurposeOfUse> {
    let mut out = Vec::new();
    for (i, c) in codings(v) {
        match c["code"].as_str().map(PurposeOfUse::parse) {
            Some(Ok(p)) if c["system"] == PurposeOfUse::SYSTEM || c["system"].is_null() => out.push(p),
            _ => issues.at(&format!("{at}/{i}"), "a purpose must be v3-ActReason TREAT, HPAYMT or HOPERAT"),
        }
    }
    out
}

fn read_categories(v: &Value, at: &str, labels: &CategoryLabels, issues: &mut Issues) -> Vec<Category> {
    let mut out = Vec::new();
    for (i, c) in codings(v) {
        match labels.category_of(c["system"].as_str().unwrap_or_default(), c["code"].as_str().unwrap_or_default()) {
            Some(cat) if !out.contains(&cat) => out.push(cat),
            Some(_) => {}
            None => issues.at(&format!("{at}/{i}"), "this security label names no data category (see mappings/consent/categories.toml)"),
        }
    }
    out
}

/// Elements of a provision the decision does not read: refused, not dropped.
fn unsupported(p: &Value, at: &str, issues: &mut Issues) {
    for key in ["class", "code", "data"] {
        if p.get(key).is_some() {
            issues.at(
                &format!("{at}/{key}"),
                format!(
                    "provision.{key} is not enforced by this gateway; express the consent with actor, purpose, securityLabel and dataPeriod"
                ),
            );
        }
    }
    for (i, a) in codings(&p["action"]) {
        let ok = a["coding"].as_array().is_some_and(|c| c.iter().all(|c| matches!(c["code"].as_str(), Some("disclose" | "access"))));
        if !ok {
            issues.at(&format!("{at}/action/{i}"), "only the actions disclose and access are enforced");
        }
    }
}

/// Reads a Consent (already valid against the official R4 schema).
pub fn parse(c: &Value, settings: &Settings, labels: &CategoryLabels) -> Result<ParsedConsent, Vec<OutcomeIssue>> {
    let mut issues = Issues(Vec::new());
    let scope_ok = c["scope"]["coding"].as_array().is_some_and(|s| s.iter().any(|c| c["code"] == "patient-privacy"));
    if !scope_ok {
        issues.at("/scope", "only privacy consents (scope patient-privacy) govern sharing here");
    }
    let patient = c["patient"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).map(str::to_owned);
    if patient.is_none() {
        issues.at("/patient/reference", "a privacy consent names its patient as Patient/<id>");
    }
    let status = match c["status"].as_str() {
        Some("active") => Status::Active,
        Some("inactive") => Status::Inactive,
        Some("draft") => Status::Draft,
        Some("proposed") => Status::Proposed,
        Some("rejected") => Status::Rejected,
        Some("entered-in-error") => Status::EnteredInError,
        _ => {
            issues.at("/status", "unknown status");
            Status::Draft
        }
    };
    if c.get("policy").is_none() && c.get("policyRule").is_none() {
        issues.at("/policyRule", "a consent needs policy or policyRule (ppc-1)");
    }
    let signed_on = date(&c["dateTime"]);
    if signed_on.is_none() {
        issues.at("/dateTime", "the signature date (dateTime) is required");
    }
    let ids = c["identifier"].as_array().cloned().unwrap_or_default();
    let document_sha256 = ids.iter().find(|i| i["system"] == DOCUMENT_SHA256_SYSTEM).and_then(|i| i["value"].as_str()).map(str::to_owned);
    match &document_sha256 {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) => {}
        _ => issues.at(
            "/identifier",
            format!(
                "the SHA-256 (lower-case hex) of the signed document is required as an identifier with system {DOCUMENT_SHA256_SYSTEM}"
            ),
        ),
    }
    let lea = c["organization"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["reference"].as_str()?.strip_prefix("Organization/"))
        .find(|o| settings.organization(o).is_some_and(|x| x.kind == OrgKind::Lea))
        .map(str::to_owned);
    let source_id = ids.iter().find_map(|i| {
        let sys = i["system"].as_str()?;
        sys.strip_prefix("urn:wellness-gateway:lea:")?.strip_suffix(":consent-id")?;
        i["value"].as_str().map(str::to_owned)
    });
    let granted_by = c["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == GRANTED_BY_EXTENSION)
        .and_then(|e| serde_json::from_value::<Grantor>(e["valueCode"].clone()).ok());
    let performer = c["performer"].as_array().and_then(|p| p.first()).cloned().unwrap_or(Value::Null);
    let self_signed = patient.as_ref().is_some_and(|p| performer["reference"].as_str() == Some(&format!("Patient/{p}")));
    let related = performer["reference"].as_str().is_some_and(|r| r.starts_with("RelatedPerson/")) || performer["type"] == "RelatedPerson";
    match granted_by {
        None if !self_signed && !related => {
            issues.at("/performer", "who signed must be the Patient (the student) or a RelatedPerson (parent or guardian)");
        }
        Some(Grantor::Guardian) if self_signed => issues.at("/extension", "granted-by guardian contradicts a Patient performer"),
        Some(Grantor::MinorSelf | Grantor::AdultSelf) if related => {
            issues.at("/extension", "granted-by minor-self/adult-self contradicts a RelatedPerson performer")
        }
        _ => {}
    }
    let p = &c["provision"];
    if p["type"] != "permit" {
        issues.at("/provision/type", "the root provision must permit (deny exceptions go in nested provisions)");
    }
    unsupported(p, "/provision", &mut issues);
    let period = read_period(&p["period"], "/provision/period", &mut issues);
    if period.start.is_none() {
        issues.at("/provision/period/start", "when the consent comes into force is required");
    }
    let recipients = read_recipients(&p["actor"], "/provision/actor", settings, &mut issues);
    if recipients.is_empty() {
        issues.at("/provision/actor", "name at least one recipient (an FQHC with role IRCP)");
    }
    let purposes = read_purposes(&p["purpose"], "/provision/purpose", &mut issues);
    if purposes.is_empty() {
        issues.at("/provision/purpose", "name at least one purpose of use");
    }
    let categories = read_categories(&p["securityLabel"], "/provision/securityLabel", labels, &mut issues);
    if categories.is_empty() {
        issues.at("/provision/securityLabel", "name the data categories the consent opens as security labels");
    }
    let data_period = p.get("dataPeriod").map(|v| read_period(v, "/provision/dataPeriod", &mut issues));
    let mut exceptions = Vec::new();
    for (i, x) in codings(&p["provision"]) {
        let at = format!("/provision/provision/{i}");
        if x["type"] != "deny" {
            issues.at(&format!("{at}/type"), "nested provisions must deny (exceptions to the permit)");
            continue;
        }
        unsupported(x, &at, &mut issues);
        if x.get("provision").is_some() {
            issues.at(&format!("{at}/provision"), "exceptions cannot nest further");
        }
        // An empty list would match nothing and silently withhold nothing: refused.
        for key in ["actor", "purpose", "securityLabel"] {
            if x[key].as_array().is_some_and(Vec::is_empty) {
                issues.at(
                    &format!("{at}/{key}"),
                    "an empty list would make this exception withhold nothing; leave it out to match everything",
                );
            }
        }
        if x.get("period").is_some() {
            issues.at(&format!("{at}/period"), "exceptions apply for the whole consent period here; use dataPeriod for dates of service");
        }
        exceptions.push(Exception {
            recipients: x.get("actor").map(|a| read_recipients(a, &format!("{at}/actor"), settings, &mut issues)),
            purposes: x.get("purpose").map(|v| read_purposes(v, &format!("{at}/purpose"), &mut issues)),
            categories: x.get("securityLabel").map(|v| read_categories(v, &format!("{at}/securityLabel"), labels, &mut issues)),
            data_period: x.get("dataPeriod").map(|v| read_period(v, &format!("{at}/dataPeriod"), &mut issues)),
        });
    }
    if !issues.0.is_empty() {
        return Err(issues.0);
    }
    Ok(ParsedConsent {
        patient: patient.unwrap_or_default(),
        lea,
        source_id,
        status,
        granted_by,
        self_signed,
        recipients,
        purposes,
        categories,
        period,
        data_period,
        signed_on: signed_on.unwrap_or_default(),
        document_sha256: document_sha256.unwrap_or_default(),
        exceptions,
    })
}
