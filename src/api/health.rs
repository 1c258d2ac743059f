//! Liveness and readiness probes (no authentication).

use actix_web::{HttpResponse, get, web};

use crate::error::ApiError;
use crate::startup::AppState;

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "health", responses((status = 200, description = "alive")))]
#[get("/health/live")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// The process can reach its database.
#[utoipa::path(get, path = "/health/ready", tag = "health",
    responses((status = 200, description = "ready"), (status = 503, description = "database unreachable", body = crate::fhir::OperationOutcome)))]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.store.ping().await.map_err(|e| ApiError::Unavailable(e.into()))?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready", "database": state.store.backend() })))
}
