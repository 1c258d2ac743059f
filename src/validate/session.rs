//! The session record as submitted ([`RawSession`], the wire shape of
//! `schemas/session.schema.json`) and as validated ([`ValidSession`]: parsed dates, checked
//! identifiers). Later stages take only `ValidSession`.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

use crate::domain::{Icd10, MediCalCin, Npi};
use crate::fhir::{IssueCode, OutcomeIssue};

/// Wire shape of a session (mirrors the JSON Schema; the schema is checked first).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawSession {
    pub source_id: String,
    pub lea: String,
    pub site: String,
    pub student: RawStudent,
    pub clinician: RawClinician,
    pub service: RawService,
    pub diagnoses: Vec<String>,
    #[serde(default)]
    pub treatment_consent: Option<TreatmentConsent>,
    pub consent_ids: Vec<String>,
    #[serde(default)]
    pub note: Option<String>,
}

/// Student as submitted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawStudent {
    pub district_id: String,
    #[serde(default)]
    pub ssid: Option<String>,
    #[serde(default)]
    pub medi_cal_cin: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub birth_date: String,
    pub sex: String,
    #[serde(default)]
    pub grade: Option<String>,
    #[serde(default)]
    pub address: Option<crate::settings::Address>,
}

/// Clinician as submitted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawClinician {
    pub npi: String,
    pub given_name: String,
    pub family_name: String,
    pub credential: String,
    #[serde(default)]
    pub supervisor: Option<RawSupervisor>,
}

/// Supervising licensee as submitted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawSupervisor {
    pub npi: String,
    pub given_name: String,
    pub family_name: String,
    pub credential: String,
}

/// Service as submitted.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawService {
    #[serde(rename = "type")]
    pub kind: String,
    pub tier: u8,
    pub modality: String,
    pub start: String,
    pub end: String,
    #[serde(default)]
    pub minutes_face_to_face: Option<i64>,
    #[serde(default)]
    pub group_size: Option<i64>,
    #[serde(default)]
    pub group_id: Option<String>,
    #[serde(default)]
    pub participants: Vec<RawParticipant>,
    /// Family sessions: whether the student took part (default: yes).
    #[serde(default)]
    pub student_present: Option<bool>,
}

/// A participant such as a parent in a family session.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawParticipant {
    pub relationship: String,
    #[serde(default)]
    pub given_name: Option<String>,
    #[serde(default)]
    pub family_name: Option<String>,
}

/// Who consented to the counselling itself.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum TreatmentConsent {
    /// A parent or guardian.
    Guardian,
    /// The minor themself (aged 12 or older, Family Code 6924).
    MinorSelf,
    /// An adult student.
    AdultSelf,
}

impl RawSession {
    /// Deserialises a schema-valid value. A failure here means schema and struct disagree; it is
    /// still reported as an issue rather than a panic.
    pub fn from_value(value: &serde_json::Value) -> Result<RawSession, Vec<OutcomeIssue>> {
        RawSession::deserialize(value)
            .map_err(|e| vec![OutcomeIssue::error(IssueCode::Invalid, format!("the record does not match the session structure: {e}"))])
    }
}

/// A session that passed every check. Identifiers are typed; times keep their offsets.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct ValidSession {
    pub raw: RawSession,
    pub clinician_npi: Npi,
    pub supervisor_npi: Option<Npi>,
    pub medi_cal_cin: Option<MediCalCin>,
    pub birth_date: NaiveDate,
    pub start: DateTime<FixedOffset>,
    pub end: DateTime<FixedOffset>,
    /// Documented face-to-face minutes (defaults to end - start).
    pub minutes_face_to_face: i64,
    pub diagnoses: Vec<Icd10>,
}

impl ValidSession {
    /// The LEA's id for the session.
    pub fn source_id(&self) -> &str {
        &self.raw.source_id
    }

    /// The submitting LEA.
    pub fn lea(&self) -> &str {
        &self.raw.lea
    }

    /// The school site.
    pub fn site(&self) -> &str {
        &self.raw.site
    }

    /// Date of service: the local calendar date the session started.
    pub fn service_date(&self) -> NaiveDate {
        self.start.date_naive()
    }
}
