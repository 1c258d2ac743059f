//! FHIR R4 vocabulary only: no school, consent or billing words live here.

pub mod outcome;
pub mod resource;
pub mod schema;
pub mod search;

pub use outcome::{IssueCode, OperationOutcome, OutcomeIssue, Severity};

/// Media type of FHIR JSON.
pub const FHIR_JSON: &str = "application/fhir+json";
pub use schema::FhirSchema;
