//! Tracing set-up and the per-request span.
//!
//! Policy (see README "Logging"): log ids, counts, statuses and durations; never request or
//! response bodies, names, birth dates, identifiers, diagnoses, notes, tokens or query strings.
//! The request span records the route *pattern* (`/api/v1/sessions/{id}`), not the URL.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::settings::{LogFormat, LogSettings};

/// Header carrying the request id in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The id of the current request, available as request extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Installs the global subscriber (JSON or pretty, to stderr). Safe to call twice (tests).
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&settings.level)).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = std::io::stderr.with_max_level(tracing::Level::TRACE);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

fn acceptable_incoming_id(v: &str) -> bool {
    (8..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Middleware: one span per request with a request id (taken from a well-formed incoming
/// `X-Request-Id`, else a new UUID), returned as `X-Request-Id`; one log line per request.
pub async fn request_span(req: ServiceRequest, next: Next<BoxBody>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_incoming_id(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let route = req.match_pattern().unwrap_or_else(|| "(unmatched)".into());
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        http.method = %req.method(),
        http.route = %route,
        client_id = tracing::field::Empty,
    );
    let started = Instant::now();
    // Handler and extractor errors arrive here as responses; an `Err` can only come from a
    // middleware and is passed on (the request must not be cloned before routing).
    let mut response = match next.call(req).instrument(span.clone()).await {
        Ok(res) => res,
        Err(err) => {
            span.in_scope(|| tracing::warn!(error = %err, "request failed in middleware"));
            return Err(err);
        }
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), v);
    }
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    span.in_scope(|| tracing::info!(http.status_code = status, latency_ms, "request completed"));
    Ok(response.map_body(|_, b| b.boxed()))
}
