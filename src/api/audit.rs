//! The audit trail over HTTP: the accounting of disclosures for a student (an LEA answers a
//! parent's or student's request) and `/fhir/AuditEvent` (admins only).

use actix_web::{HttpRequest, HttpResponse, get, web};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::auth::{Principal, Role};
use crate::error::ApiError;
use crate::fhir::{FHIR_JSON, IssueCode};
use crate::startup::AppState;
use crate::store::ChainRow;

/// Query of the accounting of disclosures.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DisclosureQuery {
    /// The LEA of the student (admins; a submitter's own LEA otherwise).
    pub lea: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<i64>,
    /// Continue before this event position (from `next`).
    pub before: Option<i64>,
}

fn parse(row: &ChainRow) -> Result<Value, ApiError> {
    serde_json::from_str(&row.event).map_err(|e| ApiError::Internal(anyhow::anyhow!("stored AuditEvent {} is not JSON: {e}", row.id)))
}

/// One disclosure as the accounting shows it: when, to whom, why, what of this student (never
/// another student's records the same request carried), under which consent.
fn summary(event: &Value, patient_ref: &str) -> Value {
    let details = |e: &Value, kind: &str| -> Option<String> {
        e["detail"].as_array()?.iter().find(|d| d["type"] == kind)?["valueString"].as_str().map(str::to_owned)
    };
    let mut resources = Vec::new();
    let mut consents = Vec::new();
    for e in event["entity"].as_array().into_iter().flatten() {
        if details(e, "decision").as_deref() == Some("permit")
            && details(e, "patient").as_deref() == Some(patient_ref)
            && let Some(r) = e["what"]["reference"].as_str()
        {
            resources.push(r.to_string());
            if let Some(c) = details(e, "consent")
                && !consents.contains(&c)
            {
                consents.push(c);
            }
        }
    }
    json!({
        "audit_event": format!("AuditEvent/{}", event["id"].as_str().unwrap_or_default()),
        "recorded": event["recorded"],
        "recipient_organization": event["extension"].as_array().and_then(|x| x.iter().find(|e| e["url"] == "urn:wellness-gateway:fhir:extension:partner-organization")).map(|e| e["valueString"].clone()),
        "recipient_client": event["agent"][0]["who"]["identifier"]["value"],
        "purpose": event["purposeOfEvent"][0]["coding"][0]["code"],
        "interaction": event["subtype"][0]["code"],
        "resources": resources,
        "consents": consents,
    })
}

/// Accounting of disclosures: every partner request that disclosed something of this student,
/// newest first.
#[utoipa::path(get, path = "/api/v1/students/{district_id}/disclosures", tag = "consent",
    params(("district_id" = String, Path, description = "the district's student id"), DisclosureQuery),
    responses((status = 200, description = "disclosures, newest first"), (status = 400, description = "admins must name the LEA", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/students/{district_id}/disclosures")]
pub async fn disclosures(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    query: web::Query<DisclosureQuery>,
) -> Result<HttpResponse, ApiError> {
    let lea = match (who.intake_scope()?, &query.lea) {
        (Some(own), Some(asked)) if own != asked => return Err(ApiError::Forbidden(format!("this client answers for LEA {own:?} only"))),
        (Some(own), _) => own.to_string(),
        (None, Some(asked)) => asked.clone(),
        (None, None) => return Err(ApiError::bad_request(IssueCode::Required, "lea", "name the student's LEA with ?lea=")),
    };
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let patient = crate::mapping::engine::patient_id(&lea, &path);
    state.auditor.flush().await?;
    let rows = state.store.audit_events(Some(&patient), true, query.before, limit + 1).await?;
    let patient_ref = format!("Patient/{patient}");
    let mut items = Vec::new();
    for r in rows.iter().take(usize::try_from(limit).unwrap_or(usize::MAX)) {
        items.push(summary(&parse(r)?, &patient_ref));
    }
    let next = (rows.len() > items.len()).then(|| rows[items.len() - 1].seq);
    Ok(HttpResponse::Ok()
        .json(json!({ "student": path.as_str(), "lea": lea, "patient": patient_ref, "disclosures": items, "next_before": next })))
}

fn admin_only(who: &Principal) -> Result<(), ApiError> {
    if who.role == Role::Admin { Ok(()) } else { Err(ApiError::Forbidden("AuditEvents are readable by admin clients only".into())) }
}

/// Read one AuditEvent (admins).
#[get("/fhir/AuditEvent/{id}")]
pub async fn read_event(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    admin_only(&who)?;
    state.auditor.flush().await?;
    let row = state.store.audit_event(&path).await?.ok_or_else(|| ApiError::NotFound(format!("AuditEvent/{path} is not known")))?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(row.event))
}

/// Search AuditEvents, newest first (admins): `patient`, `_count`, `_cursor`.
#[get("/fhir/AuditEvent")]
pub async fn search_events(state: web::Data<AppState>, who: Principal, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    admin_only(&who)?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(IssueCode::Structure, "query", format!("the query string could not be read: {e}")))?;
    let (mut patient, mut count, mut before) = (None, 50i64, None);
    for (k, v) in &pairs {
        match k.as_str() {
            "patient" => patient = Some(v.strip_prefix("Patient/").unwrap_or(v).to_string()),
            "_count" => {
                count =
                    v.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                        ApiError::bad_request(IssueCode::Value, "_count", "`_count` must be a whole number from 1 to 1000")
                    })?
            }
            "_cursor" => {
                before = Some(v.parse().map_err(|_| ApiError::bad_request(IssueCode::Value, "_cursor", "not a cursor this server issued"))?)
            }
            _ => {
                return Err(ApiError::bad_request(
                    IssueCode::NotSupported,
                    k,
                    format!("unknown parameter `{k}`; AuditEvent supports patient, _count"),
                ));
            }
        }
    }
    state.auditor.flush().await?;
    let rows = state.store.audit_events(patient.as_deref(), false, before, count + 1).await?;
    let info = req.connection_info();
    let base = format!("{}://{}/fhir", info.scheme(), info.host());
    let page: Vec<&ChainRow> = rows.iter().take(usize::try_from(count).unwrap_or(usize::MAX)).collect();
    let mut entries = Vec::with_capacity(page.len());
    for r in &page {
        entries.push(json!({ "fullUrl": format!("{base}/AuditEvent/{}", r.id), "resource": parse(r)?, "search": { "mode": "match" } }));
    }
    let mut links = vec![json!({ "relation": "self", "url": format!("{base}/AuditEvent?{}", req.query_string()) })];
    if rows.len() > page.len()
        && let Some(last) = page.last()
    {
        let mut p: Vec<(String, String)> = pairs.into_iter().filter(|(k, _)| k != "_cursor").collect();
        p.push(("_cursor".into(), last.seq.to_string()));
        links.push(
            json!({ "relation": "next", "url": format!("{base}/AuditEvent?{}", serde_urlencoded::to_string(&p).unwrap_or_default()) }),
        );
    }
    let bundle = json!({ "resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries });
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bundle.to_string()))
}

/// Query of the consent explanation.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    /// The partner FQHC (configuration id).
    pub partner: String,
    /// TREAT, HPAYMT or HOPERAT (default TREAT).
    pub purpose: Option<String>,
    /// `Type/id` of the resource.
    pub resource: String,
}

/// Why a disclosure is or is not permitted (admins): the decision, the rule, the consent, and
/// each consent's verdict.
#[utoipa::path(get, path = "/api/v1/consent/explain", tag = "consent", params(ExplainQuery),
    responses((status = 200, description = "the explanation"), (status = 404, description = "no such resource", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/consent/explain")]
pub async fn explain(state: web::Data<AppState>, who: Principal, query: web::Query<ExplainQuery>) -> Result<HttpResponse, ApiError> {
    admin_only(&who)?;
    if state.settings.organization(&query.partner).is_none_or(|o| o.kind != crate::settings::OrgKind::Fqhc) {
        return Err(ApiError::bad_request(IssueCode::Value, "partner", format!("`{}` is not a configured FQHC", query.partner)));
    }
    let purpose = crate::domain::PurposeOfUse::parse(query.purpose.as_deref().unwrap_or("TREAT"))
        .map_err(|e| ApiError::bad_request(IssueCode::Value, "purpose", e))?;
    let (ty, id) =
        query.resource.split_once('/').ok_or_else(|| ApiError::bad_request(IssueCode::Value, "resource", "`resource` must be Type/id"))?;
    let r = state.store.fhir_read(ty, id, None).await?.ok_or_else(|| ApiError::NotFound(format!("{} is not known", query.resource)))?;
    let partner = crate::serve::Partner { org: &query.partner, purpose, today: chrono::Utc::now().date_naive() };
    Ok(HttpResponse::Ok().json(crate::serve::explain(&state.store, &state.pipeline.consent, partner, r).await?))
}
