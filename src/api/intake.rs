//! `/api/v1/sessions`: submit one or a batch, read, list.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extractors::{BodyKind, body_kind, read_body, request_id};
use crate::auth::Principal;
use crate::error::ApiError;
use crate::fhir::{IssueCode, OperationOutcome, OutcomeIssue};
use crate::intake::batch::{self, SplitError};
use crate::intake::receipt::{BatchReceipt, RecordStatus, SessionReceipt};
use crate::intake::{RawFormat, RawRecord};
use crate::pipeline::{self, Submitter};
use crate::startup::AppState;
use crate::store::{ListFilter, StoredSession};

fn submitter(req: &HttpRequest, who: &Principal) -> Result<Submitter, ApiError> {
    let scope = who.intake_scope()?;
    Ok(Submitter { client_id: who.client_id.clone(), lea: scope.map(str::to_owned), request_id: request_id(req) })
}

/// Submit one session record.
///
/// Identical re-submission (same LEA and source_id, same content) returns the stored session with
/// 200 and changes nothing; a changed record is stored as a new version (201); earlier versions
/// are kept.
#[utoipa::path(post, path = "/api/v1/sessions", tag = "intake",
    request_body(content = serde_json::Value, content_type = "application/json", description = "A session record (schemas/session.schema.json)"),
    responses(
        (status = 201, description = "created, or a new version stored", body = SessionReceipt),
        (status = 200, description = "identical to the stored version; nothing changed", body = SessionReceipt),
        (status = 400, description = "malformed JSON", body = OperationOutcome),
        (status = 401, description = "no or bad token", body = OperationOutcome),
        (status = 403, description = "role or LEA may not submit this", body = OperationOutcome),
        (status = 413, description = "body too large", body = OperationOutcome),
        (status = 415, description = "not application/json", body = OperationOutcome),
        (status = 422, description = "record rejected; one issue per problem", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/sessions")]
pub async fn post_session(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let submitter = submitter(&req, &who)?;
    body_kind(&req, &[BodyKind::Json])?;
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let parsed = batch::parse_record(&body).map_err(|issue| ApiError::Malformed(vec![issue]))?;
    let lea = parsed.get("lea").and_then(serde_json::Value::as_str).unwrap_or_default().to_owned();
    let record = RawRecord { index: 0, line: None, raw: body.to_vec(), format: RawFormat::Json, parsed: Ok(parsed) };
    let prepared = state.pipeline.prepare(&submitter, vec![record], Utc::now());
    let receipt = pipeline::commit(&state.store, &submitter, prepared, true, None).await?;
    single_response(receipt, lea)
}

fn single_response(mut receipt: BatchReceipt, lea: String) -> Result<HttpResponse, ApiError> {
    let result = receipt.results.pop().ok_or_else(|| ApiError::Internal(anyhow::anyhow!("empty receipt")))?;
    let (id, version, received_at) = match (result.status, result.id, result.version, result.received_at) {
        (RecordStatus::Rejected, ..) | (_, None, ..) | (_, _, None, _) | (.., None) => {
            let issues = result.outcome.map(|o| o.issue).unwrap_or_default();
            return Err(if issues.iter().all(|i| i.code == IssueCode::Security) {
                ApiError::Forbidden(issues.first().and_then(|i| i.diagnostics.clone()).unwrap_or_default())
            } else {
                ApiError::Unprocessable(issues)
            });
        }
        (_, Some(id), Some(version), Some(at)) => (id, version, at),
    };
    let location = format!("/api/v1/sessions/{id}");
    let body = SessionReceipt { id, lea, source_id: result.source_id.unwrap_or_default(), version, status: result.status, received_at };
    let mut res = if result.status == RecordStatus::Duplicate { HttpResponse::Ok() } else { HttpResponse::Created() };
    Ok(res.insert_header((header::LOCATION, location)).json(body))
}

/// Query of a batch submission.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct BatchQuery {
    /// All-or-nothing: store nothing if any record is rejected (answers 422).
    pub atomic: Option<bool>,
}

/// Submit up to 10,000 sessions as a JSON array or NDJSON.
///
/// Answers per record (created / amended / duplicate / rejected with its issues) and stores the
/// valid records in one transaction. With `?atomic=true` any rejected record makes the whole batch
/// fail with a 422 OperationOutcome (each issue carries the record index) and nothing is stored.
#[utoipa::path(post, path = "/api/v1/sessions/$batch", tag = "intake", params(BatchQuery),
    request_body(content = Vec<serde_json::Value>, description = "JSON array of session records, or NDJSON (application/x-ndjson)"),
    responses(
        (status = 200, description = "per-record results", body = BatchReceipt),
        (status = 400, description = "body is not a JSON array / NDJSON", body = OperationOutcome),
        (status = 413, description = "body or record count over the limit", body = OperationOutcome),
        (status = 415, description = "unsupported Content-Type", body = OperationOutcome),
        (status = 422, description = "atomic batch with rejected records; nothing stored", body = OperationOutcome)),
    security(("bearer" = [])))]
#[post("/api/v1/sessions/$batch")]
pub async fn post_batch(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    query: web::Query<BatchQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let submitter = submitter(&req, &who)?;
    let kind = body_kind(&req, &[BodyKind::Json, BodyKind::Ndjson])?;
    let body = read_body(&req, payload, state.settings.server.max_body_bytes).await?;
    let limit = state.settings.intake.max_batch_records;
    let records = match kind {
        BodyKind::Json => batch::split_json_array(&body, limit),
        BodyKind::Ndjson => batch::split_ndjson(&body, limit),
    }
    .map_err(split_error)?;
    let (pipe, who2) = (state.pipeline.clone(), submitter.clone());
    let prepared = web::block(move || pipe.prepare(&who2, records, Utc::now()))
        .await
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("validation worker failed: {e}")))?;
    let atomic = query.atomic.unwrap_or(false);
    let receipt = pipeline::commit(&state.store, &submitter, prepared, atomic, None).await?;
    if atomic && receipt.rejected > 0 {
        return Err(ApiError::Unprocessable(atomic_issues(&receipt)));
    }
    Ok(HttpResponse::Ok().json(receipt))
}

fn split_error(e: SplitError) -> ApiError {
    match e {
        SplitError::Malformed(m) => ApiError::Malformed(vec![OutcomeIssue::error(IssueCode::Structure, m).at_expression("body")]),
        SplitError::TooMany { .. } => ApiError::PayloadTooLarge(e.to_string()),
        SplitError::Empty => ApiError::bad_request(IssueCode::Required, "body", e.to_string()),
    }
}

/// Flattens per-record outcomes into one OperationOutcome, each issue tagged with its record.
fn atomic_issues(receipt: &BatchReceipt) -> Vec<OutcomeIssue> {
    let mut issues = vec![OutcomeIssue::error(
        IssueCode::BusinessRule,
        format!("atomic batch refused: {} of {} records were rejected; nothing was stored", receipt.rejected, receipt.received),
    )];
    for r in &receipt.results {
        for issue in r.outcome.iter().flat_map(|o| o.issue.iter()) {
            let mut issue = issue.clone().for_record(r.index);
            let place = match r.line {
                Some(line) => format!("record {} (line {line})", r.index),
                None => format!("record {}", r.index),
            };
            issue.diagnostics = issue.diagnostics.map(|d| format!("{place}: {d}"));
            issues.push(issue);
        }
    }
    issues
}

/// A stored session version as the submitter sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Session id.
    pub id: String,
    /// LEA.
    pub lea: String,
    /// LEA's session id.
    pub source_id: String,
    /// Site of the current version.
    pub site: String,
    /// The version shown.
    pub version: i64,
    /// The latest version.
    pub current_version: i64,
    /// First receipt.
    pub created_at: DateTime<Utc>,
    /// Receipt of the version shown.
    pub received_at: DateTime<Utc>,
    /// SHA-256 of the canonical record.
    pub content_sha256: String,
    /// SHA-256 of the exact submitted bytes (`.../raw` returns them).
    pub raw_sha256: String,
    /// Media type of the submitted bytes.
    pub raw_format: String,
    /// The record (canonical JSON).
    #[schema(value_type = Object)]
    pub record: serde_json::Value,
    /// Every version, oldest first.
    pub versions: Vec<VersionView>,
}

/// One version in a session's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct VersionView {
    /// Version number.
    pub version: i64,
    /// Receipt time.
    pub received_at: DateTime<Utc>,
    /// SHA-256 of the canonical record.
    pub content_sha256: String,
    /// SHA-256 of the submitted bytes.
    pub raw_sha256: String,
    /// Batch that carried it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
}

impl SessionView {
    fn from_stored(s: StoredSession) -> Result<Self, ApiError> {
        let record = serde_json::from_str(&s.record)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("stored record of {} unreadable: {e}", s.id)))?;
        Ok(SessionView {
            id: s.id,
            lea: s.lea,
            source_id: s.source_id,
            site: s.site,
            version: s.version.version,
            current_version: s.current_version,
            created_at: s.created_at,
            received_at: s.version.received_at,
            content_sha256: s.version.content_sha256,
            raw_sha256: s.version.raw_sha256,
            raw_format: s.version.raw_format,
            record,
            versions: s
                .history
                .into_iter()
                .map(|v| VersionView {
                    version: v.version,
                    received_at: v.received_at,
                    content_sha256: v.content_sha256,
                    raw_sha256: v.raw_sha256,
                    batch_id: v.batch_id,
                })
                .collect(),
        })
    }
}

async fn load_visible(state: &AppState, who: &Principal, id: &str, version: Option<i64>) -> Result<StoredSession, ApiError> {
    let scope = who.intake_scope()?;
    match state.store.session(id, version).await? {
        // Another LEA's session is indistinguishable from a missing one.
        Some(s) if scope.is_none_or(|lea| lea == s.lea) => Ok(s),
        _ => Err(ApiError::NotFound(format!(
            "no session {id}{} visible to this client",
            version.map(|v| format!(" version {v}")).unwrap_or_default()
        ))),
    }
}

/// Read a session (current version) with its version history.
#[utoipa::path(get, path = "/api/v1/sessions/{id}", tag = "intake", params(("id" = String, Path, description = "session id")),
    responses((status = 200, body = SessionView), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/sessions/{id}")]
pub async fn get_session(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let stored = load_visible(&state, &who, &path, None).await?;
    Ok(HttpResponse::Ok().json(SessionView::from_stored(stored)?))
}

/// Read one version of a session.
#[utoipa::path(get, path = "/api/v1/sessions/{id}/versions/{version}", tag = "intake",
    params(("id" = String, Path, description = "session id"), ("version" = i64, Path, description = "version number")),
    responses((status = 200, body = SessionView), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/sessions/{id}/versions/{version}")]
pub async fn get_session_version(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, i64)>,
) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let stored = load_visible(&state, &who, &id, Some(version)).await?;
    Ok(HttpResponse::Ok().json(SessionView::from_stored(stored)?))
}

/// The exact bytes submitted for one version (JSON or a CSV row).
#[utoipa::path(get, path = "/api/v1/sessions/{id}/versions/{version}/raw", tag = "intake",
    params(("id" = String, Path, description = "session id"), ("version" = i64, Path, description = "version number")),
    responses((status = 200, description = "the submitted bytes"), (status = 404, body = OperationOutcome)), security(("bearer" = [])))]
#[get("/api/v1/sessions/{id}/versions/{version}/raw")]
pub async fn get_session_raw(state: web::Data<AppState>, who: Principal, path: web::Path<(String, i64)>) -> Result<HttpResponse, ApiError> {
    let (id, version) = path.into_inner();
    let stored = load_visible(&state, &who, &id, Some(version)).await?;
    let raw =
        state.store.session_raw(&id, version).await?.ok_or_else(|| ApiError::NotFound(format!("no session {id} version {version}")))?;
    Ok(HttpResponse::Ok()
        .content_type(stored.version.raw_format)
        .insert_header(("Digest", format!("sha-256={}", stored.version.raw_sha256)))
        .body(raw))
}

/// Query of a session listing.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only sessions received (created or amended) at or after this instant (RFC 3339) or date (YYYY-MM-DD, UTC).
    pub since: Option<String>,
    /// Only this site.
    pub site: Option<String>,
    /// Only this LEA (admins; submitters always see their own).
    pub lea: Option<String>,
    /// Page size (default 100, at most 1,000).
    #[serde(rename = "_count")]
    #[param(rename = "_count")]
    pub count: Option<u32>,
    /// Opaque cursor from a previous page's `next` link.
    pub cursor: Option<String>,
}

/// One row of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionListItem {
    /// Session id.
    pub id: String,
    /// LEA.
    pub lea: String,
    /// LEA's session id.
    pub source_id: String,
    /// Site.
    pub site: String,
    /// Latest version.
    pub version: i64,
    /// Start of the session.
    pub service_start: DateTime<Utc>,
    /// Receipt of the latest version.
    pub updated_at: DateTime<Utc>,
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionPage {
    /// Sessions, oldest change first.
    pub items: Vec<SessionListItem>,
    /// Link to the next page, absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

fn parse_since(s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| NaiveDate::parse_from_str(s, "%Y-%m-%d").map(|d| d.and_time(chrono::NaiveTime::MIN).and_utc()))
        .map_err(|_| {
            ApiError::bad_request(
                IssueCode::Value,
                "since",
                "since must be an RFC 3339 instant (2026-11-01T00:00:00Z) or a date (2026-11-01)",
            )
        })
}

fn parse_cursor(s: &str) -> Result<(DateTime<Utc>, String), ApiError> {
    let bad = || ApiError::bad_request(IssueCode::Value, "cursor", "cursor is not one this server issued; start again without it");
    let (micros, id) = s.split_once('.').ok_or_else(bad)?;
    let ts = micros.parse::<i64>().ok().and_then(DateTime::from_timestamp_micros).ok_or_else(bad)?;
    Ok((ts, id.to_owned()))
}

/// List sessions changed since a time, optionally for one site; keyset-paged.
#[utoipa::path(get, path = "/api/v1/sessions", tag = "intake", params(ListQuery),
    responses((status = 200, body = SessionPage), (status = 400, body = OperationOutcome), (status = 403, body = OperationOutcome)),
    security(("bearer" = [])))]
#[get("/api/v1/sessions")]
pub async fn list_sessions(state: web::Data<AppState>, who: Principal, query: web::Query<ListQuery>) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let scope = who.intake_scope()?;
    let lea = match (scope, &q.lea) {
        (Some(own), Some(asked)) if own != asked => return Err(ApiError::Forbidden(format!("this client reads LEA {own:?} only"))),
        (Some(own), _) => Some(own.to_owned()),
        (None, asked) => asked.clone(),
    };
    if let (Some(own), Some(site)) = (scope, q.site.as_deref().and_then(|s| state.settings.site(s)))
        && site.lea != own
    {
        return Err(ApiError::Forbidden(format!("site {:?} does not belong to this client's LEA", site.id)));
    }
    let limits = &state.settings.intake;
    let limit = q.count.unwrap_or(limits.page_size_default).clamp(1, limits.page_size_max);
    let filter = ListFilter {
        lea,
        site: q.site.clone(),
        since: q.since.as_deref().map(parse_since).transpose()?,
        after: q.cursor.as_deref().map(parse_cursor).transpose()?,
        limit: i64::from(limit),
    };
    let rows = state.store.list_sessions(&filter).await?;
    let next = (rows.len() == limit as usize).then(|| rows.last()).flatten().map(|last| {
        let cursor = format!("{}.{}", last.updated_at.timestamp_micros(), last.id);
        let mut qs = url_encode_pairs(&[("since", q.since.as_deref()), ("site", q.site.as_deref()), ("lea", q.lea.as_deref())]);
        qs.push_str(&format!("_count={limit}&cursor={cursor}"));
        format!("/api/v1/sessions?{qs}")
    });
    let items = rows
        .into_iter()
        .map(|r| SessionListItem {
            id: r.id,
            lea: r.lea_id,
            source_id: r.source_id,
            site: r.site_id,
            version: r.current_version,
            service_start: r.service_start,
            updated_at: r.updated_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(SessionPage { items, next }))
}

fn url_encode_pairs(pairs: &[(&str, Option<&str>)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if let Some(v) = v {
            let enc: String = v
                .bytes()
                .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
                .collect();
            out.push_str(&format!("{k}={enc}&"));
        }
    }
    out
}
