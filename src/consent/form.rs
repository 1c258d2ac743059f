//! The school-native consent form (`schemas/consent.schema.json`): its semantic checks, the
//! [`Directive`] it states and the FHIR R4 `Consent` it is stored as.

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{ANY_RECIPIENT, Category, CategoryLabels, Directive, Exception, Grantor, Period, Status};
use crate::domain::PurposeOfUse;
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::settings::{OrgKind, Settings};

/// Extension naming who signed (`minor-self`, `guardian`, `adult-self`).
pub const GRANTED_BY_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:consent-granted-by";
/// Identifier system of the "any partnered FQHC" recipient (`value` `*`).
pub const ANY_RECIPIENT_SYSTEM: &str = "urn:wellness-gateway:recipient";
/// Identifier system of the signed document's SHA-256.
pub const DOCUMENT_SHA256_SYSTEM: &str = "urn:wellness-gateway:sid:document-sha256";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PART2_POLICY: &str = "https://www.ecfr.gov/current/title-42/chapter-I/subchapter-A/part-2";

/// The form as submitted (already checked against the schema).
#[derive(Debug, Clone, Deserialize)]
pub struct ConsentForm {
    /// LEA's id of the form.
    pub source_id: String,
    /// LEA.
    pub lea: String,
    /// Student.
    pub student: FormStudent,
    /// Who signed.
    pub granted_by: Grantor,
    /// Recipients.
    pub recipients: Vec<String>,
    /// Purposes.
    pub purposes: Vec<PurposeOfUse>,
    /// Categories.
    pub categories: Vec<Category>,
    /// In force.
    pub period: Period,
    /// Dates of service covered.
    #[serde(default)]
    pub data_period: Option<Period>,
    /// Signature date.
    pub signed_on: NaiveDate,
    /// SHA-256 of the signed document.
    pub document_sha256: String,
    /// Deny exceptions.
    #[serde(default)]
    pub exceptions: Vec<Exception>,
    /// `active` or `inactive`.
    #[serde(default)]
    pub status: Option<Status>,
}

/// The student of a form.
#[derive(Debug, Clone, Deserialize)]
pub struct FormStudent {
    /// District student id.
    pub district_id: String,
}

/// The FHIR `Consent` id of an LEA's form (stable across versions).
pub fn consent_id(lea: &str, source_id: &str) -> String {
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("urn:wellness-gateway:consent:{lea}:{source_id}").as_bytes()).to_string()
}

fn issue(pointer: &str, text: impl Into<String>) -> OutcomeIssue {
    OutcomeIssue::error(IssueCode::BusinessRule, text).at_pointer(pointer)
}

impl ConsentForm {
    /// Cross-field rules the schema cannot express; every issue names its field.
    pub fn check(&self, settings: &Settings, today: NaiveDate) -> Result<(), Vec<OutcomeIssue>> {
        let mut issues = Vec::new();
        if settings.organization(&self.lea).is_none_or(|o| o.kind != OrgKind::Lea) {
            issues.push(issue("/lea", format!("`{}` is not a configured LEA", self.lea)));
        }
        // FQHCs receive for treatment, payment and operations; the form's own LEA is named when
        // it bills a fee-schedule program itself (payment disclosures to its payer).
        let known = |id: &str| id == self.lea || settings.organization(id).is_some_and(|o| o.kind == OrgKind::Fqhc);
        for (i, r) in self.recipients.iter().enumerate() {
            if r != ANY_RECIPIENT && !known(r) {
                issues
                    .push(issue(&format!("/recipients/{i}"), format!("`{r}` is neither a configured FQHC nor this form's LEA (or \"*\")")));
            }
        }
        let check_period = |p: &Period, at: &str, issues: &mut Vec<OutcomeIssue>| {
            if let (Some(s), Some(e)) = (p.start, p.end)
                && e < s
            {
                issues.push(issue(&format!("{at}/end"), "the end is before the start"));
            }
        };
        check_period(&self.period, "/period", &mut issues);
        if let Some(p) = &self.data_period {
            check_period(p, "/data_period", &mut issues);
        }
        if self.signed_on > today {
            issues.push(issue("/signed_on", "the signature date is in the future"));
        }
        for (i, e) in self.exceptions.iter().enumerate() {
            for (j, r) in e.recipients.iter().flatten().enumerate() {
                if r != ANY_RECIPIENT && !known(r) {
                    issues.push(issue(
                        &format!("/exceptions/{i}/recipients/{j}"),
                        format!("`{r}` is neither a configured FQHC nor this form's LEA (or \"*\")"),
                    ));
                }
            }
            if let Some(p) = &e.data_period {
                check_period(p, &format!("/exceptions/{i}/data_period"), &mut issues);
            }
        }
        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }

    /// The directive this form states, for the student's Patient `patient_id`.
    pub fn directive(&self, patient_id: &str, version: i64) -> Directive {
        Directive {
            id: consent_id(&self.lea, &self.source_id),
            version,
            patient: patient_id.to_string(),
            lea: self.lea.clone(),
            status: self.status.unwrap_or(Status::Active),
            granted_by: self.granted_by,
            recipients: self.recipients.clone(),
            purposes: self.purposes.clone(),
            categories: self.categories.clone(),
            period: self.period,
            data_period: self.data_period,
            signed_on: self.signed_on,
            document_sha256: self.document_sha256.clone(),
            exceptions: self.exceptions.clone(),
        }
    }
}

fn period_json(p: &Period) -> Value {
    let mut v = json!({});
    if let Some(s) = p.start {
        v["start"] = s.to_string().into();
    }
    if let Some(e) = p.end {
        v["end"] = e.to_string().into();
    }
    v
}

fn actors(recipients: &[String]) -> Vec<Value> {
    recipients
        .iter()
        .map(|r| {
            let reference = if r == ANY_RECIPIENT {
                json!({ "identifier": { "system": ANY_RECIPIENT_SYSTEM, "value": ANY_RECIPIENT }, "display": "Any FQHC partnered with the student's school sites" })
            } else {
                json!({ "reference": format!("Organization/{r}") })
            };
            json!({
                "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient" }] },
                "reference": reference,
            })
        })
        .collect()
}

fn purposes_json(p: &[PurposeOfUse]) -> Vec<Value> {
    p.iter().map(|p| json!({ "system": PurposeOfUse::SYSTEM, "code": p.code() })).collect()
}

fn labels_json(cats: &[Category], labels: &CategoryLabels) -> Vec<Value> {
    cats.iter().filter_map(|c| labels.first_label(*c)).map(|(system, code)| json!({ "system": system, "code": code })).collect()
}

/// The FHIR R4 `Consent` (scope `patient-privacy`) a directive is stored as.
pub fn to_fhir(d: &Directive, source_id: &str, labels: &CategoryLabels) -> Value {
    let mut provision = json!({
        "type": "permit",
        "period": period_json(&d.period),
        "actor": actors(&d.recipients),
        "action": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose" }] }],
        "securityLabel": labels_json(&d.categories, labels),
        "purpose": purposes_json(&d.purposes),
    });
    if let Some(p) = &d.data_period {
        provision["dataPeriod"] = period_json(p);
    }
    let exceptions: Vec<Value> = d
        .exceptions
        .iter()
        .map(|e| {
            let mut x = json!({ "type": "deny" });
            if let Some(r) = &e.recipients {
                x["actor"] = actors(r).into();
            }
            if let Some(p) = &e.purposes {
                x["purpose"] = purposes_json(p).into();
            }
            if let Some(c) = &e.categories {
                x["securityLabel"] = labels_json(c, labels).into();
            }
            if let Some(p) = &e.data_period {
                x["dataPeriod"] = period_json(p);
            }
            x
        })
        .collect();
    if !exceptions.is_empty() {
        provision["provision"] = exceptions.into();
    }
    let performer = match d.granted_by {
        Grantor::Guardian => json!({ "type": "RelatedPerson", "display": "Parent or guardian" }),
        Grantor::MinorSelf | Grantor::AdultSelf => json!({ "reference": format!("Patient/{}", d.patient) }),
    };
    let mut consent = json!({
        "resourceType": "Consent",
        "id": d.id,
        // A consent reveals that sensitive care exists: restricted like the records it governs.
        "meta": { "security": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R", "display": "restricted" }] },
        "extension": [{ "url": GRANTED_BY_EXTENSION, "valueCode": d.granted_by.code() }],
        "identifier": [
            { "system": format!("urn:wellness-gateway:lea:{}:consent-id", d.lea), "value": source_id },
            { "system": DOCUMENT_SHA256_SYSTEM, "value": d.document_sha256 },
        ],
        "status": d.status.code(),
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy", "display": "Privacy Consent" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent" }] }],
        "patient": { "reference": format!("Patient/{}", d.patient) },
        "dateTime": d.signed_on.to_string(),
        "performer": [performer],
        "organization": [{ "reference": format!("Organization/{}", d.lea) }],
        "policyRule": { "coding": [{ "system": ACT_CODE, "code": "OPTIN", "display": "opt-in" }] },
        "provision": provision,
    });
    if d.categories.contains(&Category::SubstanceUse) {
        consent["policy"] = json!([{ "authority": "https://www.ecfr.gov", "uri": PART2_POLICY }]);
    }
    consent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> ConsentForm {
        serde_json::from_str(include_str!("../../schemas/examples/valid/consent.json")).unwrap()
    }

    fn labels() -> CategoryLabels {
        CategoryLabels::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap()
    }

    #[test]
    fn example_form_becomes_a_valid_fhir_consent() {
        let f = form();
        let d = f.directive("p-1", 1);
        assert_eq!(d.id, consent_id("lea-demo", "CONSENT-2026-0001"));
        let c = to_fhir(&d, &f.source_id, &labels());
        let schema = crate::fhir::schema::FhirSchema::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        schema.validate(&c).unwrap_or_else(|v| panic!("{v:?}"));
        assert_eq!(c["provision"]["actor"][0]["reference"]["reference"], "Organization/fqhc-demo");
        assert_eq!(c["provision"]["purpose"][1]["code"], "HPAYMT");
        assert_eq!(c["provision"]["securityLabel"][1]["code"], "PSY");
        assert_eq!(c["performer"][0]["display"], "Parent or guardian");
    }

    #[test]
    fn semantic_rules_name_the_field() {
        let settings =
            crate::settings::Settings::load(Some(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml"))).unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert!(form().check(&settings, today).is_ok());
        let mut f = form();
        f.recipients = vec!["lea-other".into()];
        f.period.end = NaiveDate::from_ymd_opt(2026, 1, 1);
        f.signed_on = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        let issues = f.check(&settings, today).unwrap_err();
        let at: Vec<_> = issues.iter().map(|i| i.pointer().unwrap_or_default().to_string()).collect();
        assert_eq!(at, vec!["/recipients/0", "/period/end", "/signed_on"]);
    }
}
