//! `OperationOutcome` (R4): how every rejection is reported.

use serde::{Deserialize, Serialize};

/// Extension URL carrying an RFC 6901 JSON pointer to the offending value.
pub const JSON_POINTER_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:json-pointer";
/// Extension URL carrying the zero-based index of the record within a batch.
pub const RECORD_INDEX_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:record-index";

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The request cannot proceed.
    Fatal,
    /// This record or value is not acceptable.
    Error,
    /// Accepted, but worth a look.
    Warning,
    /// For information.
    Information,
}

/// `OperationOutcome.issue.code` (value set `issue-type`), the subset the gateway uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum IssueCode {
    /// Content invalid against the specification or a profile.
    Invalid,
    /// A structural issue in the content (malformed JSON).
    Structure,
    /// A required element is missing.
    Required,
    /// An element or header value is invalid.
    Value,
    /// A content validation rule failed (semantic rule).
    Invariant,
    /// An authentication/authorization/permissions issue.
    Security,
    /// The client needs to initiate an authentication process.
    Login,
    /// The user or system was not able to be authenticated.
    Unknown,
    /// The resource or operation is not supported.
    NotSupported,
    /// The reference provided was not found.
    NotFound,
    /// Content was too long, or the request exceeded a size limit.
    TooLong,
    /// The code or system could not be understood.
    CodeInvalid,
    /// An extension or element was not recognised.
    Extension,
    /// Operation denied to protect resources from overload.
    TooCosty,
    /// The operation was rejected because of a business rule.
    BusinessRule,
    /// Content could not be accepted because of an edit conflict.
    Conflict,
    /// Transient processing issue; try again.
    Transient,
    /// An unexpected internal error.
    Exception,
    /// The resource was deleted.
    Deleted,
    /// Not processed because of a limit (too many requests).
    Throttled,

    /// Processing issues, e.g. the operation timed out.
    Processing,
    /// Informational; not an error.
    Informational,
}

/// One `OperationOutcome.issue`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct OutcomeIssue {
    /// Extensions: JSON pointer and batch record index.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extension: Vec<Extension>,
    /// How bad.
    pub severity: Severity,
    /// Machine-readable kind.
    pub code: IssueCode,
    /// A sentence a county data clerk understands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnostics: Option<String>,
    /// FHIRPath-style location, e.g. `student.birth_date`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expression: Vec<String>,
}

/// A FHIR extension with a string or integer value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    /// Extension URL.
    pub url: String,
    /// String value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_string: Option<String>,
    /// Integer value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_integer: Option<i64>,
}

impl OutcomeIssue {
    /// An error issue with a diagnostics sentence.
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self { extension: Vec::new(), severity: Severity::Error, code, diagnostics: Some(diagnostics.into()), expression: Vec::new() }
    }

    /// Points the issue at a value given by its RFC 6901 JSON pointer (`/student/birth_date`);
    /// sets both the FHIRPath-style `expression` and the pointer extension.
    pub fn at_pointer(mut self, pointer: &str) -> Self {
        if !pointer.is_empty() {
            self.expression = vec![pointer_to_expression(pointer)];
            self.extension.retain(|e| e.url != JSON_POINTER_EXTENSION);
            self.extension.push(Extension { url: JSON_POINTER_EXTENSION.into(), value_string: Some(pointer.into()), value_integer: None });
        }
        self
    }

    /// Sets the expression without a pointer (e.g. an HTTP header or query parameter name).
    pub fn at_expression(mut self, expression: impl Into<String>) -> Self {
        self.expression = vec![expression.into()];
        self
    }

    /// Marks the issue as belonging to record `index` of a batch.
    pub fn for_record(mut self, index: usize) -> Self {
        self.extension.retain(|e| e.url != RECORD_INDEX_EXTENSION);
        self.extension.push(Extension { url: RECORD_INDEX_EXTENSION.into(), value_string: None, value_integer: i64::try_from(index).ok() });
        self
    }

    /// The JSON pointer, when the issue has one.
    pub fn pointer(&self) -> Option<&str> {
        self.extension.iter().find(|e| e.url == JSON_POINTER_EXTENSION).and_then(|e| e.value_string.as_deref())
    }
}

/// `/student/birth_date` -> `student.birth_date`; `/diagnoses/1` -> `diagnoses[1]`.
pub fn pointer_to_expression(pointer: &str) -> String {
    let mut out = String::new();
    for raw in pointer.split('/').skip(1) {
        let seg = raw.replace("~1", "/").replace("~0", "~");
        if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) {
            out.push('[');
            out.push_str(&seg);
            out.push(']');
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

/// An R4 `OperationOutcome`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationOutcome {
    /// Always `OperationOutcome`.
    pub resource_type: String,
    /// At least one issue.
    pub issue: Vec<OutcomeIssue>,
}

impl OperationOutcome {
    /// Wraps issues; an empty list becomes one informational "all OK" issue, as R4 requires one.
    pub fn new(issue: Vec<OutcomeIssue>) -> Self {
        let issue = if issue.is_empty() {
            vec![OutcomeIssue {
                extension: Vec::new(),
                severity: Severity::Information,
                code: IssueCode::Informational,
                diagnostics: Some("All OK".into()),
                expression: Vec::new(),
            }]
        } else {
            issue
        };
        Self { resource_type: "OperationOutcome".into(), issue }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_becomes_fhirpath_like_expression() {
        assert_eq!(pointer_to_expression("/student/birth_date"), "student.birth_date");
        assert_eq!(pointer_to_expression("/diagnoses/1"), "diagnoses[1]");
        assert_eq!(pointer_to_expression("/service/participants/0/relationship"), "service.participants[0].relationship");
        assert_eq!(pointer_to_expression("/3/student"), "[3].student");
        assert_eq!(pointer_to_expression("/a~1b"), "a/b");
    }

    #[test]
    fn empty_outcome_has_one_informational_issue() {
        let o = OperationOutcome::new(vec![]);
        assert_eq!(o.issue.len(), 1);
        assert_eq!(o.issue[0].severity, Severity::Information);
    }
}
