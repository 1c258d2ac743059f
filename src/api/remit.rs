//! Finance: X12 835 remittances (`/api/v1/remittances`), the exceptions queue, FHIR
//! `ClaimResponse` / `PaymentReconciliation`, reports (`/api/v1/reports/…`, JSON or CSV) and the
//! dashboard's static files (`/finance`). Finance and admin clients only (the page itself holds
//! no data: it signs in with a finance token and calls the report API).

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::auth::Principal;
use crate::error::ApiError;
use crate::fhir::{FHIR_JSON, IssueCode, OperationOutcome, OutcomeIssue};
use crate::remit::reports::{self, Labels};
use crate::remit::{self as remit_mod, RemitError, RemitReport};
use crate::startup::AppState;

use super::claims::limit;
use crate::store::{ExceptionRow, PaymentRow, RemittanceRow, ReportFilter, Store};

fn remit_error(e: RemitError) -> ApiError {
    match e {
        RemitError::Store(e) => e.into(),
        RemitError::Invalid(problems) => ApiError::Unprocessable(
            problems
                .iter()
                .map(|p| {
                    let issue = OutcomeIssue::error(IssueCode::Structure, p.to_string());
                    if p.segment > 0 {
                        let at = match &p.element {
                            Some(el) => format!("segment {} ({}) {el}", p.segment, p.id),
                            None => format!("segment {} ({})", p.segment, p.id),
                        };
                        issue.at_expression(at)
                    } else {
                        issue
                    }
                })
                .collect(),
        ),
    }
}

/// Posts an X12 835 remittance (the raw file as the body; finance, admin). The file is checked
/// first: a syntax or envelope error, an amount that does not parse, or a payment without a
/// TRN02 refuses the whole file (422, each problem with its segment number, id and element)
/// and nothing is posted. Each payment (transaction set) is posted in one transaction; the same
/// payer + TRN02 again is reported as `duplicate` and changes nothing.
#[utoipa::path(post, path = "/api/v1/remittances", tag = "finance",
    request_body(content = String, content_type = "application/edi-x12", description = "An X12 835 (005010X221A1) interchange"),
    responses((status = 200, body = RemitReport, description = "what each payment did"),
        (status = 422, description = "not a postable 835; names segment and element", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/remittances")]
pub async fn post_remittance(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let body = super::extractors::read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let actor = format!("client:{}", who.client_id);
    let report =
        remit_mod::ingest(&state.store, &state.pipeline.remit, || Ok(&body[..]), &actor, &mut |_| {}).await.map_err(remit_error)?;
    Ok(HttpResponse::Ok().json(report))
}

/// Query of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CountQuery {
    /// At most this many (default 100, at most 1,000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<i64>,
}

/// Payments posted, newest first (finance, admin).
#[utoipa::path(get, path = "/api/v1/remittances", tag = "finance", params(CountQuery),
    responses((status = 200, body = [remit_mod::PaymentSummary])), security(("bearer" = [])))]
#[get("/api/v1/remittances")]
pub async fn list_remittances(state: web::Data<AppState>, who: Principal, q: web::Query<CountQuery>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let rows = state.store.remittances(limit(q.count)?).await?;
    Ok(HttpResponse::Ok().json(rows.iter().map(remit_mod::summary_of).collect::<Vec<_>>()))
}

/// A claim payment as shown to finance (with code texts).
async fn payment_views(state: &AppState, payments: &[PaymentRow]) -> Result<Vec<Value>, ApiError> {
    let codes = &state.pipeline.remit;
    let ids: Vec<&str> = payments.iter().map(|p| p.id.as_str()).collect();
    let lines = state.store.payment_lines(&ids).await?;
    let ledger = state.store.ledger_of_payments(&ids).await?;
    let mut remittances: std::collections::HashMap<String, Option<RemittanceRow>> = std::collections::HashMap::new();
    let mut out = Vec::with_capacity(payments.len());
    let remarks = |s: &str| -> Vec<Value> {
        s.split(':').filter(|c| !c.is_empty()).map(|c| json!({ "code": c, "description": codes.rarc(c) })).collect()
    };
    for p in payments {
        if !remittances.contains_key(&p.remittance_id) {
            remittances.insert(p.remittance_id.clone(), state.store.remittance(&p.remittance_id).await?);
        }
        let rem = remittances.get(&p.remittance_id).and_then(Option::as_ref);
        let adj = |line: Option<i64>| -> Vec<Value> {
            ledger
                .iter()
                .filter(|e| e.payment_id == p.id && e.line_no == line && e.kind == "adjustment")
                .map(|e| {
                    let reason = e.reason.clone().unwrap_or_default();
                    json!({ "group": e.group_code, "carc": reason, "description": codes.carc(&reason).0, "amount_cents": e.amount_cents, "quantity": e.quantity })
                })
                .collect()
        };
        let (status_text, outcome) = codes.status(&p.status);
        out.push(json!({
            "payment_id": p.id,
            "remittance_id": p.remittance_id,
            "trace_number": rem.map(|r| r.trace_number.clone()),
            "payment_date": rem.and_then(|r| r.payment_date.clone()),
            "claim_id": p.claim_id,
            "claim_number": p.pcn,
            "status": p.status,
            "status_text": status_text,
            "reversal": outcome == crate::remit::codes::ClaimOutcome::Reversal,
            "charge_cents": p.charge_cents,
            "paid_cents": p.paid_cents,
            "patient_responsibility_cents": p.patient_responsibility_cents,
            "payer_claim_number": p.payer_claim_number,
            "adjustments": adj(None),
            "remarks": remarks(&p.remarks),
            "lines": lines.iter().filter(|l| l.payment_id == p.id).map(|l| json!({
                "line": l.line_no,
                "matched_line": l.claim_line_no,
                "matched_by": l.matched_by,
                "code": l.procedure_code,
                "modifiers": l.modifiers.split(':').filter(|m| !m.is_empty()).collect::<Vec<_>>(),
                "revenue_code": l.revenue_code,
                "units": l.units,
                "service_date": l.service_date,
                "line_id": l.line_id,
                "charge_cents": l.charge_cents,
                "paid_cents": l.paid_cents,
                "allowed_cents": l.allowed_cents,
                "adjustments": adj(Some(l.line_no)),
                "remarks": remarks(&l.remarks),
            })).collect::<Vec<_>>(),
            "fhir": p.claim_id.as_ref().map(|_| format!("ClaimResponse/{}", p.id)),
        }));
    }
    Ok(out)
}

/// The 835 payments posted to a claim, its balance and its exceptions (for the claim view).
pub async fn claim_remittance(state: &AppState, claim_id: &str) -> Result<(Vec<Value>, Option<i64>, Vec<ExceptionRow>), ApiError> {
    let payments = state.store.claim_payments(None, Some(claim_id), 1000).await?;
    let views = payment_views(state, &payments).await?;
    Ok((views, state.store.claim_balance(claim_id).await?, state.store.claim_exceptions(claim_id).await?))
}

/// One payment: totals, its claim payments (up to `_count`), PLB entries and exceptions
/// (finance, admin).
#[utoipa::path(get, path = "/api/v1/remittances/{id}", tag = "finance", params(("id" = String, Path, description = "payment id"), CountQuery),
    responses((status = 200, description = "the payment"), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/remittances/{id}")]
pub async fn read_remittance(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    q: web::Query<CountQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let r = state.store.remittance(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no remittance {path}")))?;
    let payments = state.store.claim_payments(Some(&r.id), None, limit(q.count)?).await?;
    let mut body = serde_json::to_value(remit_mod::summary_of(&r)).unwrap_or(Value::Null);
    body["claims"] = json!(payment_views(&state, &payments).await?);
    body["provider_adjustments"] = state
        .store
        .provider_ledger(&r.id)
        .await?
        .iter()
        .map(|p| {
            let (text, kind) = state.pipeline.remit.plb(&p.reason);
            json!({ "provider": p.provider, "fiscal_date": p.fiscal_date, "reason": p.reason, "description": text, "kind": kind,
                "reference": p.reference, "amount_cents": p.amount_cents })
        })
        .collect();
    body["exceptions"] = json!(state.store.remit_exceptions(None, Some(&r.id), 1000).await?);
    body["fhir"] = json!(format!("PaymentReconciliation/{}", r.id));
    Ok(HttpResponse::Ok().json(body))
}

/// Query of the exceptions queue.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExceptionQuery {
    /// open (default) | resolved | all.
    pub status: Option<String>,
    /// Only this payment's.
    pub remittance: Option<String>,
    /// At most this many (default 100, at most 1,000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<i64>,
}

/// The exceptions queue, oldest first (finance, admin): unmatched claims and lines, denials,
/// imbalances.
#[utoipa::path(get, path = "/api/v1/remittances/exceptions", tag = "finance", params(ExceptionQuery),
    responses((status = 200, body = [ExceptionRow])), security(("bearer" = [])))]
#[get("/api/v1/remittances/exceptions")]
pub async fn list_exceptions(state: web::Data<AppState>, who: Principal, q: web::Query<ExceptionQuery>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let status = match q.status.as_deref() {
        None | Some("open") => Some("open"),
        Some("resolved") => Some("resolved"),
        Some("all") => None,
        Some(other) => {
            return Err(ApiError::bad_request(IssueCode::Value, "status", format!("status `{other}` is not open, resolved or all")));
        }
    };
    Ok(HttpResponse::Ok().json(state.store.remit_exceptions(status, q.remittance.as_deref(), limit(q.count)?).await?))
}

/// How finance resolves an exception.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolve {
    /// What was done, in words (kept with the exception).
    pub resolution: String,
    /// For an unmatched claim payment: the claim it belongs to (the payment and its ledger
    /// entries are posted to it).
    pub claim: Option<String>,
    /// Write off the claim's remaining balance (a ledger entry).
    #[serde(default)]
    pub write_off: bool,
    /// Close the claim (from `adjudicated`).
    #[serde(default)]
    pub close: bool,
}

/// Resolves an exception (finance, admin). 409 when it is not open.
#[utoipa::path(post, path = "/api/v1/remittances/exceptions/{id}/$resolve", tag = "finance", request_body = Resolve,
    params(("id" = String, Path, description = "exception id")),
    responses((status = 200, body = ExceptionRow), (status = 404, body = OperationOutcome), (status = 409, body = OperationOutcome),
        (status = 422, body = OperationOutcome)), security(("bearer" = [])))]
#[post("/api/v1/remittances/exceptions/{id}/$resolve")]
pub async fn resolve_exception(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<Resolve>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let x = state.store.remit_exception(&path).await?.ok_or_else(|| ApiError::NotFound(format!("no exception {path}")))?;
    if body.resolution.trim().is_empty() {
        return Err(ApiError::Unprocessable(vec![
            OutcomeIssue::error(IssueCode::Required, "say how the exception was resolved").at_pointer("/resolution"),
        ]));
    }
    if let Some(c) = body.claim.as_deref() {
        if x.kind != "unmatched-claim" {
            return Err(ApiError::Unprocessable(vec![
                OutcomeIssue::error(
                    IssueCode::BusinessRule,
                    format!("only an unmatched-claim exception takes a claim; this one is {}", x.kind),
                )
                .at_pointer("/claim"),
            ]));
        }
        if state.store.claim(c).await?.is_none() {
            return Err(ApiError::Unprocessable(vec![OutcomeIssue::error(IssueCode::Value, format!("no claim {c}")).at_pointer("/claim")]));
        }
    }
    let done = state
        .store
        .resolve_exception(
            &x.id,
            body.resolution.trim(),
            body.claim.as_deref(),
            body.write_off,
            body.close,
            &format!("client:{}", who.client_id),
            crate::store::now_us(),
        )
        .await?;
    if !done {
        return Err(ApiError::Conflict(format!("exception {} is not open", x.id)));
    }
    let x = state.store.remit_exception(&x.id).await?.ok_or_else(|| ApiError::NotFound(format!("no exception {path}")))?;
    Ok(HttpResponse::Ok().json(x))
}

async fn claim_response_of(state: &AppState, p: &PaymentRow) -> Result<Option<Value>, ApiError> {
    let Some(claim_id) = p.claim_id.as_deref() else { return Ok(None) };
    let (Some(claim), Some(rem)) = (state.store.claim(claim_id).await?, state.store.remittance(&p.remittance_id).await?) else {
        return Ok(None);
    };
    let lines = state.store.payment_lines(&[p.id.as_str()]).await?;
    let ledger = state.store.ledger_of_payments(&[p.id.as_str()]).await?;
    Ok(Some(crate::remit::fhir::claim_response(&state.pipeline.remit, &rem, p, &claim, &lines, &ledger)))
}

/// Read a FHIR R4 ClaimResponse: one claim payment of an 835 (finance, admin).
#[get("/fhir/ClaimResponse/{id}")]
pub async fn fhir_claim_response(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let missing = || ApiError::NotFound(format!("ClaimResponse/{path} is not known"));
    let p = state.store.claim_payment(&path).await?.ok_or_else(missing)?;
    let r = claim_response_of(&state, &p).await?.ok_or_else(missing)?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(r.to_string()))
}

fn fhir_query(req: &HttpRequest, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(IssueCode::Structure, "query", format!("the query string could not be read: {e}")))?;
    for (k, _) in &pairs {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::bad_request(
                IssueCode::NotSupported,
                k,
                format!("unknown parameter `{k}`; supported: {}", allowed.join(", ")),
            ));
        }
    }
    Ok(pairs)
}

fn count_of(pairs: &[(String, String)]) -> Result<i64, ApiError> {
    match pairs.iter().find(|(k, _)| k == "_count") {
        Some((_, v)) => {
            limit(Some(v.parse().map_err(|_| ApiError::bad_request(IssueCode::Value, "_count", "`_count` must be a whole number"))?))
        }
        None => limit(None),
    }
}

fn searchset(req: &HttpRequest, kind: &str, resources: Vec<Value>) -> HttpResponse {
    let base = crate::api::fhir::base_url(req);
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            json!({ "fullUrl": format!("{base}/{kind}/{id}"), "resource": r, "search": { "mode": "match" } })
        })
        .collect();
    let bundle = json!({ "resourceType": "Bundle", "type": "searchset", "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{base}/{kind}?{}", req.query_string()) }], "entry": entries });
    HttpResponse::Ok().content_type(FHIR_JSON).body(bundle.to_string())
}

/// Search FHIR R4 ClaimResponses (finance, admin): `request` (Claim/{id}), `_count`.
#[get("/fhir/ClaimResponse")]
pub async fn fhir_search_claim_responses(state: web::Data<AppState>, who: Principal, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let pairs = fhir_query(&req, &["request", "_count"])?;
    let Some((_, request)) = pairs.iter().find(|(k, _)| k == "request") else {
        return Err(ApiError::bad_request(IssueCode::Required, "request", "search ClaimResponse by `request` (Claim/{id})"));
    };
    let claim = request.strip_prefix("Claim/").unwrap_or(request);
    let payments = state.store.claim_payments(None, Some(claim), count_of(&pairs)?).await?;
    let mut out = Vec::with_capacity(payments.len());
    for p in &payments {
        if let Some(r) = claim_response_of(&state, p).await? {
            out.push(r);
        }
    }
    Ok(searchset(&req, "ClaimResponse", out))
}

async fn payment_reconciliation_of(state: &AppState, r: &RemittanceRow) -> Result<Value, ApiError> {
    let payments = state.store.claim_payments(Some(&r.id), None, i64::MAX).await?;
    let plb = state.store.provider_ledger(&r.id).await?;
    Ok(crate::remit::fhir::payment_reconciliation(&state.pipeline.remit, r, &payments, &plb))
}

/// Read a FHIR R4 PaymentReconciliation: one 835 payment (finance, admin).
#[get("/fhir/PaymentReconciliation/{id}")]
pub async fn fhir_payment_reconciliation(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let r = state.store.remittance(&path).await?.ok_or_else(|| ApiError::NotFound(format!("PaymentReconciliation/{path} is not known")))?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(payment_reconciliation_of(&state, &r).await?.to_string()))
}

/// Search FHIR R4 PaymentReconciliations, newest first (finance, admin): `_count`.
#[get("/fhir/PaymentReconciliation")]
pub async fn fhir_search_payment_reconciliations(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let pairs = fhir_query(&req, &["_count"])?;
    let rows = state.store.remittances(count_of(&pairs)?).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push(payment_reconciliation_of(&state, r).await?);
    }
    Ok(searchset(&req, "PaymentReconciliation", out))
}

/// Query of a report.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// payer | site | clinician | month | program (reconciliation, aging, pps-gap).
    pub by: Option<String>,
    /// First date of service (YYYY-MM-DD).
    pub from: Option<String>,
    /// Last date of service (YYYY-MM-DD).
    pub to: Option<String>,
    /// Aging: the day ages are counted to (default today).
    pub as_of: Option<String>,
    /// `csv` for CSV (or send `Accept: text/csv`).
    #[serde(rename = "_format")]
    #[param(rename = "_format")]
    pub format: Option<String>,
}

fn date_param(name: &str, v: Option<&str>) -> Result<Option<chrono::NaiveDate>, ApiError> {
    v.map(|s| {
        chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| ApiError::bad_request(IssueCode::Value, name, format!("`{name}` must be a date (YYYY-MM-DD), not {s:?}")))
    })
    .transpose()
}

fn filter(q: &ReportQuery) -> Result<ReportFilter, ApiError> {
    let from = date_param("from", q.from.as_deref())?;
    let to = date_param("to", q.to.as_deref())?;
    if let (Some(a), Some(b)) = (from, to)
        && a > b
    {
        return Err(ApiError::bad_request(IssueCode::Value, "from", "`from` is after `to`"));
    }
    Ok(ReportFilter { from: from.map(|d| d.to_string()), to: to.map(|d| d.to_string()), programs: None })
}

fn by(q: &ReportQuery, default: &str) -> Result<String, ApiError> {
    let by = q.by.clone().unwrap_or_else(|| default.to_string());
    if reports::dim(&by).is_none() {
        return Err(ApiError::bad_request(
            IssueCode::Value,
            "by",
            format!("`by` must be payer, site, clinician, month or program, not {by:?}"),
        ));
    }
    Ok(by)
}

fn wants_csv(req: &HttpRequest, q: &ReportQuery) -> bool {
    q.format.as_deref() == Some("csv")
        || req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("text/csv"))
}

/// Column orders of the CSV reports (the JSON fields, in the order a spreadsheet wants them).
const RECON_COLUMNS: &[&str] = &[
    "key",
    "label",
    "claims",
    "billed_cents",
    "expected_cents",
    "paid_cents",
    "contractual_cents",
    "patient_responsibility_cents",
    "denied_cents",
    "other_adjustment_cents",
    "outstanding_cents",
];
const AGING_COLUMNS: &[&str] = &[
    "key",
    "label",
    "claims",
    "days_0_30_cents",
    "days_31_60_cents",
    "days_61_90_cents",
    "days_91_120_cents",
    "days_over_120_cents",
    "outstanding_cents",
];
const DENIAL_COLUMNS: &[&str] = &["group", "carc", "description", "claims", "lines", "amount_cents", "remarks"];
const PPS_COLUMNS: &[&str] = &["key", "label", "visits", "expected_cents", "paid_cents", "gap_cents"];
const SUSTAINABILITY_COLUMNS: &[&str] = &[
    "site",
    "site_name",
    "month",
    "sessions",
    "billable_sessions",
    "billable_share_percent",
    "billable_minutes",
    "earned_cents",
    "paid_cents",
    "cost_cents",
    "margin_cents",
    "covered_percent",
    "not_billable",
];

/// A cell: text as is, numbers as written, lists as `a b; c d`.
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Object(o) => o.values().map(cell).collect::<Vec<_>>().join(" "),
                other => cell(other),
            })
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// A report as JSON, or its rows as CSV (`name.csv`, the columns in `columns`' order).
fn answer<T: Serialize, R: Serialize>(csv: bool, name: &str, report: &T, rows: &[R], columns: &[&str]) -> Result<HttpResponse, ApiError> {
    if !csv {
        return Ok(HttpResponse::Ok().json(report));
    }
    let internal = |e: &dyn std::fmt::Display| ApiError::Internal(anyhow::anyhow!("writing CSV: {e}"));
    let mut w = ::csv::Writer::from_writer(Vec::new());
    w.write_record(columns).map_err(|e| internal(&e))?;
    for r in rows {
        let v = serde_json::to_value(r).map_err(|e| internal(&e))?;
        w.write_record(columns.iter().map(|c| cell(v.get(*c).unwrap_or(&Value::Null)))).map_err(|e| internal(&e))?;
    }
    let bytes = w.into_inner().map_err(|e| internal(&e))?;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.csv\"")))
        .body(bytes))
}

fn labels(state: &AppState) -> Labels<'_> {
    Labels { settings: &state.settings, billing: &state.pipeline.billing }
}

fn store(state: &AppState) -> &Store {
    &state.store
}

/// Reconciliation by payer, site, clinician, month or program: billed, expected, paid,
/// contractual, patient responsibility, denied, other, outstanding (finance, admin).
#[utoipa::path(get, path = "/api/v1/reports/reconciliation", tag = "finance", params(ReportQuery),
    responses((status = 200, body = reports::Reconciliation), (status = 400, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/reports/reconciliation")]
pub async fn report_reconciliation(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let by = by(&q, "payer")?;
    let r = reports::reconciliation(store(&state), &state.pipeline.remit, &labels(&state), &by, &filter(&q)?).await?;
    let mut rows = r.rows.clone();
    rows.push(r.total.clone());
    answer(wants_csv(&req, &q), &format!("reconciliation-by-{by}"), &r, &rows, RECON_COLUMNS)
}

/// Outstanding balances by age since the date of service (finance, admin).
#[utoipa::path(get, path = "/api/v1/reports/aging", tag = "finance", params(ReportQuery),
    responses((status = 200, body = reports::Aging)), security(("bearer" = [])))]
#[get("/api/v1/reports/aging")]
pub async fn report_aging(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let by = by(&q, "payer")?;
    let as_of = date_param("as_of", q.as_of.as_deref())?.unwrap_or_else(|| chrono::Utc::now().date_naive());
    let r = reports::aging(store(&state), &labels(&state), &by, &filter(&q)?, as_of).await?;
    let mut rows = r.rows.clone();
    rows.push(r.total.clone());
    answer(wants_csv(&req, &q), &format!("aging-by-{by}"), &r, &rows, AGING_COLUMNS)
}

/// Denials ranked by dollars, by group and CARC, with texts and remark codes (finance, admin).
#[utoipa::path(get, path = "/api/v1/reports/denials", tag = "finance", params(ReportQuery),
    responses((status = 200, body = reports::Denials)), security(("bearer" = [])))]
#[get("/api/v1/reports/denials")]
pub async fn report_denials(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let r = reports::denials(store(&state), &state.pipeline.remit, &filter(&q)?).await?;
    answer(wants_csv(&req, &q), "denials", &r, &r.rows, DENIAL_COLUMNS)
}

/// PPS expected against paid per visit: the wrap-around gap (finance, admin).
#[utoipa::path(get, path = "/api/v1/reports/pps-gap", tag = "finance", params(ReportQuery),
    responses((status = 200, body = reports::PpsGap)), security(("bearer" = [])))]
#[get("/api/v1/reports/pps-gap")]
pub async fn report_pps_gap(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let by = by(&q, "month")?;
    let r = reports::pps_gap(store(&state), &state.pipeline.remit, &labels(&state), &by, &filter(&q)?).await?;
    let mut rows = r.rows.clone();
    rows.push(r.total.clone());
    answer(wants_csv(&req, &q), &format!("pps-gap-by-{by}"), &r, &rows, PPS_COLUMNS)
}

/// Per site and month: what billable hours earned against clinician cost, the share of
/// sessions that were billable and why the rest were not (finance, admin).
#[utoipa::path(get, path = "/api/v1/reports/sustainability", tag = "finance", params(ReportQuery),
    responses((status = 200, body = reports::Sustainability)), security(("bearer" = [])))]
#[get("/api/v1/reports/sustainability")]
pub async fn report_sustainability(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    q: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    who.finance_scope()?;
    let r = reports::sustainability(store(&state), &state.pipeline.remit, &labels(&state), &filter(&q)?).await?;
    answer(wants_csv(&req, &q), "sustainability", &r, &r.rows, SUSTAINABILITY_COLUMNS)
}

const CSP: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn static_file(body: &'static [u8], content_type: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

/// The finance dashboard (open: the page holds no data; it signs in with a finance token).
#[get("/finance")]
pub async fn dashboard() -> HttpResponse {
    static_file(include_bytes!("../../web/finance/index.html"), "text/html; charset=utf-8")
}

/// The dashboard's script.
#[get("/finance/app.js")]
pub async fn dashboard_js() -> HttpResponse {
    static_file(include_bytes!("../../web/finance/app.js"), "text/javascript; charset=utf-8")
}

/// The dashboard's style sheet.
#[get("/finance/app.css")]
pub async fn dashboard_css() -> HttpResponse {
    static_file(include_bytes!("../../web/finance/app.css"), "text/css; charset=utf-8")
}

/// Chart.js (MIT; `web/finance/LICENSE-chartjs.txt`).
#[get("/finance/chart.umd.min.js")]
pub async fn dashboard_chart() -> HttpResponse {
    static_file(include_bytes!("../../web/finance/chart.umd.min.js"), "text/javascript; charset=utf-8")
}
