//! `/api/v1/sessions/{id}/billing` and `/api/v1/billing/$evaluate`: the billing decision for a
//! stored session or a draft (finance and admins for any LEA, submitters for their own).

use actix_web::{HttpRequest, HttpResponse, get, post, web};

use super::extractors::{json_body, request_id};
use crate::auth::Principal;
use crate::billing::{BillingDecision, Subject};
use crate::error::ApiError;
use crate::fhir::OperationOutcome;
use crate::pipeline::{BillingSubjectError, Submitter};
use crate::startup::AppState;

async fn decide(state: &AppState, subject: &Subject) -> Result<BillingDecision, ApiError> {
    let today = chrono::Utc::now().date_naive();
    let p = &state.pipeline;
    Ok(crate::billing::decide_subject(&state.store, &p.consent, &p.billing, subject, today).await?)
}

fn answer(subject: &Subject, d: BillingDecision) -> HttpResponse {
    let mut body = serde_json::json!({ "session_id": subject.session_id });
    if let Some(v) = subject.version {
        body["session_version"] = v.into();
    }
    if let (Some(obj), Ok(serde_json::Value::Object(rest))) = (body.as_object_mut(), serde_json::to_value(d)) {
        obj.extend(rest);
    }
    HttpResponse::Ok().json(body)
}

/// The billing decision for a session's current version: program, codes, units, modifiers,
/// place of service and expected amount, or every reason it is not billable.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/billing", tag = "billing", params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "the decision"), (status = 404, body = OperationOutcome),
        (status = 422, description = "the stored record no longer validates under the current configuration", body = OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/sessions/{id}/billing")]
pub async fn session_billing(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let scope = who.billing_scope()?;
    let missing = || ApiError::NotFound(format!("no session {path} visible to this client"));
    let subject = match state.pipeline.billing_stored(&state.store, &path).await {
        Ok(Some(s)) if scope.is_none_or(|lea| lea == s.valid.lea()) => s,
        Ok(_) => return Err(missing()),
        Err(BillingSubjectError::Store(e)) => return Err(e.into()),
        Err(BillingSubjectError::Invalid(issues)) => return Err(ApiError::Unprocessable(issues)),
    };
    let d = decide(&state, &subject).await?;
    Ok(answer(&subject, d))
}

/// The billing decision for a draft session (the body is a session record as for
/// `POST /api/v1/sessions`), without storing it: a county checks before it submits.
#[utoipa::path(post, path = "/api/v1/billing/$evaluate", tag = "billing",
    request_body(content = serde_json::Value, content_type = "application/json", description = "A session record (schemas/session.schema.json)"),
    responses((status = 200, description = "the decision"),
        (status = 422, description = "the draft is not a valid session; one issue per problem with its JSON pointer", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/billing/$evaluate")]
pub async fn evaluate(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let scope = who.billing_scope()?;
    let value = json_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let submitter = Submitter { client_id: who.client_id.clone(), lea: scope.map(str::to_string), request_id: request_id(&req) };
    let subject = state.pipeline.billing_draft(&submitter, &value, chrono::Utc::now()).map_err(ApiError::Unprocessable)?;
    let d = decide(&state, &subject).await?;
    Ok(answer(&subject, d))
}
