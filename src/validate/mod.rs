//! Stage 2: `RawSession` (parsed JSON) -> [`ValidSession`] or a list of issues, each with a JSON
//! pointer, an issue code and a sentence. Schema first (shape, lengths, enums), then semantic
//! rules (dates, durations, check digits, site in the LEA).

pub mod schema;
pub mod semantic;
pub mod session;

use std::path::Path;
use std::sync::Arc;

pub use schema::SchemaSet;
pub use session::{RawSession, ValidSession};

use crate::fhir::OutcomeIssue;
use crate::settings::Settings;

/// Compiled schemas plus the settings the semantic rules read. Built once at start-up.
#[derive(Clone)]
pub struct Validator {
    schemas: Arc<SchemaSet>,
    settings: Arc<Settings>,
}

impl Validator {
    /// Compiles the schemas under `schema_dir`.
    pub fn new(schema_dir: &Path, settings: Arc<Settings>) -> anyhow::Result<Self> {
        Ok(Self { schemas: Arc::new(SchemaSet::load(schema_dir)?), settings })
    }

    /// The compiled schemas.
    pub fn schemas(&self) -> &SchemaSet {
        &self.schemas
    }

    /// Validates one parsed record. `now` is the reference for "no future dates".
    pub fn validate(&self, value: &serde_json::Value, now: chrono::DateTime<chrono::Utc>) -> Result<ValidSession, Vec<OutcomeIssue>> {
        self.schemas.check_session(value)?;
        let raw = RawSession::from_value(value)?;
        semantic::check(raw, &self.settings, now)
    }
}
