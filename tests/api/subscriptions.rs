//! FHIR Subscriptions end to end: a real local HTTP server as the partner's endpoint (failing the
//! first deliveries), notifications in order with gap-free event numbers, consent checked when
//! the change is dispatched and again when it is delivered, dead letters and re-drive.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, Endpoint, TestApp, endpoint, repo_path, session_with_id, spawn_app_with};
use wellness_gateway::settings::Settings;

fn fast(s: &mut Settings) {
    s.subscriptions.allow_http_endpoints = true;
    s.subscriptions.backoff_initial_ms = 50;
    s.subscriptions.backoff_max_seconds = 1;
    s.subscriptions.poll_ms = 50;
    s.server.auth_cache_seconds = 0;
}

fn session_of(source_id: &str, student: &str) -> Value {
    let mut s = session_with_id(source_id);
    s["student"]["district_id"] = json!(student);
    s
}

impl TestApp {
    async fn subscribe(&self, criteria: &str, endpoint: &str) -> Value {
        let body = json!({
            "resourceType": "Subscription", "status": "requested", "reason": "keep our EHR current", "criteria": criteria,
            "channel": { "type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                "_payload": { "extension": [{ "url": wellness_gateway::notify::PAYLOAD_CONTENT, "valueCode": "id-only" }] },
                "header": ["Authorization: Bearer partner-secret"] },
        });
        let res = self.client.post(self.url("/fhir/Subscription")).bearer_auth(&self.partner_token).json(&body).send().await.unwrap();
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    async fn new_session(&self, source_id: &str, student: &str) -> String {
        let res = self.post_json("/api/v1/sessions", &self.submitter_token, &session_of(source_id, student)).await;
        assert!(res.status().is_success());
        res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn consent(&self, student: &str, source_id: &str) -> String {
        let mut form: Value =
            serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).unwrap()).unwrap();
        form["student"]["district_id"] = json!(student);
        form["source_id"] = json!(source_id);
        let res = self.post_json("/api/v1/consents", &self.submitter_token, &form).await;
        assert!(res.status().is_success());
        res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }
}

/// (event number, focus) of a notification.
fn event_of(bundle: &Value) -> (i64, Option<String>) {
    let status = &bundle["entry"][0]["resource"];
    assert_eq!(status["resourceType"], "Parameters");
    let param = |name: &str| status["parameter"].as_array().unwrap().iter().find(|p| p["name"] == name).cloned().unwrap_or(Value::Null);
    let event = param("notification-event");
    let number: i64 = param("events-since-subscription-start")["valueString"].as_str().unwrap().parse().unwrap();
    let focus = event["part"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "focus")
        .and_then(|p| p["valueReference"]["reference"].as_str())
        .map(|r| r.rsplit('/').next().unwrap().to_owned());
    (number, focus)
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivered(e: &Endpoint) -> Vec<(i64, Option<String>)> {
    e.received.lock().unwrap().iter().filter(|r| r.status == 200).map(|r| event_of(&r.json())).collect()
}

async fn notifications(backend: Backend) {
    let Some(app) = spawn_app_with(backend, fast).await else { return };
    let hook = endpoint(2).await;
    let consent = app.consent("S1002345", "CONSENT-SUB").await;
    let sub = app.subscribe("Encounter", &hook.url).await;
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["channel"]["header"][0], "Authorization: ***", "header values are not echoed");
    let sub_id = sub["id"].as_str().unwrap().to_owned();

    // Three sessions of the consented student: the first two deliveries fail and are retried;
    // everything arrives in order, numbered 1, 2, 3.
    let mut encounters = Vec::new();
    for i in 0..3 {
        encounters.push(app.new_session(&format!("SUB-{i}"), "S1002345").await);
    }
    // A student without consent: never notified.
    app.new_session("SUB-B", "S2000001").await;
    wait_for("three notifications", || delivered(&hook).len() >= 3).await;
    let got = delivered(&hook);
    assert_eq!(got.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(got.iter().map(|(_, f)| f.clone().unwrap()).collect::<Vec<_>>(), encounters);
    assert_eq!(hook.received.lock().unwrap().iter().filter(|r| r.status == 500).count(), 2, "two failed attempts");
    assert!(hook.received.lock().unwrap().iter().all(|r| r.authorization.as_deref() == Some("Bearer partner-secret")));
    let bundle = hook.received.lock().unwrap()[2].json();
    assert_eq!(bundle["type"], "history");
    assert!(bundle["entry"][1].get("resource").is_none(), "id-only: no resource content");

    // The subscription shows its count; the partner reads it, another client does not.
    let s: Value = app.get(&format!("/fhir/Subscription/{sub_id}"), &app.partner_token).await.json().await.unwrap();
    assert_eq!(s["status"], "active");
    assert_eq!(app.get(&format!("/fhir/Subscription/{sub_id}"), &app.submitter_token).await.status(), 404);

    // Consent revoked: a new session of that student is not notified.
    app.post_json(&format!("/api/v1/consents/{consent}/$revoke"), &app.submitter_token, &json!({})).await;
    app.new_session("SUB-3", "S1002345").await;
    // (Give the dispatcher time to see that change while consent is revoked.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Consent again (a new form): the next change is number 4 — no gap for the withheld one.
    app.consent("S1002345", "CONSENT-SUB-2").await;
    let last = app.new_session("SUB-4", "S1002345").await;
    wait_for("the fourth notification", || delivered(&hook).len() >= 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = delivered(&hook);
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[3], (4, Some(last)));

    // Deleted: nothing more is sent.
    assert_eq!(
        app.client.delete(app.url(&format!("/fhir/Subscription/{sub_id}"))).bearer_auth(&app.partner_token).send().await.unwrap().status(),
        204
    );
    app.new_session("SUB-5", "S1002345").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(delivered(&hook).len(), 4);

    // Each delivered notification is on the audit trail.
    let events: Value = app.get("/fhir/AuditEvent?_count=1000", &app.admin_token).await.json().await.unwrap();
    let notify = events["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["subtype"][0]["code"] == "operation").count();
    assert!(notify >= 4, "{notify} notification events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_sqlite() {
    notifications(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_postgres() {
    notifications(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_checked_again_at_delivery_and_dead_letters_are_redriven() {
    let app = spawn_app_with(Backend::Sqlite, fast).await.unwrap();
    let hook = endpoint(1_000_000).await;
    let consent = app.consent("S1002345", "CONSENT-DL").await;
    let sub = app.subscribe("Encounter?status=finished", &hook.url).await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    app.new_session("DL-1", "S1002345").await;
    wait_for("a failed attempt", || !hook.received.lock().unwrap().is_empty()).await;
    let s: Value = app.get(&format!("/fhir/Subscription/{sub_id}"), &app.partner_token).await.json().await.unwrap();
    assert_eq!(s["status"], "error");
    assert!(s["error"].as_str().unwrap().contains("500"));
    // Past the retry window: the next failure dead-letters it.
    let url = app.db.url.clone();
    crate::helpers::exec_sql(&url, "UPDATE subscription_deliveries SET created_us = 0").await;
    let dead = || async {
        let v: Value = app.get("/api/v1/subscriptions/dead-letters", &app.admin_token).await.json().await.unwrap();
        v["dead_letters"].as_array().unwrap().len()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while dead().await == 0 {
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.get("/api/v1/subscriptions/dead-letters", &app.partner_token).await.status(), 403);
    // The student withdraws consent; the endpoint recovers; an admin re-drives.
    app.post_json(&format!("/api/v1/consents/{consent}/$revoke"), &app.submitter_token, &json!({})).await;
    *hook.fail.lock().unwrap() = 0;
    let res: Value =
        app.post_json(&format!("/api/v1/subscriptions/{sub_id}/$redrive"), &app.admin_token, &json!({})).await.json().await.unwrap();
    assert_eq!(res["redriven"], 1);
    wait_for("the re-driven notification", || !delivered(&hook).is_empty()).await;
    // Number 1 was assigned at the first attempt; consent no longer permits naming the
    // Encounter, so it arrives without a focus.
    assert_eq!(delivered(&hook), [(1, None)]);
    assert_eq!(dead().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_validated() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let body = json!({ "resourceType": "Subscription", "criteria": "Encounter", "reason": "x",
        "channel": { "type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json" } });
    let res = app.client.post(app.url("/fhir/Subscription")).bearer_auth(&app.partner_token).json(&body).send().await.unwrap();
    let issues = crate::helpers::outcome(res, 400).await;
    assert_eq!(issues[0]["expression"][0], "channel.endpoint", "http endpoints are refused by default");
    let res = app.client.post(app.url("/fhir/Subscription")).bearer_auth(&app.admin_token).json(&body).send().await.unwrap();
    crate::helpers::outcome(res, 403).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_clients_subscriptions_fall_silent() {
    let app = spawn_app_with(Backend::Sqlite, fast).await.unwrap();
    let hook = endpoint(0).await;
    app.consent("S1002345", "CONSENT-DISABLED").await;
    app.subscribe("Encounter", &hook.url).await;
    app.new_session("DIS-1", "S1002345").await;
    wait_for("the first notification", || delivered(&hook).len() == 1).await;
    assert!(app.store.disable_client(&app.partner_client_id, chrono::Utc::now()).await.unwrap());
    app.new_session("DIS-2", "S1002345").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(delivered(&hook).len(), 1, "a disabled client is told nothing more");
}
