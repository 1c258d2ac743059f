//! JSON Schemas from `schemas/`, compiled once with the `jsonschema` crate; validation errors
//! become `OperationOutcome` issues with a JSON pointer and a plain-language sentence. Messages
//! never echo the submitted value (it may be PHI).

use std::path::Path;

use anyhow::Context;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use serde_json::Value;

use crate::fhir::{IssueCode, OutcomeIssue};

/// File name of the session schema under `schemas/`.
pub const SESSION_SCHEMA_FILE: &str = "session.schema.json";
/// File name of the consent-form schema under `schemas/`.
pub const CONSENT_SCHEMA_FILE: &str = "consent.schema.json";

/// The compiled schemas.
pub struct SchemaSet {
    session: jsonschema::Validator,
    session_document: Value,
    consent: jsonschema::Validator,
}

fn compile(dir: &Path, file: &str) -> anyhow::Result<(jsonschema::Validator, Value)> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading schema {}", path.display()))?;
    compile_text(&text).with_context(|| format!("compiling schema {}", path.display()))
}

fn compile_text(text: &str) -> anyhow::Result<(jsonschema::Validator, Value)> {
    let document: Value = serde_json::from_str(text).context("schema is not valid JSON")?;
    let validator = jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&document)
        .map_err(|e| anyhow::anyhow!("schema does not compile: {e}"))?;
    Ok((validator, document))
}

impl SchemaSet {
    /// Loads and compiles every schema the gateway uses from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let (session, session_document) = compile(dir, SESSION_SCHEMA_FILE)?;
        let (consent, _) = compile(dir, CONSENT_SCHEMA_FILE)?;
        Ok(Self { session, session_document, consent })
    }

    /// The session schema as a JSON document (for OpenAPI and the CSV column layout).
    pub fn session_document(&self) -> &Value {
        &self.session_document
    }

    /// Checks a record against the session schema.
    pub fn check_session(&self, value: &Value) -> Result<(), Vec<OutcomeIssue>> {
        check(&self.session, value)
    }

    /// Checks a consent form against the consent schema.
    pub fn check_consent(&self, value: &Value) -> Result<(), Vec<OutcomeIssue>> {
        check(&self.consent, value)
    }
}

fn check(validator: &jsonschema::Validator, value: &Value) -> Result<(), Vec<OutcomeIssue>> {
    if validator.is_valid(value) {
        return Ok(());
    }
    let errors: Vec<jsonschema::ValidationError<'_>> = validator.iter_errors(value).collect();
    // A value of the wrong type also fails its enum/length rules: report only the type there.
    let wrong_type: Vec<&str> =
        errors.iter().filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. })).map(|e| e.instance_path().as_str()).collect();
    let mut issues: Vec<OutcomeIssue> = errors
        .iter()
        .filter(|e| matches!(e.kind(), ValidationErrorKind::Type { .. }) || !wrong_type.contains(&e.instance_path().as_str()))
        .flat_map(describe)
        .collect();
    issues.dedup_by(|a, b| a.diagnostics == b.diagnostics && a.expression == b.expression);
    Err(issues)
}

fn expression_name(pointer: &str) -> String {
    let e = crate::fhir::outcome::pointer_to_expression(pointer);
    if e.is_empty() { "the record".into() } else { e }
}

fn type_name(kind: &TypeKind) -> String {
    let name = |t: &jsonschema::JsonType| match t.to_string().as_str() {
        "object" => "an object ({ ... })".to_string(),
        "array" => "a list ([ ... ])".to_string(),
        "string" => "text in quotes".to_string(),
        "integer" => "a whole number".to_string(),
        "number" => "a number".to_string(),
        "boolean" => "true or false".to_string(),
        other => other.to_string(),
    };
    match kind {
        TypeKind::Single(t) => name(t),
        TypeKind::Multiple(set) => set.iter().map(|t| name(&t)).collect::<Vec<_>>().join(" or "),
    }
}

fn list_options(options: &Value) -> String {
    match options {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Turns one validation error into issues (an "unknown fields" error yields one per field).
fn describe(error: &jsonschema::ValidationError<'_>) -> Vec<OutcomeIssue> {
    let pointer = error.instance_path().as_str().to_string();
    let name = expression_name(&pointer);
    let one = |code: IssueCode, text: String| vec![OutcomeIssue::error(code, text).at_pointer(&pointer)];
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let prop = property.as_str().unwrap_or_default();
            let child = format!("{pointer}/{prop}");
            let child_name = expression_name(&child);
            let text = if child == "/clinician/supervisor" {
                "clinician.supervisor is required: associates (ASW, AMFT, APCC, psychological associate) and wellness coaches must name their supervising licensee".to_string()
            } else {
                format!("{child_name} is required but missing")
            };
            vec![OutcomeIssue::error(IssueCode::Required, text).at_pointer(&child)]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } | ValidationErrorKind::UnevaluatedProperties { unexpected } => unexpected
            .iter()
            .map(|field| {
                let child = format!("{pointer}/{}", field.replace('~', "~0").replace('/', "~1"));
                OutcomeIssue::error(
                    IssueCode::Structure,
                    format!(
                        "{} is not a field of a session record; check its spelling against schemas/session.schema.json",
                        expression_name(&child)
                    ),
                )
                .at_pointer(&child)
            })
            .collect(),
        ValidationErrorKind::Type { kind } => one(IssueCode::Value, format!("{name} must be {}", type_name(kind))),
        ValidationErrorKind::Enum { options } => one(IssueCode::CodeInvalid, format!("{name} must be one of: {}", list_options(options))),
        ValidationErrorKind::Constant { expected_value } => one(IssueCode::Value, format!("{name} must be {expected_value}")),
        ValidationErrorKind::MinLength { limit } if *limit <= 1 => one(IssueCode::Required, format!("{name} must not be empty")),
        ValidationErrorKind::MinLength { limit } => one(IssueCode::Value, format!("{name} must have at least {limit} characters")),
        ValidationErrorKind::MaxLength { limit } => {
            one(IssueCode::TooLong, format!("{name} is longer than the {limit} characters allowed"))
        }
        ValidationErrorKind::Pattern { .. } => one(
            IssueCode::Value,
            format!("{name} contains characters that are not allowed (use letters, digits and . _ : / -, starting with a letter or digit)"),
        ),
        ValidationErrorKind::Format { format } => {
            let text = match format.as_str() {
                "date" => format!("{name} must be a calendar date written YYYY-MM-DD, like 2011-04-02"),
                "date-time" => format!("{name} must be a date and time with its UTC offset, like 2026-11-02T10:05:00-08:00"),
                other => format!("{name} is not a valid {other}"),
            };
            one(IssueCode::Value, text)
        }
        ValidationErrorKind::Minimum { limit } | ValidationErrorKind::ExclusiveMinimum { limit } => {
            one(IssueCode::Value, format!("{name} must be at least {limit}"))
        }
        ValidationErrorKind::Maximum { limit } | ValidationErrorKind::ExclusiveMaximum { limit } => {
            one(IssueCode::Value, format!("{name} must be at most {limit}"))
        }
        ValidationErrorKind::MaxItems { limit } => one(IssueCode::TooLong, format!("{name} may list at most {limit} entries")),
        ValidationErrorKind::MinItems { limit } => one(IssueCode::Required, format!("{name} must list at least {limit} entries")),
        ValidationErrorKind::UniqueItems => one(IssueCode::Value, format!("{name} lists the same value more than once")),
        _ => one(IssueCode::Invalid, format!("{name}: {}", error.masked())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> SchemaSet {
        SchemaSet::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
    }

    #[test]
    fn unknown_field_is_located() {
        let issues = set().check_session(&json!({"source_id": "a", "colour": 1})).unwrap_err();
        assert!(issues.iter().any(|i| i.pointer() == Some("/colour") && i.code == IssueCode::Structure), "{issues:#?}");
        assert!(issues.iter().any(|i| i.pointer() == Some("/student") && i.code == IssueCode::Required));
    }

    #[test]
    fn messages_do_not_echo_values() {
        let issues = set().check_session(&json!({"source_id": "Ana Lopez 2011-04-02 !!"})).unwrap_err();
        for i in &issues {
            let d = i.diagnostics.as_deref().unwrap_or_default();
            assert!(!d.contains("Ana") && !d.contains("2011"), "{d}");
        }
    }
}
