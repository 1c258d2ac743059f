//! `/api/v1/consents`: record a school-native consent form, read it, revoke it
//! (submitters for their own LEA, admins for any).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::extractors::{BodyKind, body_kind, read_body};
use crate::auth::Principal;
use crate::consent::records;
use crate::error::ApiError;
use crate::fhir::OperationOutcome;
use crate::intake::batch;
use crate::startup::AppState;
use crate::store::ConsentOutcome;

/// What a consent write answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentReceipt {
    /// Consent id (also the FHIR `Consent` id).
    pub id: String,
    /// Current version (the FHIR `Consent` versionId).
    pub version: i64,
    /// `created`, `amended`, `duplicate` (nothing changed) or `revoked`.
    pub status: &'static str,
    /// `Consent/{id}`.
    pub fhir: String,
}

fn receipt(out: ConsentOutcome, revoked: bool) -> HttpResponse {
    let (id, version, status, created) = match out {
        ConsentOutcome::Created { id, version } => (id, version, "created", true),
        ConsentOutcome::Amended { id, version } => (id, version, if revoked { "revoked" } else { "amended" }, !revoked),
        ConsentOutcome::Duplicate { id, version } => (id, version, "duplicate", false),
    };
    let mut res = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    res.insert_header((header::LOCATION, format!("/api/v1/consents/{id}")));
    res.json(ConsentReceipt { fhir: format!("Consent/{id}"), id, version, status })
}

/// Record a consent form (`schemas/consent.schema.json`). The same form again changes nothing
/// (200, `duplicate`); a changed form with the same `source_id` is a new version (201).
#[utoipa::path(post, path = "/api/v1/consents", tag = "consent",
    request_body(content = serde_json::Value, content_type = "application/json", description = "A consent form (schemas/consent.schema.json)"),
    responses((status = 201, description = "recorded (created or a new version)", body = ConsentReceipt),
        (status = 200, description = "identical to the stored version", body = ConsentReceipt),
        (status = 422, description = "form rejected; one issue per problem with its JSON pointer", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/consents")]
pub async fn post_consent(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let scope = who.intake_scope()?;
    body_kind(&req, &[BodyKind::Json])?;
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let value = batch::parse_record(&body).map_err(|issue| ApiError::Malformed(vec![issue]))?;
    let out = records::record_form(&state.pipeline, &state.store, scope, &value, chrono::Utc::now()).await?;
    Ok(receipt(out, false))
}

/// The current directive of a consent.
#[utoipa::path(get, path = "/api/v1/consents/{id}", tag = "consent",
    params(("id" = String, Path, description = "consent id")),
    responses((status = 200, description = "the directive"), (status = 404, description = "no such consent for this client", body = OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/consents/{id}")]
pub async fn get_consent(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let stored = records::visible(&state.store, who.intake_scope()?, &path).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "source_id": stored.source_id, "directive": stored.directive })))
}

/// Revoke a consent: a new, inactive version; every later disclosure sees it at once.
#[utoipa::path(post, path = "/api/v1/consents/{id}/$revoke", tag = "consent",
    params(("id" = String, Path, description = "consent id")),
    responses((status = 200, description = "revoked (or already inactive: duplicate)", body = ConsentReceipt),
        (status = 404, description = "no such consent for this client", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/consents/{id}/$revoke")]
pub async fn revoke_consent(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let out = records::revoke(&state.pipeline, &state.store, who.intake_scope()?, &path, chrono::Utc::now()).await?;
    Ok(receipt(out, true))
}

async fn fhir_answer(state: &AppState, out: ConsentOutcome) -> Result<HttpResponse, ApiError> {
    let (id, version, created) = match out {
        ConsentOutcome::Created { id, version } | ConsentOutcome::Amended { id, version } => (id, version, true),
        ConsentOutcome::Duplicate { id, version } => (id, version, false),
    };
    let stored =
        state.store.fhir_read("Consent", &id, None).await?.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("Consent/{id} vanished")))?;
    let mut res = if created { HttpResponse::Created() } else { HttpResponse::Ok() };
    res.insert_header((header::LOCATION, format!("/fhir/Consent/{id}/_history/{version}")))
        .insert_header(header::ETag(header::EntityTag::new_weak(stored.version_id.to_string())));
    Ok(res.content_type(crate::fhir::FHIR_JSON).body(stored.content))
}

async fn consent_body(state: &AppState, req: &HttpRequest, payload: web::Payload) -> Result<serde_json::Value, ApiError> {
    super::extractors::json_body(req, payload, state.settings.server.max_body_bytes).await
}

/// Record a FHIR R4 Consent (scope patient-privacy). Answers the stored Consent (201), or 200
/// when it states exactly what is stored already.
#[utoipa::path(post, path = "/fhir/Consent", tag = "consent",
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "A FHIR R4 Consent"),
    responses((status = 201, description = "recorded"), (status = 422, description = "refused; one issue per problem with its path", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/fhir/Consent")]
pub async fn fhir_post_consent(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let scope = who.intake_scope()?;
    let value = consent_body(&state, &req, payload).await?;
    let out = records::record_fhir(&state.pipeline, &state.store, scope, &value, None, chrono::Utc::now()).await?;
    fhir_answer(&state, out).await
}

/// Update a recorded Consent (a new version; `status: inactive` revokes).
#[utoipa::path(put, path = "/fhir/Consent/{id}", tag = "consent",
    params(("id" = String, Path, description = "consent id")),
    request_body(content = serde_json::Value, content_type = "application/fhir+json", description = "A FHIR R4 Consent"),
    responses((status = 201, description = "new version recorded"), (status = 200, description = "unchanged"),
        (status = 404, description = "no such consent for this client", body = OperationOutcome), (status = 422, description = "refused", body = OperationOutcome)),
    security(("bearer" = [])))]
#[actix_web::put("/fhir/Consent/{id}")]
pub async fn fhir_put_consent(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let scope = who.intake_scope()?;
    let value = consent_body(&state, &req, payload).await?;
    let out = records::record_fhir(&state.pipeline, &state.store, scope, &value, Some(&path), chrono::Utc::now()).await?;
    fhir_answer(&state, out).await
}
