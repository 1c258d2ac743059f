//! Recording consents: a school-native form becomes a directive and a FHIR `Consent` version;
//! a revocation writes a new, inactive version that every later decision sees at once (nothing
//! about consent is cached between requests, so every instance sharing the database agrees).

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::form::{self, ConsentForm};
use super::model::{Directive, Status};
use crate::fhir::resource::PreparedResource;
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::intake::{canonical_json, sha256_hex};
use crate::pipeline::Pipeline;
use crate::store::{ConsentOutcome, ConsentWrite, Store, StoreError};

/// Why a consent was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ConsentError {
    /// The form fails the schema or the semantic rules (422).
    #[error("the consent form is not valid")]
    Invalid(Vec<OutcomeIssue>),
    /// No such consent (404).
    #[error("{0}")]
    NotFound(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ConsentError> for crate::error::ApiError {
    fn from(e: ConsentError) -> Self {
        match e {
            ConsentError::Invalid(issues) => crate::error::ApiError::Unprocessable(issues),
            ConsentError::NotFound(m) => crate::error::ApiError::NotFound(m),
            ConsentError::Store(e) => e.into(),
        }
    }
}

fn prepared(pipeline: &Pipeline, source_id: &str) -> impl Fn(&Directive) -> PreparedResource + Sync {
    let pipeline = pipeline.clone();
    let source_id = source_id.to_string();
    move |d: &Directive| PreparedResource::new(form::to_fhir(d, &source_id, &pipeline.consent.labels), &pipeline.search)
}

/// Records a school-native consent form for LEA `scope` (`None`: any LEA, admins).
pub async fn record_form(
    pipeline: &Pipeline,
    store: &Store,
    scope: Option<&str>,
    value: &Value,
    now: DateTime<Utc>,
) -> Result<ConsentOutcome, ConsentError> {
    if let (Some(scope), Some(lea)) = (scope, value.get("lea").and_then(Value::as_str))
        && lea != scope
    {
        return Err(ConsentError::Invalid(vec![
            OutcomeIssue::error(IssueCode::Security, format!("this client records consents for LEA {scope:?} only")).at_pointer("/lea"),
        ]));
    }
    pipeline.validator.schemas().check_consent(value).map_err(ConsentError::Invalid)?;
    let form: ConsentForm = serde_json::from_value(value.clone()).map_err(|e| {
        ConsentError::Invalid(vec![OutcomeIssue::error(IssueCode::Structure, format!("the consent form could not be read: {e}"))])
    })?;
    form.check(&pipeline.settings, now.date_naive()).map_err(ConsentError::Invalid)?;
    let patient = crate::mapping::engine::patient_id(&form.lea, &form.student.district_id);
    let directive = form.directive(&patient, 0);
    let sha = sha256_hex(&canonical_json(value));
    let fhir = prepared(pipeline, &form.source_id);
    let out = store
        .write_consent(&ConsentWrite {
            directive: &directive,
            source_id: &form.source_id,
            content_sha256: Some(&sha),
            fhir: &fhir,
            at: now,
        })
        .await?;
    tracing::info!(consent_id = %directive.id, outcome = ?out, "consent recorded");
    Ok(out)
}

/// Revokes a consent (a new, inactive version). Revoking an inactive consent changes nothing.
pub async fn revoke(
    pipeline: &Pipeline,
    store: &Store,
    scope: Option<&str>,
    id: &str,
    now: DateTime<Utc>,
) -> Result<ConsentOutcome, ConsentError> {
    let stored = visible(store, scope, id).await?;
    if stored.directive.status == Status::Inactive {
        return Ok(ConsentOutcome::Duplicate { id: id.to_string(), version: stored.directive.version });
    }
    let mut directive = stored.directive;
    directive.status = Status::Inactive;
    let fhir = prepared(pipeline, &stored.source_id);
    let out = store
        .write_consent(&ConsentWrite { directive: &directive, source_id: &stored.source_id, content_sha256: None, fhir: &fhir, at: now })
        .await?;
    tracing::info!(consent_id = %id, outcome = ?out, "consent revoked");
    Ok(out)
}

/// A consent this scope may see (another LEA's consent is a 404, as if it did not exist).
pub async fn visible(store: &Store, scope: Option<&str>, id: &str) -> Result<crate::store::StoredDirective, ConsentError> {
    match store.consent_directive(id).await? {
        Some(s) if scope.is_none_or(|lea| lea == s.directive.lea) => Ok(s),
        _ => Err(ConsentError::NotFound(format!("consent {id} is not known"))),
    }
}

fn invalid(pointer: &str, code: IssueCode, text: impl Into<String>) -> ConsentError {
    ConsentError::Invalid(vec![OutcomeIssue::error(code, text).at_pointer(pointer)])
}

/// Records a FHIR `Consent` (`POST /fhir/Consent`, or `PUT /fhir/Consent/{id}` with `put_id`)
/// for LEA `scope` (`None`: admins, who name the LEA in `organization`). Returns the outcome and
/// the consent id.
pub async fn record_fhir(
    pipeline: &Pipeline,
    store: &Store,
    scope: Option<&str>,
    value: &Value,
    put_id: Option<&str>,
    now: DateTime<Utc>,
) -> Result<ConsentOutcome, ConsentError> {
    if value["resourceType"] != "Consent" {
        return Err(invalid("/resourceType", IssueCode::Invalid, "the body must be a Consent resource"));
    }
    pipeline.mapper.fhir().validate(value).map_err(|violations| {
        ConsentError::Invalid(
            violations.iter().map(|v| OutcomeIssue::error(IssueCode::Structure, v.message.clone()).at_pointer(&v.pointer)).collect(),
        )
    })?;
    let parsed = super::fhir_consent::parse(value, &pipeline.settings, &pipeline.consent.labels).map_err(ConsentError::Invalid)?;
    let lea = match (scope, &parsed.lea) {
        (Some(own), Some(named)) if own != named => {
            return Err(invalid("/organization", IssueCode::Security, format!("this client records consents for LEA {own:?} only")));
        }
        (Some(own), _) => own.to_string(),
        (None, Some(named)) => named.clone(),
        (None, None) => return Err(invalid("/organization", IssueCode::Required, "name the LEA as organization Organization/<lea id>")),
    };
    // The student must be one of this LEA's (a Patient its sessions produced).
    let patient = store
        .fhir_read("Patient", &parsed.patient, Some(&lea))
        .await?
        .filter(|p| !p.deleted)
        .ok_or_else(|| invalid("/patient/reference", IssueCode::NotFound, "no student of this LEA has this Patient id"))?;
    let birth =
        serde_json::from_str::<Value>(&patient.content).ok().and_then(|p| p["birthDate"].as_str()?.parse::<chrono::NaiveDate>().ok());
    let age = birth.and_then(|b| parsed.signed_on.years_since(b)).map(i64::from);
    let granted_by = match (parsed.granted_by, parsed.self_signed) {
        (Some(g), _) => g,
        (None, true) if age.is_some_and(|a| a >= 18) => super::model::Grantor::AdultSelf,
        (None, true) => super::model::Grantor::MinorSelf,
        (None, false) => super::model::Grantor::Guardian,
    };
    // The signer must be able to sign at the student's age on the signature date.
    let min_self = pipeline.settings.intake.minor_self_consent_min_age_years;
    match (granted_by, age) {
        (super::model::Grantor::AdultSelf, Some(a)) if a < 18 => {
            return Err(invalid(
                "/performer",
                IssueCode::BusinessRule,
                format!("the student was {a} when this was signed; adult-self needs 18 or older"),
            ));
        }
        (super::model::Grantor::MinorSelf, Some(a)) if a >= 18 || a < min_self => {
            return Err(invalid(
                "/performer",
                IssueCode::BusinessRule,
                format!("the student was {a} when this was signed; minor-self applies from {min_self} to 17 (Family Code 6924)"),
            ));
        }
        _ => {}
    }
    let source_id = match put_id {
        Some(id) => {
            if value["id"].as_str().is_some_and(|body| body != id) {
                return Err(invalid("/id", IssueCode::Invalid, "the id in the body differs from the id in the URL"));
            }
            let stored =
                store.consent_directive(id).await?.filter(|s| s.directive.lea == lea).ok_or_else(|| {
                    ConsentError::NotFound(format!("Consent/{id} is not known; create a consent with POST /fhir/Consent"))
                })?;
            stored.source_id
        }
        None => parsed.source_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    };
    let directive = Directive {
        id: form::consent_id(&lea, &source_id),
        version: 0,
        patient: parsed.patient,
        lea,
        status: parsed.status,
        granted_by,
        recipients: parsed.recipients,
        purposes: parsed.purposes,
        categories: parsed.categories,
        period: parsed.period,
        data_period: parsed.data_period,
        signed_on: parsed.signed_on,
        document_sha256: parsed.document_sha256,
        exceptions: parsed.exceptions,
    };
    let sha = sha256_hex(&serde_json::to_vec(&directive).unwrap_or_default());
    let fhir = prepared(pipeline, &source_id);
    let out = store
        .write_consent(&ConsentWrite { directive: &directive, source_id: &source_id, content_sha256: Some(&sha), fhir: &fhir, at: now })
        .await?;
    tracing::info!(consent_id = %directive.id, outcome = ?out, "FHIR consent recorded");
    Ok(out)
}
