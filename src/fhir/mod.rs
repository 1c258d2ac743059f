//! FHIR R4 vocabulary only: no school, consent or billing words live here.

pub mod outcome;
pub mod resource;
pub mod schema;
pub mod search;

pub use outcome::{IssueCode, OperationOutcome, OutcomeIssue, Severity};

/// A FHIR `instant` (RFC 3339, UTC, microseconds) from microseconds since the Unix epoch.
pub fn instant(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us).unwrap_or_default().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";
pub use schema::FhirSchema;
