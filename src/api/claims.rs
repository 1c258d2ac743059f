//! Claims for finance staff and admins: `/api/v1/claims` (lifecycle and lines),
//! `/api/v1/claims/batches` (X12 837 batches) and the FHIR R4 `Claim` at `/fhir/Claim`.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::claims::batch::{self, BatchError, BatchSummary};
use crate::error::ApiError;
use crate::fhir::{FHIR_JSON, IssueCode, OperationOutcome, OutcomeIssue};
use crate::startup::AppState;
use crate::store::{ClaimFilter, ClaimRow};

/// A claim in a listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClaimView {
    /// Claim id (also the FHIR `Claim` id).
    pub id: String,
    /// CLM01, echoed by the payer in 835 CLP01.
    pub claim_number: String,
    /// The session and the version it bills.
    pub session_id: String,
    /// Session version.
    pub session_version: i64,
    /// Program (funding path).
    pub program: String,
    /// Billing provider.
    pub biller: String,
    /// Payer.
    pub payer: String,
    /// 1 original, 7 replacement, 8 void.
    pub frequency: String,
    /// Lifecycle status.
    pub status: String,
    /// Whether it is the session's active claim.
    pub active: bool,
    /// The claim it replaces or voids.
    pub replaces: Option<String>,
    /// The payer's claim number (835 CLP07).
    pub payer_claim_number: Option<String>,
    /// Date of service.
    pub service_date: String,
    /// Charge in cents.
    pub charge_cents: i64,
    /// Expected payment in cents.
    pub expected_cents: i64,
    /// The X12 batch it went out in.
    pub batch_id: Option<String>,
}

impl From<&ClaimRow> for ClaimView {
    fn from(c: &ClaimRow) -> Self {
        ClaimView {
            id: c.id.clone(),
            claim_number: c.pcn.clone(),
            session_id: c.session_id.clone(),
            session_version: c.session_version,
            program: c.program.clone(),
            biller: c.biller.clone(),
            payer: c.payer.clone(),
            frequency: c.frequency.clone(),
            status: c.status.clone(),
            active: c.active == 1,
            replaces: c.replaces.clone(),
            payer_claim_number: c.payer_claim_number.clone(),
            service_date: c.service_date.clone(),
            charge_cents: c.charge_cents,
            expected_cents: c.expected_cents,
            batch_id: c.batch_id.clone(),
        }
    }
}

/// Query of a claim listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ClaimQuery {
    /// Only this session's claims.
    pub session: Option<String>,
    /// Only claims in this status.
    pub status: Option<String>,
    /// Only this batch.
    pub batch: Option<String>,
    /// Only this school site's claims (newest date of service first).
    pub site: Option<String>,
    /// At most this many (default 100, at most 1,000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<i64>,
}

/// A listing's `_count`: 100 by default, at most 1,000.
pub(crate) fn limit(count: Option<i64>) -> Result<i64, ApiError> {
    match count {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(IssueCode::Value, "_count", "`_count` must be a whole number from 1 to 1000")),
    }
}

/// Claims, newest first (finance, admin).
#[utoipa::path(get, path = "/api/v1/claims", tag = "claims", params(ClaimQuery),
    responses((status = 200, body = [ClaimView]), (status = 403, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/claims")]
pub async fn list(state: web::Data<AppState>, who: Principal, q: web::Query<ClaimQuery>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let f =
        ClaimFilter { session_id: q.session.as_deref(), status: q.status.as_deref(), batch_id: q.batch.as_deref(), ..Default::default() };
    let rows = match q.site.as_deref() {
        Some(site) if q.session.is_none() && q.status.is_none() && q.batch.is_none() => {
            state.store.claims_of_site(site, limit(q.count)?).await?
        }
        Some(_) => {
            return Err(ApiError::bad_request(IssueCode::NotSupported, "site", "`site` cannot be combined with session, status or batch"));
        }
        None => state.store.claims(&f, limit(q.count)?).await?,
    };
    Ok(HttpResponse::Ok().json(rows.iter().map(ClaimView::from).collect::<Vec<_>>()))
}

/// One claim with its lines and every lifecycle transition (finance, admin).
#[utoipa::path(get, path = "/api/v1/claims/{id}", tag = "claims", params(("id" = String, Path, description = "claim id")),
    responses((status = 200, description = "the claim, its lines and events"), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/claims/{id}")]
pub async fn read(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let c = state.store.claim(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no claim {path}")))?;
    let lines = state.store.claim_lines(&c.id).await?;
    let events = state.store.claim_events(&c.id).await?;
    let mut body = serde_json::to_value(ClaimView::from(&c)).unwrap_or(Value::Null);
    body["lines"] = lines
        .iter()
        .map(|l| {
            json!({ "line": l.line_no, "line_id": l.line_id, "revenue_code": l.revenue_code, "code": l.code,
                "modifiers": if l.modifiers.is_empty() { Vec::new() } else { l.modifiers.split(':').collect() },
                "units": l.units, "charge_cents": l.charge_cents, "expected_cents": l.expected_cents, "informational": l.informational })
        })
        .collect();
    body["events"] = events
        .iter()
        .map(|e| json!({ "at": crate::fhir::instant(e.at_us), "actor": e.actor, "from": e.from_status, "to": e.to_status, "reason": e.reason }))
        .collect();
    let (remittances, balance, exceptions) = super::remit::claim_remittance(&state, &c.id).await?;
    body["balance_cents"] = json!(balance);
    body["remittances"] = json!(remittances);
    body["exceptions"] = json!(exceptions);
    body["fhir"] = json!(format!("Claim/{}", c.id));
    Ok(HttpResponse::Ok().json(body))
}

fn batch_error(e: BatchError) -> ApiError {
    match e {
        BatchError::Store(e) => e.into(),
        BatchError::Config { key, message } => {
            ApiError::Unprocessable(vec![OutcomeIssue::error(IssueCode::BusinessRule, format!("configuration {key}: {message}"))])
        }
        e @ BatchError::X12 { .. } => ApiError::Unprocessable(vec![OutcomeIssue::error(IssueCode::Value, e.to_string())]),
        BatchError::Corrupt(m) => ApiError::Internal(anyhow::anyhow!(m)),
    }
}

/// Groups the ready claims by payer and billing provider into X12 837 interchanges (837P for
/// fee-schedule programs, 837I for FQHC PPS visits) with persisted control numbers (finance,
/// admin). 201 with the batches built; 200 when none was. A claim that cannot be written is put
/// on hold (`held`, with the reason); a group with incomplete configuration is reported in
/// `errors` and the other groups are built.
#[utoipa::path(post, path = "/api/v1/claims/batches", tag = "claims",
    responses((status = 201, body = crate::claims::batch::Built), (status = 200, description = "no batch was built", body = crate::claims::batch::Built),
        (status = 422, description = "configuration the 837 needs is missing, or a value X12 cannot carry", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/claims/batches")]
pub async fn build_batches(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let built = batch::build(&state.store, &state.pipeline, &format!("client:{}", who.client_id), 5000).await.map_err(batch_error)?;
    let mut res = if built.batches.is_empty() { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok(res.json(built))
}

/// Query of a batch listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// Only batches in this status: built, queued, submitted or failed (the dead letters).
    pub status: Option<String>,
    /// At most this many (default 100, at most 1,000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<i64>,
}

/// Batches, newest first (finance, admin); `status=failed` lists those whose submission gave up.
#[utoipa::path(get, path = "/api/v1/claims/batches", tag = "claims", params(BatchQuery),
    responses((status = 200, body = [BatchSummary])), security(("bearer" = [])))]
#[get("/api/v1/claims/batches")]
pub async fn list_batches(state: web::Data<AppState>, who: Principal, q: web::Query<BatchQuery>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let rows = state.store.batches(q.status.as_deref(), limit(q.count)?).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(|b| BatchSummary::of(b, Vec::new())).collect::<Vec<_>>()))
}

/// Sends a failed batch (or one built before its payer had a clearinghouse) again: the same
/// file, the same control numbers (finance, admin).
#[utoipa::path(post, path = "/api/v1/claims/batches/{id}/$resubmit", tag = "claims", params(("id" = String, Path, description = "batch id")),
    responses((status = 202, body = BatchSummary), (status = 404, body = OperationOutcome),
        (status = 409, description = "the batch is queued or submitted already", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/claims/batches/{id}/$resubmit")]
pub async fn resubmit(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let b = state.store.batch(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no batch {path}")))?;
    if !state.settings.billing.clearinghouses.iter().any(|c| c.payer == b.payer) {
        return Err(ApiError::Unprocessable(vec![OutcomeIssue::error(
            IssueCode::BusinessRule,
            format!("no clearinghouse is configured for payer {} (billing.clearinghouses)", b.payer),
        )]));
    }
    if !state.store.batch_requeue(&b.id, crate::store::now_us()).await? {
        return Err(ApiError::Conflict(format!("batch {} is {}; only failed or built batches are sent again", b.id, b.status)));
    }
    let b = state.store.batch(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no batch {path}")))?;
    Ok(HttpResponse::Accepted().json(BatchSummary::of(&b, Vec::new())))
}

/// Puts a rejected claim back in the queue as it is (finance, admin): for a rejection that was
/// not the claim's fault (a configuration or clearinghouse problem since fixed). The payer never
/// took it, so it goes again under its own claim number. A claim whose session changed is
/// replaced by the worker instead.
#[utoipa::path(post, path = "/api/v1/claims/{id}/$requeue", tag = "claims", params(("id" = String, Path, description = "claim id")),
    responses((status = 200, body = ClaimView), (status = 404, body = OperationOutcome),
        (status = 409, description = "the claim is not an active rejected claim", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/claims/{id}/$requeue")]
pub async fn requeue(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let c = state.store.claim(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no claim {path}")))?;
    let actor = format!("client:{}", who.client_id);
    let ok = c.active == 1
        && state
            .store
            .claim_transition(
                &c.id,
                &["rejected", "held"],
                "ready",
                "put back in the queue by finance",
                &actor,
                None,
                crate::store::now_us(),
            )
            .await?;
    if !ok {
        return Err(ApiError::Conflict(format!(
            "claim {} is {}{}; only an active rejected or held claim is queued again",
            c.pcn,
            c.status,
            if c.active == 1 { "" } else { " and retired" }
        )));
    }
    let c = state.store.claim(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no claim {path}")))?;
    Ok(HttpResponse::Ok().json(ClaimView::from(&c)))
}

/// One batch (finance, admin).
#[utoipa::path(get, path = "/api/v1/claims/batches/{id}", tag = "claims", params(("id" = String, Path, description = "batch id")),
    responses((status = 200, body = BatchSummary), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/claims/batches/{id}")]
pub async fn read_batch(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let b = state.store.batch(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no batch {path}")))?;
    let claims = state.store.claims(&ClaimFilter { batch_id: Some(&b.id), ..Default::default() }, 10_000).await?;
    Ok(HttpResponse::Ok().json(BatchSummary::of(&b, claims.iter().map(|c| c.pcn.clone()).collect())))
}

/// A batch's X12 837 file (finance, admin).
#[utoipa::path(get, path = "/api/v1/claims/batches/{id}/x12", tag = "claims", params(("id" = String, Path, description = "batch id")),
    responses((status = 200, description = "the interchange", content_type = "application/edi-x12"), (status = 404, body = OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/claims/batches/{id}/x12")]
pub async fn batch_x12(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let b = state.store.batch(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no batch {path}")))?;
    Ok(HttpResponse::Ok()
        .content_type("application/edi-x12")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"837-{:09}.x12\"", b.isa_control)))
        .body(b.x12))
}

/// The FHIR Claim as stored, with its status as of now (a retired claim reads `cancelled`).
fn fhir_of(c: &ClaimRow) -> Result<Value, ApiError> {
    let mut v: Value =
        serde_json::from_str(&c.resource).map_err(|e| ApiError::Internal(anyhow::anyhow!("claim {} is unreadable: {e}", c.id)))?;
    if c.active == 0 || c.frequency == "8" {
        v["status"] = json!("cancelled");
    }
    Ok(v)
}

/// Read a FHIR R4 Claim (finance, admin).
#[get("/fhir/Claim/{id}")]
pub async fn fhir_read(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let c = state.store.claim(&path).await?.ok_or_else(|| ApiError::NotFound(format!("Claim/{path} is not known")))?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(fhir_of(&c)?.to_string()))
}

/// Search FHIR R4 Claims (finance, admin): `patient`, `identifier` (the claim number),
/// `encounter` (the session), `_count`.
#[get("/fhir/Claim")]
pub async fn fhir_search(state: web::Data<AppState>, who: Principal, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(IssueCode::Structure, "query", format!("the query string could not be read: {e}")))?;
    let (mut patient, mut pcn, mut session, mut count) = (None, None, None, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "patient" => patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_string()),
            "identifier" => pcn = Some(v.rsplit('|').next().unwrap_or(v).to_string()),
            "encounter" => session = Some(v.strip_prefix("Encounter/").unwrap_or(v).to_string()),
            "_count" => {
                count = Some(v.parse().map_err(|_| ApiError::bad_request(IssueCode::Value, "_count", "`_count` must be a whole number"))?)
            }
            _ => {
                return Err(ApiError::bad_request(
                    IssueCode::NotSupported,
                    k,
                    format!("unknown parameter `{k}`; Claim supports patient, identifier, encounter, _count"),
                ));
            }
        }
    }
    let f = ClaimFilter { patient_id: patient.as_deref(), pcn: pcn.as_deref(), session_id: session.as_deref(), ..Default::default() };
    let rows = state.store.claims(&f, limit(count)?).await?;
    let base = crate::api::fhir::base_url(&req);
    let mut entries = Vec::with_capacity(rows.len());
    for c in &rows {
        entries.push(json!({ "fullUrl": format!("{base}/Claim/{}", c.id), "resource": fhir_of(c)?, "search": { "mode": "match" } }));
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{base}/Claim?{}", req.query_string()) }], "entry": entries });
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bundle.to_string()))
}

/// Ingests an X12 999 or 277CA acknowledgement (the raw file as the body; finance, admin):
/// claims move to `accepted` or `rejected` with the reasons, and a 277CA's payer claim number
/// is kept for later replacements. The same file again changes nothing.
#[utoipa::path(post, path = "/api/v1/acks", tag = "claims",
    request_body(content = String, content_type = "application/edi-x12", description = "An X12 999 or 277CA interchange"),
    responses((status = 200, body = crate::claims::acks::AckReport),
        (status = 422, description = "not a readable 999 / 277 interchange; names the segment and element", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/acks")]
pub async fn post_acks(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let body = super::extractors::read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    match crate::claims::acks::ingest(&state.store, &body, &format!("client:{}", who.client_id)).await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(crate::claims::acks::AckError::Store(e)) => Err(e.into()),
        Err(e) => Err(ApiError::Unprocessable(vec![OutcomeIssue::error(IssueCode::Structure, e.to_string())])),
    }
}
