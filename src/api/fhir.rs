//! `/fhir`: a FHIR R4 REST API over the stored resources: `metadata`, read, vread, instance
//! history and search with keyset paging.
//!
//! Access: `admin` clients read everything; a `submitter` reads what its own LEA's sessions
//! produced; an FQHC `partner` (SMART access token) reads what consent permits: every resource
//! it would receive is judged by [`crate::serve`], and a withheld one is answered exactly like
//! one that does not exist (404, left out of searches, counts, `_include` and history).

use std::time::{Duration, SystemTime};

use actix_web::http::header::{self, EntityTag, HttpDate};
use actix_web::{HttpMessage, HttpRequest, HttpResponse, get, web};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::auth::scope::Interaction;
use crate::auth::{PURPOSE_HEADER, Principal, Role};
use crate::error::ApiError;
use crate::fhir::search::{Cursor, SERVED_TYPES, SearchRegistry, is_id};
use crate::fhir::{FHIR_JSON, IssueCode, OutcomeIssue};
use crate::serve::Partner;
use crate::startup::AppState;
use crate::store::{ReadScope, StoredResource};

/// What this client may read: an LEA scope (admins: every LEA; submitters: their own), or, for
/// an FQHC partner, whatever consent permits (every resource is judged, see [`crate::serve`]).
enum Access<'a> {
    Scoped(ReadScope<'a>),
    Partner(Partner<'a>),
}

impl<'a> Access<'a> {
    fn store_scope(&self) -> ReadScope<'a> {
        match self {
            Access::Scoped(s) => *s,
            Access::Partner(_) => None,
        }
    }
}

fn access<'a>(who: &'a Principal, req: &HttpRequest) -> Result<Access<'a>, ApiError> {
    match who.role {
        Role::Admin => Ok(Access::Scoped(None)),
        Role::Submitter => match who.org.as_deref() {
            Some(lea) => Ok(Access::Scoped(Some(lea))),
            None => Err(ApiError::Forbidden("this submitter client is not bound to an LEA".into())),
        },
        Role::Partner => {
            let org = who.org.as_deref().ok_or_else(|| ApiError::Forbidden("this partner client is not bound to an FQHC".into()))?;
            let header = req.headers().get(PURPOSE_HEADER).map(|v| v.to_str().unwrap_or("?"));
            let purpose = who.purpose(header)?;
            Ok(Access::Partner(Partner { org, purpose, today: chrono::Utc::now().date_naive() }))
        }
        role => Err(ApiError::Forbidden(format!("a {} client may not read FHIR data", role.as_str()))),
    }
}

/// Every resource judged for the audit trail: (type, id, verdict).
type Verdicts = Vec<(String, String, crate::serve::Verdict)>;

/// For a partner: only what consent permits, in order (redacted and labelled), with every
/// verdict; for other clients: the rows as they are.
async fn disclose(state: &AppState, access: &Access<'_>, rows: Vec<StoredResource>) -> Result<(Vec<StoredResource>, Verdicts), ApiError> {
    disclose_with(state, access, rows, crate::serve::Prefetched::default()).await
}

/// As [`disclose`], with some decision facts already read with the rows.
async fn disclose_with(
    state: &AppState,
    access: &Access<'_>,
    rows: Vec<StoredResource>,
    prefetched: crate::serve::Prefetched,
) -> Result<(Vec<StoredResource>, Verdicts), ApiError> {
    let Access::Partner(p) = access else { return Ok((rows, Vec::new())) };
    let judged = crate::serve::judge_with(&state.store, &state.pipeline.consent, *p, rows, prefetched).await?;
    let verdicts = judged.iter().map(|j| (j.resource.resource_type.clone(), j.resource.id.clone(), j.verdict.clone())).collect();
    Ok((judged.into_iter().filter(|j| j.verdict.permitted).map(|j| j.resource).collect(), verdicts))
}

/// Writes the AuditEvent of a partner request; the response is sent only after it is durable
/// (a failure answers 503 and discloses nothing). Other clients are not audited here.
async fn audit(
    state: &AppState,
    who: &Principal,
    req: &HttpRequest,
    access: &Access<'_>,
    interaction: crate::audit::Interaction,
    verdicts: &Verdicts,
    count: Option<i64>,
) -> Result<(), ApiError> {
    let Access::Partner(p) = access else { return Ok(()) };
    let token_id = match &who.grant {
        crate::auth::Grant::Smart { token_id, .. } => Some(token_id.as_str()),
        crate::auth::Grant::Secret => None,
    };
    let d = crate::audit::Disclosure {
        client_id: &who.client_id,
        org: p.org,
        token_id,
        purpose: p.purpose,
        interaction,
        request_id: super::extractors::request_id(req),
        query: req.uri().to_string(),
        verdicts,
        count,
    };
    Ok(state.auditor.record(crate::audit::event(&d, chrono::Utc::now())).await?)
}

fn served_type(ty: &str) -> Result<&'static str, ApiError> {
    SERVED_TYPES.iter().find(|t| **t == ty).copied().ok_or_else(|| {
        ApiError::NotFound(format!("resource type `{ty}` is not served here; see /fhir/metadata ({})", SERVED_TYPES.join(", ")))
    })
}

/// The checks every instance-level interaction starts with: a served type, a well-formed id, and
/// what this client may read.
fn instance<'a>(ty: &str, id: &str, who: &'a Principal, req: &HttpRequest) -> Result<(&'static str, Access<'a>), ApiError> {
    let ty = served_type(ty)?;
    who.require_scope(ty, Interaction::Read)?;
    if !is_id(id) {
        return Err(ApiError::NotFound(format!("`{id}` is not a FHIR id")));
    }
    Ok((ty, access(who, req)?))
}

/// `http(s)://host/fhir`, as the client addressed us.
pub(crate) fn base_url(req: &HttpRequest) -> String {
    let info = req.connection_info();
    format!("{}://{}/fhir", info.scheme(), info.host())
}

/// An HTTP date (whole seconds) from microseconds since the Unix epoch.
pub(crate) fn http_date(us: i64) -> HttpDate {
    let secs = u64::try_from(us.div_euclid(1_000_000)).unwrap_or_default();
    HttpDate::from(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn etag(version_id: i64) -> EntityTag {
    EntityTag::new_weak(version_id.to_string())
}

/// `304 Not Modified` when `If-None-Match` names this version.
fn not_modified(req: &HttpRequest, r: &StoredResource) -> bool {
    match req.get_header::<header::IfNoneMatch>() {
        Some(header::IfNoneMatch::Any) => true,
        Some(header::IfNoneMatch::Items(tags)) => tags.iter().any(|t| t.weak_eq(&etag(r.version_id))),
        None => false,
    }
}

fn resource_response(req: &HttpRequest, r: StoredResource) -> Result<HttpResponse, ApiError> {
    if r.deleted {
        return Err(ApiError::Gone(format!("{}/{} was deleted (version {})", r.resource_type, r.id, r.version_id)));
    }
    let mut res = if not_modified(req, &r) { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    res.insert_header(header::ETag(etag(r.version_id))).insert_header(header::LastModified(http_date(r.last_updated_us)));
    if not_modified(req, &r) {
        return Ok(res.finish());
    }
    Ok(res.content_type(FHIR_JSON).body(r.content))
}

/// The server's CapabilityStatement: exactly the interactions and search parameters implemented.
#[utoipa::path(get, path = "/fhir/metadata", tag = "fhir", responses((status = 200, description = "CapabilityStatement")))]
#[get("/fhir/metadata")]
pub async fn metadata(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let body = capability_statement(&state.pipeline.search, &base_url(&req));
    HttpResponse::Ok().content_type(FHIR_JSON).body(body.to_string())
}

/// Builds the CapabilityStatement (not schema-validated: the official schema's `FHIRVersion`
/// enum stops at 4.0.0, see `schemas/fhir/ORIGIN.md`).
pub fn capability_statement(registry: &SearchRegistry, base: &str) -> serde_json::Value {
    let resources: Vec<serde_json::Value> = SERVED_TYPES
        .iter()
        .map(|ty| {
            let mut params: Vec<serde_json::Value> = registry
                .common()
                .iter()
                .map(|(name, url)| {
                    let kind = if name == "_id" { "token" } else { "date" };
                    serde_json::json!({ "name": name, "definition": url, "type": kind })
                })
                .collect();
            params.extend(registry.params_of(ty).map(
                |p| serde_json::json!({ "name": p.name, "definition": p.url, "type": p.kind.as_str(), "documentation": p.documentation }),
            ));
            let includes: Vec<String> =
                crate::fhir::search::INCLUDES.iter().filter(|(src, _)| src == ty).map(|(src, p)| format!("{src}:{p}")).collect();
            let mut r = serde_json::json!({
                "type": ty,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{ty}"),
                "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "history-instance"}, {"code": "search-type"}],
                "versioning": "versioned",
                "readHistory": true,
                "updateCreate": false,
                "conditionalRead": "not-match",
                "searchParam": params,
            });
            if !includes.is_empty() {
                r["searchInclude"] = serde_json::json!(includes);
            }
            if *ty == "Patient" {
                r["operation"] = serde_json::json!([{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export" }]);
            }
            if *ty == "Consent" {
                // Recorded by LEAs (submitters) and admins; never disclosed to partners.
                if let Some(i) = r["interaction"].as_array_mut() {
                    i.extend([serde_json::json!({"code": "create"}), serde_json::json!({"code": "update"})]);
                }
                r["documentation"] = "Privacy consents (scope patient-privacy). Created and updated by LEAs and admins; not disclosed to partners.".into();
            }
            r
        })
        .chain(std::iter::once(serde_json::json!({
            "type": "Group",
            "profile": "http://hl7.org/fhir/StructureDefinition/Group",
            "documentation": "Bulk export cohorts: one Group per school site a partner serves (id = the site id) and one for the whole partnership (id = the FQHC id). Members are the students with a session at those sites.",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "operation": [{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export" }],
        })))
        .chain(std::iter::once(serde_json::json!({
            "type": "Subscription",
            "profile": "http://hl7.org/fhir/StructureDefinition/Subscription",
            "documentation": "FQHC partners: rest-hook notifications (id-only, Subscriptions Backport IG R4 form) when an Encounter they may see is created or changed. Criteria: Encounter or Encounter?<search parameters>. Delete sets status off.",
            "interaction": [{"code": "create"}, {"code": "read"}, {"code": "search-type"}, {"code": "delete"}],
        })))
        .chain(std::iter::once(serde_json::json!({
            "type": "AuditEvent",
            "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
            "documentation": "Admin clients only: one event per partner request, hash-chained.",
            "interaction": [{"code": "read"}, {"code": "search-type"}],
            "searchParam": [{ "name": "patient", "type": "reference", "definition": "http://hl7.org/fhir/SearchParameter/AuditEvent-patient" }],
        })))
        .collect();
    serde_json::json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "wellness-gateway",
        "kind": "instance",
        "software": { "name": "wellness-gateway", "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "School-based counselling sessions as FHIR R4 records", "url": base },
        "fhirVersion": "4.0.1",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "documentation": "Read-only. Searches are strict: unknown parameters and modifiers answer 400. Paging uses opaque keyset cursors in `next` links. `_count` up to 1000 (default 50); `_sort` by `_lastUpdated`, `-_lastUpdated` or `_id`; `_summary=count`.",
            "security": {
                "cors": false,
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{ "url": "token", "valueUri": format!("{}/auth/token", base.strip_suffix("/fhir").unwrap_or(base)) }]
                }],
                "service": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR" }] }],
                "description": "FQHC partners: SMART Backend Services (client_credentials with an RS384/ES384 client assertion at /auth/token; system/*.read or v2 system/<Type>.rs scopes). Other clients: bearer secrets issued per client (`wellness-gateway clients add`); admin clients read everything, a submitter reads its own LEA's records. A partner reads what consent permits for the purpose of use of its request (X-Purpose-Of-Use or the token's purpose, default TREAT); withheld resources are indistinguishable from absent ones."
            },
            "resource": resources,
            "operation": [{ "name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export" }],
        }],
    })
}

#[derive(Serialize)]
struct Link {
    relation: &'static str,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntrySearch {
    mode: &'static str,
}

#[derive(Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntryResponse {
    status: &'static str,
    etag: String,
    last_modified: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry<'a> {
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    search: Option<EntrySearch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response: Option<EntryResponse>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Bundle<'a> {
    resource_type: &'static str,
    id: String,
    meta: serde_json::Value,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
    link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    entry: Vec<Entry<'a>>,
}

fn raw(content: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(content).map_err(|e| ApiError::Internal(anyhow::anyhow!("stored resource is not JSON: {e}")))
}

fn bundle_json(kind: &'static str, total: Option<i64>, link: Vec<Link>, entry: Vec<Entry<'_>>) -> Result<HttpResponse, ApiError> {
    let bundle = Bundle {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: serde_json::json!({ "lastUpdated": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true) }),
        kind,
        total,
        link,
        entry,
    };
    let body = serde_json::to_vec(&bundle).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(HttpResponse::Ok().content_type(FHIR_JSON).body(body))
}

fn query_pairs(req: &HttpRequest) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(req.query_string())
        .map_err(|e| ApiError::bad_request(IssueCode::Structure, "query", format!("the query string could not be read: {e}")))
}

/// Search (`GET /fhir/{type}?...`).
#[utoipa::path(get, path = "/fhir/{type}", tag = "fhir",
    params(("type" = String, Path, description = "resource type")),
    responses((status = 200, description = "searchset Bundle"), (status = 400, description = "unknown or malformed parameter", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/fhir/{type}")]
pub async fn search(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let ty = served_type(&path)?;
    who.require_scope(ty, Interaction::Search)?;
    let access = access(&who, &req)?;
    let scope = access.store_scope();
    let pairs = query_pairs(&req)?;
    let query = state.pipeline.search.parse(ty, &pairs).map_err(ApiError::BadRequest)?;
    let base = base_url(&req);
    let link_url = |extra: Option<(&str, String)>| {
        let mut params = query.link_params.clone();
        if let Some((k, v)) = extra {
            params.push((k.to_string(), v));
        }
        let q = serde_urlencoded::to_string(&params).unwrap_or_default();
        if q.is_empty() { format!("{base}/{ty}") } else { format!("{base}/{ty}?{q}") }
    };
    if query.summary_count {
        let n = match &access {
            Access::Partner(p) => {
                let (n, verdicts) = crate::serve::count(&state.store, &state.pipeline.consent, *p, &query).await?;
                audit(&state, &who, &req, &access, crate::audit::Interaction::Count, &verdicts, Some(n)).await?;
                n
            }
            Access::Scoped(_) => state.store.fhir_count(&query, scope).await?,
        };
        return bundle_json("searchset", Some(n), vec![Link { relation: "self", url: link_url(None) }], Vec::new());
    }
    let mut verdicts = Vec::new();
    let page = match &access {
        Access::Partner(p) => {
            let page = crate::serve::search(&state.store, &state.pipeline.consent, *p, &query).await?;
            verdicts = page.verdicts;
            crate::store::SearchPage { matches: page.matches, next: page.next }
        }
        Access::Scoped(_) => state.store.fhir_search(&query, scope).await?,
    };
    let mut included = Vec::new();
    if !query.include.is_empty() && !page.matches.is_empty() {
        let ids: Vec<String> = page.matches.iter().map(|r| r.id.clone()).collect();
        let mut refs = Vec::new();
        for param in &query.include {
            refs.extend(state.store.fhir_references(ty, param, &ids).await?);
        }
        refs.sort();
        refs.dedup();
        // Included types outside the token's scopes are left out, like anything consent withholds.
        refs.retain(|r| r.split_once('/').is_some_and(|(t, _)| who.require_scope(t, Interaction::Read).is_ok()));
        let (kept, judged) = disclose(&state, &access, state.store.fhir_read_many(&refs, scope).await?).await?;
        included = kept;
        verdicts.extend(judged);
    }
    audit(&state, &who, &req, &access, crate::audit::Interaction::Search, &verdicts, None).await?;
    let mut links = vec![Link { relation: "self", url: link_url(query.cursor.as_ref().map(|c: &Cursor| ("_cursor", c.encode()))) }];
    if let Some(next) = &page.next {
        links.push(Link { relation: "next", url: link_url(Some(("_cursor", next.encode()))) });
    }
    let mut entries = Vec::with_capacity(page.matches.len() + included.len());
    for (r, mode) in page.matches.iter().map(|r| (r, "match")).chain(included.iter().map(|r| (r, "include"))) {
        entries.push(Entry {
            full_url: format!("{base}/{}/{}", r.resource_type, r.id),
            resource: Some(raw(&r.content)?),
            search: Some(EntrySearch { mode }),
            request: None,
            response: None,
        });
    }
    bundle_json("searchset", None, links, entries)
}

/// Read the current version (`GET /fhir/{type}/{id}`); 410 when deleted.
#[utoipa::path(get, path = "/fhir/{type}/{id}", tag = "fhir",
    params(("type" = String, Path, description = "resource type"), ("id" = String, Path, description = "resource id")),
    responses((status = 200, description = "the resource"), (status = 304, description = "If-None-Match matched"),
        (status = 404, description = "no such resource", body = crate::fhir::OperationOutcome),
        (status = 410, description = "deleted", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/fhir/{type}/{id}")]
pub async fn read(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    let (ty, access) = instance(&ty, &id, &who, &req)?;
    no_query(&req)?;
    let not_found = || ApiError::NotFound(format!("{ty}/{id} is not known"));
    let (kept, verdicts) = match &access {
        // A partner's read brings the decision facts along (one query, like anyone's read).
        Access::Partner(_) => match state.store.fhir_read_with_facts(ty, &id).await? {
            Some((r, sessions, consents)) => {
                disclose_with(
                    &state,
                    &access,
                    vec![r],
                    crate::serve::Prefetched { sessions, consents, memo: Some(state.read_memo.clone()) },
                )
                .await?
            }
            None => (Vec::new(), Vec::new()),
        },
        Access::Scoped(scope) => (state.store.fhir_read(ty, &id, *scope).await?.into_iter().collect(), Vec::new()),
    };
    audit(&state, &who, &req, &access, crate::audit::Interaction::Read, &verdicts, None).await?;
    resource_response(&req, kept.into_iter().next().ok_or_else(not_found)?)
}

/// Read one version (`GET /fhir/{type}/{id}/_history/{vid}`).
#[utoipa::path(get, path = "/fhir/{type}/{id}/_history/{vid}", tag = "fhir",
    params(("type" = String, Path, description = "resource type"), ("id" = String, Path, description = "resource id"), ("vid" = String, Path, description = "version id")),
    responses((status = 200, description = "that version"), (status = 404, description = "no such version", body = crate::fhir::OperationOutcome),
        (status = 410, description = "that version is a deletion", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/fhir/{type}/{id}/_history/{vid}")]
pub async fn vread(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id, vid) = path.into_inner();
    let (ty, access) = instance(&ty, &id, &who, &req)?;
    no_query(&req)?;
    let not_found = || ApiError::NotFound(format!("{ty}/{id} has no version {vid:?}"));
    let version: i64 = vid.parse().map_err(|_| not_found())?;
    let found = state.store.fhir_vread(ty, &id, version, access.store_scope()).await?;
    // A partner is told "no such version" for a withheld one, and for a resource it may not see.
    let (kept, verdicts) = disclose(&state, &access, found.into_iter().collect()).await?;
    audit(&state, &who, &req, &access, crate::audit::Interaction::Vread, &verdicts, None).await?;
    resource_response(&req, kept.into_iter().next().ok_or_else(not_found)?)
}

/// Instance history, newest first (`GET /fhir/{type}/{id}/_history`).
#[utoipa::path(get, path = "/fhir/{type}/{id}/_history", tag = "fhir",
    params(("type" = String, Path, description = "resource type"), ("id" = String, Path, description = "resource id")),
    responses((status = 200, description = "history Bundle"), (status = 404, description = "no such resource", body = crate::fhir::OperationOutcome)),
    security(("bearer" = [])))]
#[get("/fhir/{type}/{id}/_history")]
pub async fn history(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (ty, id) = path.into_inner();
    let (ty, access) = instance(&ty, &id, &who, &req)?;
    let scope = access.store_scope();
    let mut count: i64 = 50;
    let mut before: Option<i64> = None;
    let mut link_params = Vec::new();
    for (k, v) in query_pairs(&req)? {
        match k.as_str() {
            "_count" => {
                count =
                    v.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
                        ApiError::bad_request(IssueCode::Value, "_count", "`_count` must be a whole number from 1 to 1000")
                    })?;
                link_params.push((k, v));
            }
            "_cursor" => {
                before = Some(
                    v.parse()
                        .map_err(|_| ApiError::bad_request(IssueCode::Value, "_cursor", "`_cursor` is not a cursor this server issued"))?,
                )
            }
            _ => {
                return Err(ApiError::BadRequest(vec![
                    OutcomeIssue::error(IssueCode::NotSupported, format!("unknown parameter `{k}`; history supports _count"))
                        .at_expression(k),
                ]));
            }
        }
    }
    let rows = match access {
        // A partner gets the versions it may see; every version is judged (histories are short).
        Access::Partner(_) => {
            let all = state.store.fhir_history(ty, &id, before, i64::MAX, scope).await?;
            let versions: Vec<i64> = all.iter().map(|r| r.version_id).collect();
            let (mut kept, verdicts) = disclose(&state, &access, all).await?;
            kept.truncate(usize::try_from(count + 1).unwrap_or(usize::MAX));
            // Audit each version by its version id: the refused ones and those sent (the
            // look-ahead version only decides whether a next link exists).
            let sent: std::collections::HashSet<i64> =
                kept.iter().take(usize::try_from(count).unwrap_or(usize::MAX)).map(|r| r.version_id).collect();
            let verdicts: Verdicts = verdicts
                .into_iter()
                .zip(versions)
                .filter(|((_, _, v), ver)| !v.permitted || sent.contains(ver))
                .map(|((t, i, v), ver)| (t, format!("{i}/_history/{ver}"), v))
                .collect();
            audit(&state, &who, &req, &access, crate::audit::Interaction::History, &verdicts, None).await?;
            kept
        }
        Access::Scoped(_) => state.store.fhir_history(ty, &id, before, count + 1, scope).await?,
    };
    if rows.is_empty() && before.is_none() {
        return Err(ApiError::NotFound(format!("{ty}/{id} is not known")));
    }
    let base = base_url(&req);
    let url = |extra: Option<String>| {
        let mut p = link_params.clone();
        if let Some(c) = extra {
            p.push(("_cursor".into(), c));
        }
        let q = serde_urlencoded::to_string(&p).unwrap_or_default();
        if q.is_empty() { format!("{base}/{ty}/{id}/_history") } else { format!("{base}/{ty}/{id}/_history?{q}") }
    };
    let mut links = vec![Link { relation: "self", url: url(before.map(|b| b.to_string())) }];
    let more = rows.len() > usize::try_from(count).unwrap_or(usize::MAX);
    let rows = &rows[..rows.len().min(usize::try_from(count).unwrap_or(usize::MAX))];
    if more && let Some(last) = rows.last() {
        links.push(Link { relation: "next", url: url(Some(last.version_id.to_string())) });
    }
    let mut entries = Vec::with_capacity(rows.len());
    for r in rows {
        let modified = r.last_updated().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        entries.push(Entry {
            full_url: format!("{base}/{ty}/{id}"),
            resource: if r.deleted { None } else { Some(raw(&r.content)?) },
            search: None,
            request: Some(EntryRequest { method: if r.deleted { "DELETE" } else { "PUT" }, url: format!("{ty}/{id}") }),
            response: Some(EntryResponse {
                status: match (r.deleted, r.version_id) {
                    (true, _) => "204 No Content",
                    (false, 1) => "201 Created",
                    _ => "200 OK",
                },
                etag: format!("W/\"{}\"", r.version_id),
                last_modified: modified,
            }),
        });
    }
    bundle_json("history", None, links, entries)
}

/// Read and vread take no parameters except `_format=json`.
fn no_query(req: &HttpRequest) -> Result<(), ApiError> {
    for (k, v) in query_pairs(req)? {
        let json = k == "_format" && matches!(v.as_str(), "json" | "application/json" | "application/fhir+json");
        if !json {
            return Err(ApiError::BadRequest(vec![
                OutcomeIssue::error(IssueCode::NotSupported, format!("unknown parameter `{k}` on a read")).at_expression(k),
            ]));
        }
    }
    Ok(())
}
