//! Request plumbing shared by handlers: body limits, content types, request id, query errors.

use actix_web::http::header;
use actix_web::web::{Bytes, Payload};
use actix_web::{HttpMessage, HttpRequest};

use crate::error::ApiError;
use crate::fhir::IssueCode;
use crate::telemetry::RequestId;

/// The kind of body a handler accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// `application/json` (or any `+json`).
    Json,
    /// `application/x-ndjson` / `application/ndjson` / `application/fhir+ndjson`.
    Ndjson,
}

/// Reads the Content-Type and checks it is one of `accepted`.
pub fn body_kind(req: &HttpRequest, accepted: &[BodyKind]) -> Result<BodyKind, ApiError> {
    let ct = req.content_type().to_ascii_lowercase();
    let kind = match ct.as_str() {
        "application/json" => Some(BodyKind::Json),
        "application/x-ndjson" | "application/ndjson" | "application/fhir+ndjson" => Some(BodyKind::Ndjson),
        other if other.starts_with("application/") && other.ends_with("+json") => Some(BodyKind::Json),
        _ => None,
    };
    let names = accepted
        .iter()
        .map(|k| match k {
            BodyKind::Json => "application/json",
            BodyKind::Ndjson => "application/x-ndjson",
        })
        .collect::<Vec<_>>()
        .join(" or ");
    match kind {
        Some(k) if accepted.contains(&k) => Ok(k),
        _ if ct.is_empty() => Err(ApiError::UnsupportedMediaType(format!("the request has no Content-Type header; send {names}"))),
        _ => Err(ApiError::UnsupportedMediaType(format!("Content-Type {ct:?} is not accepted here; send {names}"))),
    }
}

/// Reads the whole body, refusing more than `limit` bytes (checked against Content-Length first).
pub async fn read_body(req: &HttpRequest, payload: Payload, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::PayloadTooLarge(format!("the request body is larger than the {limit} bytes allowed; split the batch"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match payload.to_bytes_limited(limit).await {
        Err(_) => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::bad_request(IssueCode::Structure, "body", format!("the request body could not be read: {e}"))),
        Ok(Ok(bytes)) if bytes.is_empty() => Err(ApiError::bad_request(IssueCode::Required, "body", "the request body is empty")),
        Ok(Ok(bytes)) => Ok(bytes),
    }
}

/// Reads a JSON body: its Content-Type, the size limit, and JSON that parses (the error names
/// line and column).
pub async fn json_body(req: &HttpRequest, payload: Payload, limit: usize) -> Result<serde_json::Value, ApiError> {
    body_kind(req, &[BodyKind::Json])?;
    let body = read_body(req, payload, limit).await?;
    crate::intake::batch::parse_record(&body).map_err(|issue| ApiError::Malformed(vec![issue]))
}

/// The request id set by the telemetry middleware.
pub fn request_id(req: &HttpRequest) -> Option<String> {
    req.extensions().get::<RequestId>().map(|r| r.0.clone())
}

/// Renders query-string deserialisation failures (unknown or malformed parameters) as a 400
/// OperationOutcome.
pub fn query_error(err: actix_web::error::QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::bad_request(IssueCode::Value, "query", format!("invalid query parameters: {err}")).into()
}

/// Renders path-segment failures as a 404 OperationOutcome.
pub fn path_error(err: actix_web::error::PathError, _req: &HttpRequest) -> actix_web::Error {
    ApiError::NotFound(format!("no such resource ({err})")).into()
}
