//! FHIR Bulk Data export (`$export`) for FQHC partners, and the Groups it can be run on.
//!
//! Kick-off answers 202 with `Content-Location` (the status URL); the status URL answers 202 with
//! `X-Progress` and `Retry-After` while the job runs, then 200 with the manifest; `DELETE` on it
//! cancels the job and removes its files; files are downloaded with the same access token.
//! Only the partner client that started a job sees it (anyone else gets 404).

use actix_web::http::header::{self, HeaderValue};
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, delete, get, route, web};
use serde_json::Value;

use crate::auth::scope::Interaction;
use crate::auth::{PURPOSE_HEADER, Principal, Role};
use crate::error::ApiError;
use crate::export::run::Recipient;
use crate::export::{Kickoff, Level, NDJSON, Status};
use crate::fhir::{FHIR_JSON, IssueCode, OutcomeIssue};
use crate::startup::AppState;

/// The partner's FQHC, or 403.
fn partner_org(who: &Principal) -> Result<&str, ApiError> {
    match (who.role, who.org.as_deref()) {
        (Role::Partner, Some(org)) => Ok(org),
        (Role::Partner, None) => Err(ApiError::Forbidden("this partner client is not bound to an FQHC".into())),
        (role, _) => Err(ApiError::Forbidden(format!(
            "bulk export is for FQHC partner clients (SMART Backend Services); a {} client may not use it",
            role.as_str()
        ))),
    }
}

/// The `Prefer` header's tokens, lower-cased.
fn prefer(req: &HttpRequest) -> Vec<String> {
    req.headers()
        .get_all(header::HeaderName::from_static("prefer"))
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().replace(' ', "").to_ascii_lowercase())
        .collect()
}

/// Reads a POST kick-off's `Parameters` body into name/value pairs and `patient` references.
fn parameters(doc: &Value, k: &mut Kickoff) -> Result<(), ApiError> {
    if doc["resourceType"] != "Parameters" {
        return Err(ApiError::Malformed(vec![
            OutcomeIssue::error(IssueCode::Structure, "a POST kick-off body must be a FHIR Parameters resource")
                .at_pointer("/resourceType"),
        ]));
    }
    for (i, p) in doc["parameter"].as_array().into_iter().flatten().enumerate() {
        let name = p["name"].as_str().unwrap_or_default();
        let at = format!("/parameter/{i}");
        if name == "patient" {
            match p["valueReference"]["reference"].as_str() {
                Some(r) => k.patients.push(r.to_string()),
                None => {
                    return Err(ApiError::BadRequest(vec![
                        OutcomeIssue::error(IssueCode::Value, "`patient` needs a valueReference").at_pointer(&at),
                    ]));
                }
            }
            continue;
        }
        let value = ["valueString", "valueInstant", "valueDateTime", "valueCode", "valueBoolean"]
            .iter()
            .find_map(|k| p.get(*k))
            .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()));
        match value {
            Some(v) if !name.is_empty() => k.params.push((name.to_string(), v)),
            _ => {
                return Err(ApiError::BadRequest(vec![
                    OutcomeIssue::error(IssueCode::Value, "each parameter needs a name and a string, instant, code or boolean value")
                        .at_pointer(&at),
                ]));
            }
        }
    }
    Ok(())
}

async fn kickoff(
    state: &AppState,
    who: &Principal,
    req: &HttpRequest,
    payload: web::Payload,
    level: Level,
    group: Option<String>,
) -> Result<HttpResponse, ApiError> {
    let org = partner_org(who)?;
    let prefs = prefer(req);
    if !prefs.iter().any(|p| p == "respond-async") {
        return Err(ApiError::bad_request(IssueCode::Required, "Prefer", "a bulk export needs the header `Prefer: respond-async`"));
    }
    let header = req.headers().get(PURPOSE_HEADER).map(|v| v.to_str().unwrap_or("?"));
    let purpose = who.purpose(header)?;
    let mut k = Kickoff { lenient: prefs.iter().any(|p| p == "handling=lenient"), ..Kickoff::default() };
    k.params = serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(IssueCode::Structure, "query", format!("the query string could not be read: {e}")))?;
    // A POST may carry its parameters as a FHIR Parameters body (a body always names its type).
    if req.method() == actix_web::http::Method::POST && req.headers().contains_key(header::CONTENT_TYPE) {
        let doc = super::extractors::json_body(req, payload, state.settings.server.max_body_bytes).await?;
        parameters(&doc, &mut k)?;
    }
    if let Some(g) = &group
        && !crate::export::groups_of(&state.settings, Some(org)).iter().any(|(id, _, _)| id == g)
    {
        return Err(ApiError::NotFound(format!("Group/{g} is not known")));
    }
    let params = crate::export::parse_kickoff(
        level,
        group.as_deref(),
        k,
        |t| who.require_scope(t, Interaction::Read).is_ok(),
        &state.pipeline.search,
        state.settings.export.gzip,
    )
    .map_err(ApiError::BadRequest)?;
    let id = uuid::Uuid::new_v4().to_string();
    let request = format!("{}{}", super::fhir::base_url(req).trim_end_matches("/fhir"), req.uri());
    let params_json = serde_json::to_string(&params).map_err(|e| ApiError::Internal(e.into()))?;
    let job = crate::store::NewExportJob {
        id: &id,
        client_id: &who.client_id,
        org_id: org,
        purpose: purpose.code(),
        request: &request,
        params: &params_json,
        now_us: crate::store::now_us(),
    };
    let limit = &state.settings.export;
    if !state.store.export_insert(&job, i64::try_from(limit.max_jobs_per_client).unwrap_or(i64::MAX)).await? {
        return Err(ApiError::TooManyRequests(
            format!(
                "this client already has {} export jobs queued or running; wait for one to finish or cancel one",
                limit.max_jobs_per_client
            ),
            limit.retry_after_seconds.max(1),
        ));
    }
    state.exporter.wake();
    tracing::info!(job = %id, level = ?level, types = params.types.len(), "export job queued");
    Ok(HttpResponse::Accepted()
        .insert_header((header::CONTENT_LOCATION, format!("{}/$export-status/{id}", super::fhir::base_url(req))))
        .content_type(FHIR_JSON)
        .body(
            serde_json::to_vec(&crate::fhir::OperationOutcome::new(vec![OutcomeIssue {
                severity: crate::fhir::outcome::Severity::Information,
                ..OutcomeIssue::error(IssueCode::Informational, "the export was accepted; poll the Content-Location URL for its status")
            }]))
            .unwrap_or_default(),
        ))
}

/// System-level export (`/fhir/$export`).
#[utoipa::path(get, path = "/fhir/$export", tag = "bulk", responses((status = 202, description = "accepted; Content-Location is the status URL"),
    (status = 400, description = "bad parameters", body = crate::fhir::OperationOutcome), (status = 429, description = "too many jobs")), security(("bearer" = [])))]
#[route("/fhir/$export", method = "GET", method = "POST")]
pub async fn export_system(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    kickoff(&state, &who, &req, payload, Level::System, None).await
}

/// Patient-level export (`/fhir/Patient/$export`).
#[utoipa::path(get, path = "/fhir/Patient/$export", tag = "bulk", responses((status = 202, description = "accepted")), security(("bearer" = [])))]
#[route("/fhir/Patient/$export", method = "GET", method = "POST")]
pub async fn export_patients(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    kickoff(&state, &who, &req, payload, Level::Patient, None).await
}

/// Group-level export (`/fhir/Group/{id}/$export`): a school site, or the partnership.
#[utoipa::path(get, path = "/fhir/Group/{id}/$export", tag = "bulk", params(("id" = String, Path, description = "Group id")),
    responses((status = 202, description = "accepted"), (status = 404, description = "no such Group for this partner")), security(("bearer" = [])))]
#[route("/fhir/Group/{id}/$export", method = "GET", method = "POST")]
pub async fn export_group(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    kickoff(&state, &who, &req, payload, Level::Group, Some(path.into_inner())).await
}

/// The job, if it is this client's.
async fn own_job(state: &AppState, who: &Principal, id: &str) -> Result<crate::store::ExportJobRow, ApiError> {
    partner_org(who)?;
    match state.store.export_job(id).await? {
        Some(job) if job.client_id == who.client_id => Ok(job),
        _ => Err(ApiError::NotFound(format!("export job {id} is not known (it may have been cancelled or expired)"))),
    }
}

/// Job status: 202 while running, 200 with the manifest, 500 with an OperationOutcome when it failed.
#[utoipa::path(get, path = "/fhir/$export-status/{id}", tag = "bulk", params(("id" = String, Path, description = "job id")),
    responses((status = 202, description = "in progress (X-Progress, Retry-After)"), (status = 200, description = "the manifest"),
        (status = 404, description = "unknown, cancelled or expired")), security(("bearer" = [])))]
#[get("/fhir/$export-status/{id}")]
pub async fn export_status(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = own_job(&state, &who, &path).await?;
    let files = if job.status == "completed" { state.store.export_file_list(&job.id).await? } else { Vec::new() };
    let file_base = format!("{}/$export-file/{}", super::fhir::base_url(&req), job.id);
    match crate::export::status(&job, &files, &file_base) {
        Status::InProgress(p) => Ok(HttpResponse::Accepted()
            .insert_header(("X-Progress", p.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect::<String>()))
            .insert_header((header::RETRY_AFTER, state.settings.export.retry_after_seconds.to_string()))
            .finish()),
        Status::Completed(manifest) => Ok(HttpResponse::Ok()
            .insert_header((header::EXPIRES, job.expires_us.map(|us| super::fhir::http_date(us).to_string()).unwrap_or_default()))
            .content_type("application/json")
            .body(manifest.to_string())),
        Status::Failed(why) => Ok(HttpResponse::InternalServerError().content_type(FHIR_JSON).body(
            serde_json::to_vec(&crate::fhir::OperationOutcome::new(vec![OutcomeIssue::error(
                IssueCode::Exception,
                format!("the export failed: {why}"),
            )]))
            .unwrap_or_default(),
        )),
        Status::Gone => Err(ApiError::NotFound(format!("export job {} is not known (it may have been cancelled or expired)", job.id))),
    }
}

/// Cancels a job (queued, running or completed) and removes its files.
#[utoipa::path(delete, path = "/fhir/$export-status/{id}", tag = "bulk", params(("id" = String, Path, description = "job id")),
    responses((status = 202, description = "cancelled"), (status = 404, description = "unknown, cancelled or expired")), security(("bearer" = [])))]
#[delete("/fhir/$export-status/{id}")]
pub async fn export_cancel(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    partner_org(&who)?;
    if !state.store.export_cancel(&path, &who.client_id).await? {
        return Err(ApiError::NotFound(format!("export job {} is not known (it may have been cancelled or expired)", path.as_str())));
    }
    // A running job's worker notices at its next lease renewal and stops; the cleanup loop
    // removes whatever it wrote meanwhile.
    let root = state.exporter.root();
    let id = path.into_inner();
    tracing::info!(job = %id, "export job cancelled");
    web::block(move || crate::export::files::remove_job_dir(&root, &id))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("{e}")))?
        .map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Accepted().finish())
}

/// Downloads one output or error file (NDJSON; gzip when stored so and accepted).
#[utoipa::path(get, path = "/fhir/$export-file/{id}/{name}", tag = "bulk",
    params(("id" = String, Path, description = "job id"), ("name" = String, Path, description = "file name from the manifest")),
    responses((status = 200, description = "application/fhir+ndjson"), (status = 404, description = "no such file")), security(("bearer" = [])))]
#[get("/fhir/$export-file/{id}/{name}")]
pub async fn export_file(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let job = own_job(&state, &who, &id).await?;
    let not_found = || ApiError::NotFound(format!("export file {name} is not known"));
    if job.status != "completed" {
        return Err(not_found());
    }
    let mut file = state.store.export_file(&id, &name).await?.ok_or_else(not_found)?;
    let purpose = crate::domain::PurposeOfUse::parse(&job.purpose).map_err(|e| ApiError::Internal(anyhow::anyhow!(e)))?;
    let dir = crate::export::files::job_dir(&state.exporter.root(), &id);
    // Consent changed since the output was evaluated for a student of this file: judge it again
    // before anything of it leaves (a revocation takes effect for every later disclosure).
    let patients: Vec<String> = serde_json::from_str(&file.patients).unwrap_or_default();
    if let Some(evaluated) = job.consent_evaluated_us {
        let margin = crate::export::run::CONSENT_CLOCK_MARGIN_US;
        let changed: std::collections::HashSet<String> =
            state.store.consent_changed_patients(evaluated - margin, i64::MAX).await?.into_iter().collect();
        // Consents and partnerships are judged on a date: a file evaluated on an earlier day may
        // hold what a consent that has since ended, or a guardian's consent of a student who has
        // since turned 18, no longer permits.
        let evaluated_on = chrono::DateTime::from_timestamp_micros(evaluated).map(|t| t.date_naive());
        let stale = evaluated_on != Some(chrono::Utc::now().date_naive());
        if stale || patients.iter().any(|p| changed.contains(p)) {
            let params: crate::export::Params = serde_json::from_str(&job.params).map_err(|e| ApiError::Internal(e.into()))?;
            let recipient = Recipient { org: job.org_id.clone(), purpose };
            file = crate::export::run::rejudge_file(&state.store, &state.pipeline.consent, &recipient, &dir, params.gzip, file)
                .await
                .map_err(|e| ApiError::Internal(e.into()))?;
            state.store.export_update_file(&file).await?;
        }
    }
    let patients: Vec<String> = serde_json::from_str(&file.patients).unwrap_or_default();
    let event = crate::audit::bulk_event(
        &crate::audit::BulkDisclosure {
            client_id: &who.client_id,
            org: &job.org_id,
            purpose,
            request_id: super::extractors::request_id(&req),
            query: req.uri().to_string(),
            job_id: &id,
            file: Some(&name),
            patients: &patients,
            counts: vec![(format!("lines {}", file.resource_type), u64::try_from(file.count).unwrap_or_default())],
        },
        chrono::Utc::now(),
    );
    state.auditor.record(event).await?;
    let gz = name.ends_with(".gz");
    let accepts_gzip = req
        .headers()
        .get_all(header::ACCEPT_ENCODING)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|e| e.split(';').next().is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip")));
    let path = dir.join(&name);
    let stream = file_stream(path, gz && !accepts_gzip);
    let mut res = HttpResponse::Ok();
    res.content_type(NDJSON);
    if gz && accepts_gzip {
        res.insert_header((header::CONTENT_ENCODING, HeaderValue::from_static("gzip")));
    }
    Ok(res.streaming(stream))
}

/// The file's bytes (decompressed when `inflate`), read on the blocking pool in 64 KiB chunks.
fn file_stream(path: std::path::PathBuf, inflate: bool) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        };
        let mut reader: Box<dyn Read> =
            if inflate { Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file))) } else { Box::new(file) };
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        break;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// The Groups this client may export (partners: one per site they serve and one for the
/// partnership; admins: all).
fn visible_groups(state: &AppState, who: &Principal) -> Result<Vec<(String, String, Vec<String>)>, ApiError> {
    who.require_scope("Group", Interaction::Read).or_else(|_| who.require_scope("Patient", Interaction::Read))?;
    match who.role {
        Role::Admin => Ok(crate::export::groups_of(&state.settings, None)),
        Role::Partner => Ok(crate::export::groups_of(&state.settings, Some(partner_org(who)?))),
        role => Err(ApiError::Forbidden(format!("a {} client may not read Groups", role.as_str()))),
    }
}

/// Read a Group (`GET /fhir/Group/{id}`).
#[utoipa::path(get, path = "/fhir/Group/{id}", tag = "bulk", params(("id" = String, Path, description = "Group id")),
    responses((status = 200, description = "the Group"), (status = 404, description = "not known")), security(("bearer" = [])))]
#[get("/fhir/Group/{id}")]
pub async fn read_group(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let groups = visible_groups(&state, &who)?;
    let (id, name, sites) = groups
        .into_iter()
        .find(|(id, _, _)| *id == *path)
        .ok_or_else(|| ApiError::NotFound(format!("Group/{} is not known", path.as_str())))?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(crate::export::group_resource(&id, &name, &sites).to_string()))
}

/// List the Groups (`GET /fhir/Group`).
#[utoipa::path(get, path = "/fhir/Group", tag = "bulk", responses((status = 200, description = "searchset Bundle")), security(("bearer" = [])))]
#[get("/fhir/Group")]
pub async fn search_groups(state: web::Data<AppState>, who: Principal, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let groups = visible_groups(&state, &who)?;
    if !req.query_string().is_empty() {
        return Err(ApiError::bad_request(IssueCode::NotSupported, "query", "Group search takes no parameters"));
    }
    let base = super::fhir::base_url(&req);
    let entries: Vec<Value> = groups
        .iter()
        .map(|(id, name, sites)| {
            serde_json::json!({ "fullUrl": format!("{base}/Group/{id}"), "resource": crate::export::group_resource(id, name, sites), "search": { "mode": "match" } })
        })
        .collect();
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries.len(),
        "link": [{ "relation": "self", "url": format!("{base}/Group") }],
        "entry": entries,
    });
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(bundle.to_string()))
}
