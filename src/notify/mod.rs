//! FHIR Subscriptions: rest-hook change notifications to FQHC partners.
//!
//! A partner creates an R4 `Subscription` on `Encounter` (criteria `Encounter` or
//! `Encounter?<search parameters>`), channel `rest-hook`, and receives an `id-only` notification
//! (Subscriptions R5 Backport IG, R4 form: a `history` Bundle whose first entry is a
//! `Parameters` subscription status carrying `events-since-subscription-start`, then the
//! Encounter's URL) whenever an Encounter it may see is created or changed.
//!
//! The path of a change:
//! 1. every Encounter version written is recorded in `fhir_changes` in the same transaction (the
//!    transactional outbox, `store::fhir`);
//! 2. the dispatcher reads the feed, matches each change against every subscription's criteria,
//!    asks the consent decision whether that partner may see the Encounter, queues a delivery per
//!    match and removes the changes, in one transaction;
//! 3. a deliverer takes one subscription at a time under a lease (so its notifications go out in
//!    order, from one instance), judges consent again at delivery time (a notification the
//!    partner may no longer receive is withheld), assigns the next event number (so the numbers a
//!    partner receives have no gaps: a gap means a lost notification), writes the AuditEvent, and
//!    POSTs with reqwest over rustls. A failure is retried with exponential backoff
//!    (`subscriptions.backoff_initial_ms`, doubling, capped) for `retry_hours` (24) after it was
//!    queued, then dead-lettered; admins list and re-drive dead letters. Later notifications of
//!    the same subscription wait behind a failing one (order is kept).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::consent::ConsentRules;
use crate::domain::PurposeOfUse;
use crate::fhir::search::{Criterion, SearchRegistry};
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::serve::Partner;
use crate::settings::Settings;
use crate::store::{ChangeRow, DeliveryRow, Store, StoreError, StoredResource, SubscriptionRow};

/// The backport IG's payload-content extension (on `Subscription.channel._payload`).
pub const PAYLOAD_CONTENT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-payload-content";
/// The subscription-status profile of the R4 notification's first entry.
pub const STATUS_PROFILE: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4";
/// The topic every notification names (an Encounter a partner may see was created or changed).
pub const TOPIC: &str = "urn:wellness-gateway:topic:encounter-changed";

fn bad(expression: &str, text: impl Into<String>) -> OutcomeIssue {
    OutcomeIssue::error(IssueCode::Value, text).at_expression(expression)
}

/// Headers a subscription may not set (the gateway sets them, or they change the request's framing).
const RESERVED_HEADERS: &[&str] = &["host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade"];

/// Whether a URL names localhost or a loopback, private, link-local or unspecified address.
fn internal_host(u: &reqwest::Url) -> bool {
    let Some(host) = u.host_str() else { return true };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.is_unspecified() || (ip.segments()[0] & 0xfe00) == 0xfc00 || (ip.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => host == "localhost" || host.ends_with(".localhost"),
    }
}

/// What a client asked for in a `Subscription` (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// `Encounter?...`.
    pub criteria: String,
    /// The rest-hook URL.
    pub endpoint: String,
    /// `Name: value` headers.
    pub headers: Vec<String>,
    /// `id-only` or `empty`.
    pub payload: String,
    /// The client's reason.
    pub reason: Option<String>,
}

/// Validates a `Subscription` a partner sent.
pub fn parse_subscription(body: &Value, registry: &SearchRegistry, allow_http: bool) -> Result<Requested, Vec<OutcomeIssue>> {
    let mut issues = Vec::new();
    if body["resourceType"] != "Subscription" {
        return Err(vec![bad("resourceType", "the body must be a FHIR Subscription")]);
    }
    if let Some(obj) = body.as_object() {
        for k in obj.keys() {
            if !matches!(k.as_str(), "resourceType" | "id" | "meta" | "status" | "reason" | "criteria" | "channel" | "contact" | "text") {
                issues.push(
                    OutcomeIssue::error(IssueCode::NotSupported, format!("`{k}` is not supported on a Subscription"))
                        .at_expression(k.clone()),
                );
            }
        }
    }
    if !matches!(body["status"].as_str(), None | Some("requested") | Some("active")) {
        issues.push(bad("status", "a new Subscription's status must be `requested` (or `active`)"));
    }
    let criteria = body["criteria"].as_str().unwrap_or_default().to_string();
    match criteria.split_once('?') {
        _ if criteria == "Encounter" => {}
        Some(("Encounter", query)) => match crate::export::type_filter_search("Encounter", query, registry) {
            Ok(_) => {}
            Err(list) => issues.extend(list.into_iter().map(|i| OutcomeIssue { expression: vec!["criteria".into()], ..i })),
        },
        _ => issues
            .push(bad("criteria", "criteria must be `Encounter` or `Encounter?<search parameters>` (only Encounter changes are notified)")),
    }
    let channel = &body["channel"];
    if channel["type"] != "rest-hook" {
        issues
            .push(OutcomeIssue::error(IssueCode::NotSupported, "only channel.type `rest-hook` is supported").at_expression("channel.type"));
    }
    let endpoint = channel["endpoint"].as_str().unwrap_or_default().to_string();
    match reqwest::Url::parse(&endpoint) {
        // The gateway must not be made to post into its own network: loopback, private and
        // link-local addresses are refused (except in development, with allow_http_endpoints).
        Ok(u) if !allow_http && internal_host(&u) => {
            issues.push(bad("channel.endpoint", "the endpoint must be a public host, not a loopback, private or link-local address"));
        }
        Ok(u) if u.scheme() == "https" || (u.scheme() == "http" && allow_http) => {}
        Ok(_) => issues.push(bad("channel.endpoint", "the endpoint must be an https URL")),
        Err(_) => issues.push(bad("channel.endpoint", "channel.endpoint must be an absolute URL")),
    }
    let mut headers = Vec::new();
    for (i, h) in channel["header"].as_array().into_iter().flatten().enumerate() {
        match h.as_str().and_then(|h| h.split_once(':')) {
            Some((name, _)) if RESERVED_HEADERS.iter().any(|r| name.trim().eq_ignore_ascii_case(r)) => {
                issues.push(bad(&format!("channel.header[{i}]"), format!("header `{}` is set by the gateway", name.trim())));
            }
            Some((name, value))
                if reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()).is_ok()
                    && reqwest::header::HeaderValue::from_str(value.trim()).is_ok() =>
            {
                headers.push(format!("{}: {}", name.trim(), value.trim()));
            }
            _ => issues.push(bad(&format!("channel.header[{i}]"), "a header must read `Name: value`")),
        }
    }
    let content = channel["_payload"]["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["url"] == PAYLOAD_CONTENT)
        .and_then(|e| e["valueCode"].as_str());
    let mime_ok = matches!(channel["payload"].as_str(), None | Some("application/fhir+json" | "application/json"));
    if !mime_ok {
        issues.push(bad("channel.payload", "the payload type must be application/fhir+json"));
    }
    let payload = match content {
        Some("id-only") => "id-only",
        Some("empty") => "empty",
        Some("full-resource") => {
            issues.push(
                OutcomeIssue::error(
                    IssueCode::NotSupported,
                    "full-resource payloads are not sent; use id-only and read the resource with your token",
                )
                .at_expression("channel.payload"),
            );
            ""
        }
        Some(other) => {
            issues.push(bad("channel.payload", format!("payload content `{other}` is not supported (id-only or empty)")));
            ""
        }
        // R4 without the backport extension: a payload type means the resource's id is sent
        // (never its content); no payload type, an empty notification.
        None if channel["payload"].is_string() => "id-only",
        None => "empty",
    }
    .to_string();
    if !issues.is_empty() {
        return Err(issues);
    }
    Ok(Requested { criteria, endpoint, headers, payload, reason: body["reason"].as_str().map(str::to_string) })
}

/// A stored subscription as a FHIR R4 `Subscription` (header values are masked).
pub fn render(s: &SubscriptionRow) -> Value {
    let headers: Vec<String> = serde_json::from_str::<Vec<String>>(&s.headers)
        .unwrap_or_default()
        .into_iter()
        .map(|h| h.split_once(':').map(|(n, _)| format!("{n}: ***")).unwrap_or(h))
        .collect();
    let mut channel = json!({ "type": "rest-hook", "endpoint": s.endpoint });
    if s.payload == "id-only" {
        channel["payload"] = json!("application/fhir+json");
    }
    channel["_payload"] = json!({ "extension": [{ "url": PAYLOAD_CONTENT, "valueCode": s.payload }] });
    if !headers.is_empty() {
        channel["header"] = json!(headers);
    }
    let mut r = json!({
        "resourceType": "Subscription",
        "id": s.id,
        "meta": { "lastUpdated": crate::fhir::instant(s.updated_us) },
        "status": s.status,
        "reason": s.reason.clone().unwrap_or_else(|| "Encounter changes".into()),
        "criteria": s.criteria,
        "channel": channel,
        "extension": [{ "url": "urn:wellness-gateway:fhir:extension:events-since-subscription-start", "valueInteger64": s.events.to_string() }],
    });
    if let Some(e) = &s.error {
        r["error"] = json!(e);
    }
    r
}

/// An id-only (or empty) notification: event `number`, about `focus` (`Encounter/<id>`) when
/// given.
pub fn notification(s: &SubscriptionRow, base: &str, number: i64, focus: Option<&str>, at_us: i64) -> Value {
    let mut event = vec![
        json!({ "name": "event-number", "valueString": number.to_string() }),
        json!({ "name": "timestamp", "valueInstant": crate::fhir::instant(at_us) }),
    ];
    let focus = focus.filter(|_| s.payload == "id-only");
    if let Some(f) = focus {
        event.push(json!({ "name": "focus", "valueReference": { "reference": format!("{base}/{f}") } }));
    }
    let status = json!({
        "resourceType": "Parameters",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": { "profile": [STATUS_PROFILE] },
        "parameter": [
            { "name": "subscription", "valueReference": { "reference": format!("{base}/Subscription/{}", s.id) } },
            { "name": "topic", "valueCanonical": TOPIC },
            { "name": "status", "valueCode": "active" },
            { "name": "type", "valueCode": "event-notification" },
            { "name": "events-since-subscription-start", "valueString": number.to_string() },
            { "name": "notification-event", "part": event },
        ],
    });
    let mut entries = vec![json!({ "fullUrl": format!("urn:uuid:{}", status["id"].as_str().unwrap_or_default()), "resource": status })];
    if let Some(f) = focus {
        entries
            .push(json!({ "fullUrl": format!("{base}/{f}"), "request": { "method": "PUT", "url": f }, "response": { "status": "200" } }));
    }
    json!({ "resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(), "type": "history", "timestamp": crate::fhir::instant(at_us), "entry": entries })
}

/// The base URL notifications point at (`auth.token_url`'s origin + `/fhir`, else loopback).
fn fhir_base(settings: &Settings) -> String {
    match settings.auth.token_url.as_deref().and_then(|u| u.strip_suffix("/auth/token")) {
        Some(origin) => format!("{origin}/fhir"),
        None => format!("http://{}:{}/fhir", settings.server.host, settings.server.port),
    }
}

struct Inner {
    store: Store,
    rules: Arc<ConsentRules>,
    registry: Arc<SearchRegistry>,
    settings: Arc<Settings>,
    auditor: crate::audit::Auditor,
    http: reqwest::Client,
    owner: String,
    base: String,
}

/// The dispatcher and deliverers of this instance.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("owner", &self.inner.owner).finish()
    }
}

impl Notifier {
    /// Starts the dispatcher and `subscriptions.workers` deliverers on the current runtime.
    /// `base` is the FHIR base URL notifications name (None: from the settings).
    pub fn spawn(
        store: Store,
        rules: Arc<ConsentRules>,
        registry: Arc<SearchRegistry>,
        settings: Arc<Settings>,
        auditor: crate::audit::Auditor,
        base: Option<String>,
    ) -> anyhow::Result<Notifier> {
        let http = crate::outbound::client(Duration::from_secs(settings.subscriptions.timeout_seconds), "notification")?;
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let base = base.unwrap_or_else(|| fhir_base(&settings));
        let inner = Arc::new(Inner { store, rules, registry, settings, auditor, http, owner, base });
        tokio::spawn(dispatch_loop(inner.clone()));
        for _ in 0..inner.settings.subscriptions.workers {
            tokio::spawn(deliver_loop(inner.clone()));
        }
        Ok(Notifier { inner })
    }
}

fn purpose_of(s: &SubscriptionRow) -> PurposeOfUse {
    PurposeOfUse::parse(&s.purpose).unwrap_or(PurposeOfUse::Treat)
}

/// Which of `resources` each subscription's partner may see now (by id).
async fn permitted(
    inner: &Inner,
    s: &SubscriptionRow,
    resources: &[StoredResource],
) -> Result<Vec<(String, crate::serve::Verdict)>, StoreError> {
    let who = Partner { org: &s.org_id, purpose: purpose_of(s), today: chrono::Utc::now().date_naive() };
    let judged = crate::serve::judge(&inner.store, &inner.rules, who, resources.to_vec()).await?;
    Ok(judged.into_iter().map(|j| (j.resource.id, j.verdict)).collect())
}

async fn dispatch_loop(inner: Arc<Inner>) {
    let poll = Duration::from_millis(inner.settings.subscriptions.poll_ms);
    loop {
        if inner.store.is_closed() {
            break;
        }
        match dispatch_once(&inner).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(_) if inner.store.is_closed() => break,
            Err(e) => tracing::warn!(error = %e, "dispatching changes to subscriptions failed; retrying"),
        }
        tokio::time::sleep(poll).await;
    }
}

/// Fans one page of the change feed out; `true` when there may be more.
async fn dispatch_once(inner: &Inner) -> Result<bool, StoreError> {
    const PAGE: i64 = 500;
    let asked = crate::store::now_us();
    let subs: Vec<SubscriptionRow> = inner.store.subscriptions(None).await?;
    if subs.is_empty() {
        // Nobody subscribed when asked: the changes made before then concern no one (a
        // subscription is told of the changes after its creation).
        if let Some(head) = inner.store.changes_head().await? {
            inner.store.changes_discard(head, asked).await?;
        }
        return Ok(false);
    }
    let changes: Vec<ChangeRow> = inner.store.changes(PAGE).await?;
    if changes.is_empty() {
        return Ok(false);
    }
    let seqs: Vec<i64> = changes.iter().map(|c| c.seq).collect();
    let mut deliveries = Vec::new();
    {
        let mut ids: Vec<String> = changes.iter().map(|c| c.id.clone()).collect();
        ids.sort();
        ids.dedup();
        let refs: Vec<String> = ids.iter().map(|i| format!("Encounter/{i}")).collect();
        let current = inner.store.fhir_read_many(&refs, None).await?;
        let now = crate::store::now_us();
        for s in &subs {
            // Criteria: the changed Encounters that match the subscription's search now.
            let matching: std::collections::HashSet<String> = match s.criteria.split_once('?') {
                Some((_, q)) => {
                    let Ok(mut req) = crate::export::type_filter_search("Encounter", q, &inner.registry) else { continue };
                    req.criteria.push(Criterion::Ids(ids.clone()));
                    req.count = ids.len().max(1);
                    inner.store.fhir_search(&req, None).await?.matches.into_iter().map(|r| r.id).collect()
                }
                None => ids.iter().cloned().collect(),
            };
            let candidates: Vec<StoredResource> = current.iter().filter(|r| matching.contains(&r.id)).cloned().collect();
            if candidates.is_empty() {
                continue;
            }
            let allowed: std::collections::HashSet<String> =
                permitted(inner, s, &candidates).await?.into_iter().filter(|(_, v)| v.permitted).map(|(id, _)| id).collect();
            for c in changes.iter().filter(|c| allowed.contains(&c.id)) {
                deliveries.push(DeliveryRow {
                    seq: 0,
                    subscription_id: s.id.clone(),
                    resource_type: c.resource_type.clone(),
                    resource_id: c.id.clone(),
                    version_id: c.version_id,
                    status: "pending".into(),
                    event_number: None,
                    attempts: 0,
                    next_attempt_us: now,
                    created_us: now,
                    delivered_us: None,
                    last_error: None,
                });
            }
        }
    }
    if inner.store.dispatch_changes(&seqs, &deliveries).await? && !deliveries.is_empty() {
        tracing::debug!(changes = seqs.len(), deliveries = deliveries.len(), "changes dispatched to subscriptions");
    }
    Ok(changes.len() as i64 == PAGE)
}

async fn deliver_loop(inner: Arc<Inner>) {
    let poll = Duration::from_millis(inner.settings.subscriptions.poll_ms);
    loop {
        if inner.store.is_closed() {
            break;
        }
        let now = crate::store::now_us();
        let owner = format!("{}:{}", inner.owner, uuid::Uuid::new_v4().simple());
        match inner.store.subscription_claim(&owner, now, now + LEASE_US).await {
            Ok(Some(s)) => {
                let id = s.id.clone();
                let progressed = match deliver(&inner, s, &owner).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(subscription = %id, error = %e, "delivering notifications failed; retrying");
                        false
                    }
                };
                let _ = inner.store.subscription_release(&id, &owner, crate::store::now_us()).await;
                if progressed {
                    continue;
                }
            }
            Ok(None) => {}
            Err(_) if inner.store.is_closed() => break,
            Err(e) => tracing::warn!(error = %e, "looking for notifications to deliver failed"),
        }
        tokio::time::sleep(poll).await;
    }
}

fn backoff_us(settings: &Settings, attempts: i64) -> i64 {
    exponential_backoff_us(settings.subscriptions.backoff_initial_ms, settings.subscriptions.backoff_max_seconds, attempts)
}

/// The delay before retry number `attempts` (1 = the first retry), in microseconds:
/// `initial_ms` doubling each retry, capped at `max_seconds`. Shared by every outbox.
pub fn exponential_backoff_us(initial_ms: u64, max_seconds: u64, attempts: i64) -> i64 {
    let initial = i64::try_from(initial_ms).unwrap_or(5_000) * 1_000;
    let cap = i64::try_from(max_seconds).unwrap_or(3_600).saturating_mul(1_000_000);
    initial.saturating_mul(1i64 << attempts.clamp(1, 40).saturating_sub(1)).min(cap.max(initial))
}

/// How long a deliverer holds a subscription without renewing.
const LEASE_US: i64 = 60_000_000;

/// Sends a subscription's due notifications in order, stopping at the first failure; whether
/// anything was attempted.
async fn deliver(inner: &Inner, mut s: SubscriptionRow, owner: &str) -> Result<bool, StoreError> {
    let window = i64::try_from(inner.settings.subscriptions.retry_hours).unwrap_or(24).saturating_mul(3_600_000_000);
    let mut progressed = false;
    for mut d in inner.store.deliveries_pending(&s.id, 100).await? {
        let now = crate::store::now_us();
        if d.next_attempt_us > now {
            break;
        }
        // Renew the lease before each send; another instance took the subscription over when
        // this one stalled: stop (it sends in order from here).
        if !inner.store.subscription_renew(&s.id, owner, now + LEASE_US).await? {
            return Ok(progressed);
        }
        progressed = true;
        // Consent at delivery time.
        let current = inner.store.fhir_read_many(&[format!("{}/{}", d.resource_type, d.resource_id)], None).await?;
        let verdict = permitted(inner, &s, &current).await?.into_iter().next().map(|(_, v)| v);
        let allowed = verdict.as_ref().is_some_and(|v| v.permitted);
        if !allowed && d.event_number.is_none() {
            d.status = "withheld".into();
            inner.store.delivery_update(&d).await?;
            continue;
        }
        if d.attempts == 0 {
            // The retry window starts at the first attempt (deliveries queued behind a failing
            // one get their own 24 hours).
            d.created_us = now;
        }
        let number = match d.event_number {
            Some(n) => n,
            None => inner.store.delivery_number(&s.id, d.seq).await?,
        };
        d.event_number = Some(number);
        let focus = format!("{}/{}", d.resource_type, d.resource_id);
        if let Some(v) = verdict.filter(|v| v.permitted) {
            // The notification discloses that this Encounter changed: audited before it is sent.
            let verdicts = vec![(d.resource_type.clone(), d.resource_id.clone(), v)];
            let event = crate::audit::event(
                &crate::audit::Disclosure {
                    client_id: &s.client_id,
                    org: &s.org_id,
                    token_id: None,
                    purpose: purpose_of(&s),
                    interaction: crate::audit::Interaction::Notify,
                    request_id: None,
                    query: format!("Subscription/{} event {number}", s.id),
                    verdicts: &verdicts,
                    count: None,
                },
                chrono::Utc::now(),
            );
            if let Err(e) = inner.auditor.record(event).await {
                tracing::warn!(subscription = %s.id, error = %e, "notification not sent: the audit trail could not be written");
                return Ok(false);
            }
        }
        let body = notification(&s, &inner.base, number, allowed.then_some(focus.as_str()), now);
        let mut req = inner.http.post(&s.endpoint).header("Content-Type", "application/fhir+json").body(body.to_string());
        for h in serde_json::from_str::<Vec<String>>(&s.headers).unwrap_or_default() {
            if let Some((n, v)) = h.split_once(':') {
                req = req.header(n.trim(), v.trim());
            }
        }
        let result = match req.send().await {
            Ok(res) if res.status().is_success() => Ok(()),
            Ok(res) => Err(format!("the endpoint answered {}", res.status())),
            Err(e) => Err(format!("the endpoint could not be reached: {}", if e.is_timeout() { "timeout" } else { "connection failed" })),
        };
        d.attempts += 1;
        match result {
            Ok(()) => {
                d.status = "delivered".into();
                d.delivered_us = Some(crate::store::now_us());
                d.last_error = None;
                inner.store.delivery_update(&d).await?;
                if s.status != "active" {
                    inner.store.subscription_health(&s.id, "active", None, crate::store::now_us()).await?;
                    s.status = "active".into();
                }
            }
            Err(why) => {
                let dead = crate::store::now_us() - d.created_us >= window;
                d.status = if dead { "dead".into() } else { "pending".into() };
                d.next_attempt_us = crate::store::now_us() + backoff_us(&inner.settings, d.attempts);
                d.last_error = Some(why.clone());
                inner.store.delivery_update(&d).await?;
                tracing::info!(subscription = %s.id, event = number, attempts = d.attempts, dead, error = %why, "notification failed");
                inner.store.subscription_health(&s.id, "error", Some(&why), crate::store::now_us()).await?;
                if !dead {
                    // Order is kept: later notifications wait behind this one.
                    return Ok(true);
                }
                s.status = "error".into();
            }
        }
    }
    Ok(progressed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Result<SearchRegistry, Box<dyn std::error::Error>> {
        Ok(SearchRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))?)
    }

    fn sub(criteria: &str, endpoint: &str) -> Value {
        json!({ "resourceType": "Subscription", "status": "requested", "reason": "sync", "criteria": criteria,
            "channel": { "type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json", "header": ["Authorization: Bearer x"] } })
    }

    #[test]
    fn subscriptions_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let r = registry()?;
        let ok = parse_subscription(&sub("Encounter?status=finished", "https://ehr.example/hook"), &r, false)
            .map_err(|issues| format!("refused: {issues:?}"))?;
        assert_eq!((ok.payload.as_str(), ok.headers.len()), ("id-only", 1));
        let err = |v: Value, http: bool| parse_subscription(&v, &r, http).unwrap_err()[0].expression.clone();
        assert_eq!(err(sub("Patient", "https://x"), false), ["criteria"]);
        assert_eq!(err(sub("Encounter?bogus=1", "https://x"), false), ["criteria"]);
        assert_eq!(err(sub("Encounter", "http://x"), false), ["channel.endpoint"]);
        assert!(parse_subscription(&sub("Encounter", "http://127.0.0.1:1/x"), &r, true).is_ok());
        for internal in [
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://10.1.2.3/x",
            "https://192.168.0.9/x",
            "https://[::1]/x",
            "https://169.254.169.254/x",
        ] {
            assert_eq!(err(sub("Encounter", internal), false), ["channel.endpoint"], "{internal}");
        }
        let mut host = sub("Encounter", "https://x");
        host["channel"]["header"] = json!(["Host: intranet"]);
        assert_eq!(err(host, false), ["channel.header[0]"]);
        let mut full = sub("Encounter", "https://x");
        full["channel"]["_payload"] = json!({ "extension": [{ "url": PAYLOAD_CONTENT, "valueCode": "full-resource" }] });
        assert_eq!(err(full, false), ["channel.payload"]);
        let mut ws = sub("Encounter", "https://x");
        ws["channel"]["type"] = json!("websocket");
        assert_eq!(err(ws, false), ["channel.type"]);
        Ok(())
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut s = Settings::default();
        s.subscriptions.backoff_initial_ms = 100;
        s.subscriptions.backoff_max_seconds = 1;
        assert_eq!(backoff_us(&s, 1), 100_000);
        assert_eq!(backoff_us(&s, 2), 200_000);
        assert_eq!(backoff_us(&s, 10), 1_000_000);
        assert_eq!(backoff_us(&s, 1000), 1_000_000);
    }
}
