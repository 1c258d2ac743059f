//! The one error catalogue at the HTTP edge.
//!
//! Domain modules have their own `thiserror` enums; handlers convert them into [`ApiError`],
//! which maps each variant to an HTTP status and renders a FHIR `OperationOutcome`
//! (`application/fhir+json`). Internal failures are logged once here, with the request id, and
//! the client sees a generic sentence (never a stack trace, SQL or PHI).

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use crate::fhir::FHIR_JSON;
use crate::fhir::outcome::{IssueCode, OperationOutcome, OutcomeIssue};

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or an unknown bearer token (401).
    #[error("authentication required: {0}")]
    Unauthenticated(String),
    /// Authenticated, but this role or organisation may not do this (403).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such thing, or not visible to this client (404).
    #[error("not found: {0}")]
    NotFound(String),
    /// Route exists, method does not (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body could not be parsed at all (400).
    #[error("malformed request")]
    Malformed(Vec<OutcomeIssue>),
    /// Query parameters or headers are wrong (400).
    #[error("bad request")]
    BadRequest(Vec<OutcomeIssue>),
    /// The content was parsed but is not acceptable (422).
    #[error("unprocessable content ({} issues)", .0.len())]
    Unprocessable(Vec<OutcomeIssue>),
    /// Content-Type not accepted (415).
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// Body or batch exceeds a configured limit (413).
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// A dependency (the database) is unavailable; retry later (503).
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure (500).
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
    /// The mapping files produced an invalid FHIR resource (500): names the resource and the
    /// paths (the messages never carry values). Nothing was stored.
    #[error("mapping defect: {0}")]
    MappingDefect(String),
    /// A resource that existed was deleted (410).
    #[error("gone: {0}")]
    Gone(String),
    /// A per-client limit is reached; retry after this many seconds (429).
    #[error("too many requests: {0}")]
    TooManyRequests(String, u64),
    /// The request conflicts with the resource's current state (409).
    #[error("conflict: {0}")]
    Conflict(String),
}

impl ApiError {
    /// One issue of `code` with a sentence, as a 400.
    pub fn bad_request(code: IssueCode, expression: &str, diagnostics: impl Into<String>) -> Self {
        ApiError::BadRequest(vec![OutcomeIssue::error(code, diagnostics).at_expression(expression)])
    }

    fn issues(&self) -> Vec<OutcomeIssue> {
        match self {
            ApiError::Unauthenticated(m) => vec![OutcomeIssue::error(IssueCode::Login, m.clone())],
            ApiError::Forbidden(m) => vec![OutcomeIssue::error(IssueCode::Security, m.clone())],
            ApiError::NotFound(m) => vec![OutcomeIssue::error(IssueCode::NotFound, m.clone())],
            ApiError::MethodNotAllowed => {
                vec![OutcomeIssue::error(IssueCode::NotSupported, "this HTTP method is not supported on this URL")]
            }
            ApiError::Malformed(i) | ApiError::BadRequest(i) | ApiError::Unprocessable(i) => i.clone(),
            ApiError::UnsupportedMediaType(m) => vec![OutcomeIssue::error(IssueCode::NotSupported, m.clone())],
            ApiError::PayloadTooLarge(m) => vec![OutcomeIssue::error(IssueCode::TooLong, m.clone())],
            ApiError::Unavailable(_) => vec![OutcomeIssue::error(
                IssueCode::Transient,
                "the gateway cannot reach its database right now; nothing was stored, please retry",
            )],
            ApiError::MappingDefect(m) => vec![OutcomeIssue::error(
                IssueCode::Exception,
                format!(
                    "the gateway's mapping files produced an invalid FHIR resource, so nothing was stored; the operator must fix the mapping: {m}"
                ),
            )],
            ApiError::Gone(m) => vec![OutcomeIssue::error(IssueCode::Deleted, m.clone())],
            ApiError::TooManyRequests(m, _) => vec![OutcomeIssue::error(IssueCode::Throttled, m.clone())],
            ApiError::Conflict(m) => vec![OutcomeIssue::error(IssueCode::Conflict, m.clone())],
            ApiError::Internal(_) => vec![OutcomeIssue::error(
                IssueCode::Exception,
                "an unexpected error occurred; nothing was stored. Quote the X-Request-Id header when reporting it",
            )],
        }
    }

    /// The outcome document for this error.
    pub fn outcome(&self) -> OperationOutcome {
        OperationOutcome::new(self.issues())
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Mapping(m) => ApiError::MappingDefect(m),
            e if e.is_unavailable() => ApiError::Unavailable(e.into()),
            e => ApiError::Internal(e.into()),
        }
    }
}

/// The audit trail could not be written (or loaded for reading): 503, nothing disclosed.
impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        ApiError::Unavailable(e.into())
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Malformed(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) | ApiError::MappingDefect(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            // Logged once, here, with the cause chain (our errors carry ids, never PHI).
            ApiError::Internal(e) => tracing::error!(error.cause_chain = ?e, "request failed with an internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error.cause_chain = ?e, "request failed: database unavailable"),
            ApiError::MappingDefect(m) => tracing::error!(error = %m, "mapping produced an invalid resource; request refused"),
            _ => {}
        }
        let mut res = HttpResponse::build(self.status_code());
        res.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON)));
        match self {
            ApiError::Unauthenticated(_) => {
                res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wellness-gateway\"")));
            }
            ApiError::Unavailable(_) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from_static("5")));
            }
            ApiError::TooManyRequests(_, secs) => {
                res.insert_header((header::RETRY_AFTER, HeaderValue::from(*secs)));
            }
            _ => {}
        }
        res.body(serde_json::to_vec(&self.outcome()).unwrap_or_default())
    }
}
