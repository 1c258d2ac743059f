//! SMART Backend Services endpoints: `POST /auth/token` and `/.well-known/smart-configuration`
//! (open: they hold no data; the token endpoint authenticates the client itself).
//!
//! Token errors follow RFC 6749 section 5.2 (`error`, `error_description`), which OAuth clients
//! read; the same JSON object is also a FHIR `OperationOutcome` (`resourceType`, `issue`), so
//! every refusal of this gateway names what was wrong in one shape.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, get, post, web};

use crate::auth::smart::{OAuthError, TokenRequest, smart_configuration};
use crate::fhir::{IssueCode, OperationOutcome, OutcomeIssue};
use crate::startup::AppState;

/// `http(s)://host/auth/token` as the client addressed us (what its assertion's `aud` names),
/// unless `auth.token_url` is configured.
fn token_url(req: &HttpRequest, state: &AppState) -> String {
    let info = req.connection_info();
    let seen = format!("{}://{}/auth/token", info.scheme(), info.host());
    state.settings.auth.token_url.clone().unwrap_or(seen)
}

fn oauth_error(e: &OAuthError) -> HttpResponse {
    let (status, code) = match e {
        OAuthError::InvalidClient(_) => (StatusCode::UNAUTHORIZED, IssueCode::Login),
        OAuthError::Server(_) => (StatusCode::SERVICE_UNAVAILABLE, IssueCode::Transient),
        OAuthError::InvalidScope(_) => (StatusCode::BAD_REQUEST, IssueCode::Security),
        _ => (StatusCode::BAD_REQUEST, IssueCode::Invalid),
    };
    match e {
        OAuthError::Server(err) => tracing::warn!(error = %err, "token request failed"),
        _ => tracing::info!(error = e.code(), "token request refused"),
    }
    let mut body = serde_json::to_value(OperationOutcome::new(vec![OutcomeIssue::error(code, e.description())])).unwrap_or_default();
    body["error"] = e.code().into();
    body["error_description"] = e.description().into();
    let mut res = HttpResponse::build(status);
    res.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    if status == StatusCode::UNAUTHORIZED {
        res.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"wellness-gateway\"")));
    }
    res.json(body)
}

/// Token endpoint: `grant_type=client_credentials` with a signed `client_assertion`.
#[utoipa::path(post, path = "/auth/token", tag = "auth",
    request_body(content_type = "application/x-www-form-urlencoded", description = "grant_type, scope, client_assertion_type, client_assertion, optional purpose_of_use"),
    responses((status = 200, description = "access token"), (status = 400, description = "invalid_request, invalid_scope or unsupported_grant_type"),
        (status = 401, description = "invalid_client")))]
#[post("/auth/token")]
pub async fn token(state: web::Data<AppState>, req: HttpRequest, body: Bytes) -> HttpResponse {
    if req.content_type() != "application/x-www-form-urlencoded" {
        return oauth_error(&OAuthError::InvalidRequest("send the token request as application/x-www-form-urlencoded".into()));
    }
    let form: TokenRequest = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(e) => return oauth_error(&OAuthError::InvalidRequest(format!("the form could not be read: {e}"))),
    };
    let url = token_url(&req, &state);
    match state.smart.issue(&state.store, form, &url).await {
        Ok(t) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .insert_header((header::PRAGMA, HeaderValue::from_static("no-cache")))
            .json(t),
        Err(e) => oauth_error(&e),
    }
}

/// SMART configuration (discovery) document.
#[utoipa::path(get, path = "/.well-known/smart-configuration", tag = "auth", responses((status = 200, description = "SMART configuration")))]
#[get("/.well-known/smart-configuration")]
pub async fn smart_config(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(smart_configuration(&token_url(&req, &state)))
}

/// The same document under the FHIR base, where SMART clients also look.
#[get("/fhir/.well-known/smart-configuration")]
pub async fn smart_config_fhir(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    HttpResponse::Ok().json(smart_configuration(&token_url(&req, &state)))
}
