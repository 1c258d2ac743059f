//! FHIR Subscriptions for partners (`/fhir/Subscription`) and the admins' view of undeliverable
//! notifications (`/api/v1/subscriptions/...`). Delivery itself is [`crate::notify`].

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use serde_json::{Value, json};

use crate::auth::{PURPOSE_HEADER, Principal, Role};
use crate::error::ApiError;
use crate::fhir::{FHIR_JSON, IssueCode, OutcomeIssue};
use crate::startup::AppState;
use crate::store::SubscriptionRow;

/// The subscription, if this client may see it (its own; admins: any).
async fn visible(state: &AppState, who: &Principal, id: &str) -> Result<SubscriptionRow, ApiError> {
    match state.store.subscription(id).await? {
        Some(s) if who.role == Role::Admin || (who.role == Role::Partner && s.client_id == who.client_id) => Ok(s),
        _ => Err(ApiError::NotFound(format!("Subscription/{id} is not known"))),
    }
}

/// Create a subscription (`POST /fhir/Subscription`, partners).
#[utoipa::path(post, path = "/fhir/Subscription", tag = "subscriptions",
    responses((status = 201, description = "created, active"), (status = 400, description = "unsupported criteria or channel", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[post("/fhir/Subscription")]
pub async fn create(state: web::Data<AppState>, who: Principal, req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let org = match (who.role, who.org.as_deref()) {
        (Role::Partner, Some(org)) => org.to_string(),
        _ => return Err(ApiError::Forbidden("subscriptions are for FQHC partner clients".into())),
    };
    who.require_scope("Encounter", crate::auth::scope::Interaction::Read)?;
    let purpose = who.purpose(req.headers().get(PURPOSE_HEADER).map(|v| v.to_str().unwrap_or("?")))?;
    let doc = super::extractors::json_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let cfg = &state.settings.subscriptions;
    let wanted = crate::notify::parse_subscription(&doc, &state.pipeline.search, cfg.allow_http_endpoints).map_err(ApiError::BadRequest)?;
    let active = state.store.subscriptions(Some(&who.client_id)).await?.into_iter().filter(|s| s.status != "off").count();
    if active as u64 >= cfg.max_per_client {
        return Err(ApiError::Unprocessable(vec![OutcomeIssue::error(
            IssueCode::BusinessRule,
            format!("this client already has {active} subscriptions (the most allowed); delete one first"),
        )]));
    }
    let now = crate::store::now_us();
    let row = SubscriptionRow {
        id: uuid::Uuid::new_v4().to_string(),
        client_id: who.client_id.clone(),
        org_id: org,
        purpose: purpose.code().to_string(),
        criteria: wanted.criteria,
        endpoint: wanted.endpoint,
        headers: serde_json::to_string(&wanted.headers).map_err(|e| ApiError::Internal(e.into()))?,
        payload: wanted.payload,
        status: "active".into(),
        error: None,
        reason: wanted.reason,
        events: 0,
        created_us: now,
        updated_us: now,
    };
    state.store.subscription_insert(&row).await?;
    tracing::info!(subscription = %row.id, "subscription created");
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("{}/Subscription/{}", super::fhir::base_url(&req), row.id)))
        .content_type(FHIR_JSON)
        .body(crate::notify::render(&row).to_string()))
}

/// Read a subscription (`GET /fhir/Subscription/{id}`: its partner, or an admin).
#[utoipa::path(get, path = "/fhir/Subscription/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "the Subscription"), (status = 404, description = "not known")), security(("bearer" = [])))]
#[get("/fhir/Subscription/{id}")]
pub async fn read(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let s = visible(&state, &who, &path).await?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(crate::notify::render(&s).to_string()))
}

/// List subscriptions (`GET /fhir/Subscription`: a partner's own; admins: all that are not off).
#[utoipa::path(get, path = "/fhir/Subscription", tag = "subscriptions", responses((status = 200, description = "searchset Bundle")), security(("bearer" = [])))]
#[get("/fhir/Subscription")]
pub async fn search(state: web::Data<AppState>, who: Principal, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let rows = match who.role {
        Role::Admin => state.store.subscriptions(None).await?,
        Role::Partner => state.store.subscriptions(Some(&who.client_id)).await?,
        r => return Err(ApiError::Forbidden(format!("a {} client may not read subscriptions", r.as_str()))),
    };
    let base = super::fhir::base_url(&req);
    let entries: Vec<Value> = rows
        .iter()
        .map(|s| json!({ "fullUrl": format!("{base}/Subscription/{}", s.id), "resource": crate::notify::render(s), "search": { "mode": "match" } }))
        .collect();
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(
        json!({ "resourceType": "Bundle", "type": "searchset", "total": entries.len(), "link": [{ "relation": "self", "url": format!("{base}/Subscription") }], "entry": entries })
            .to_string(),
    ))
}

/// Stop a subscription (`DELETE /fhir/Subscription/{id}`): its status becomes `off`; nothing
/// more is queued or sent for it.
#[utoipa::path(delete, path = "/fhir/Subscription/{id}", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 204, description = "off"), (status = 404, description = "not known")), security(("bearer" = [])))]
#[delete("/fhir/Subscription/{id}")]
pub async fn remove(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let s = visible(&state, &who, &path).await?;
    state.store.subscription_set_status(&s.id, None, "off", None, crate::store::now_us()).await?;
    Ok(HttpResponse::NoContent().finish())
}

fn admin(who: &Principal) -> Result<(), ApiError> {
    if who.role == Role::Admin { Ok(()) } else { Err(ApiError::Forbidden("admin clients only".into())) }
}

/// Query of the dead-letter listing.
#[derive(Debug, serde::Deserialize)]
pub struct DeadQuery {
    /// Only this subscription's.
    subscription: Option<String>,
    /// Most rows (default 100, at most 1000).
    limit: Option<i64>,
}

/// Notifications that could not be delivered within the retry window (admins).
#[utoipa::path(get, path = "/api/v1/subscriptions/dead-letters", tag = "subscriptions",
    params(("subscription" = Option<String>, Query, description = "only this subscription's"), ("limit" = Option<i64>, Query, description = "most rows")),
    responses((status = 200, description = "dead notifications, newest first")), security(("bearer" = [])))]
#[get("/api/v1/subscriptions/dead-letters")]
pub async fn dead_letters(state: web::Data<AppState>, who: Principal, q: web::Query<DeadQuery>) -> Result<HttpResponse, ApiError> {
    admin(&who)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = state.store.deliveries("dead", q.subscription.as_deref(), limit).await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|d| {
            json!({
                "subscription": d.subscription_id, "event_number": d.event_number,
                "resource": format!("{}/{}", d.resource_type, d.resource_id), "version": d.version_id,
                "attempts": d.attempts, "last_error": d.last_error,
                "queued_at": chrono::DateTime::from_timestamp_micros(d.created_us).map(|t| t.to_rfc3339()),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "dead_letters": items })))
}

/// Re-queue a subscription's dead notifications (admins): they are retried again, in order,
/// with a fresh retry window.
#[utoipa::path(post, path = "/api/v1/subscriptions/{id}/$redrive", tag = "subscriptions", params(("id" = String, Path, description = "Subscription id")),
    responses((status = 200, description = "how many were re-queued")), security(("bearer" = [])))]
#[post("/api/v1/subscriptions/{id}/$redrive")]
pub async fn redrive(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    admin(&who)?;
    let s = visible(&state, &who, &path).await?;
    let n = state.store.deliveries_redrive(&s.id, crate::store::now_us()).await?;
    tracing::info!(subscription = %s.id, redriven = n, "dead notifications re-queued");
    Ok(HttpResponse::Ok().json(json!({ "subscription": s.id, "redriven": n })))
}
