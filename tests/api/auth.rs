//! Authentication (401) and authorisation (403 / 404, never another LEA's data).

use serde_json::Value;

use wellness_gateway::auth::{Role, register_client};

use crate::helpers::{Backend, TestApp, outcome, session, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(unauthenticated_requests_get_401, other_lea_never_sees_data, roles_outside_intake_get_403);

/// A disabled client is refused at once without the secret cache, and within
/// `auth_cache_seconds` with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_clients_are_refused() {
    for cache in [0, 1] {
        let app = spawn_app_with(Backend::Sqlite, |s| s.server.auth_cache_seconds = cache).await.unwrap();
        let client = register_client(&app.store, &app.settings, "to disable", Role::Submitter, Some("lea-demo")).await.unwrap();
        assert_eq!(app.get("/api/v1/sessions", &client.secret).await.status().as_u16(), 200);
        assert!(app.store.disable_client(&client.client_id, chrono::Utc::now()).await.unwrap());
        assert!(!app.store.disable_client(&client.client_id, chrono::Utc::now()).await.unwrap(), "already disabled");
        if cache > 0 {
            // Remembered for up to a second.
            assert_eq!(app.get("/api/v1/sessions", &client.secret).await.status().as_u16(), 200);
            tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        }
        outcome(app.get("/api/v1/sessions", &client.secret).await, 401).await;
        // Other clients are unaffected.
        assert_eq!(app.get("/api/v1/sessions", &app.submitter_token).await.status().as_u16(), 200);
    }
}

async fn unauthenticated_requests_get_401(app: TestApp) {
    let res = app.client.post(app.url("/api/v1/sessions")).json(&session()).send().await.unwrap();
    assert!(res.headers().get("www-authenticate").is_some());
    outcome(res, 401).await;
    for token in ["wrong", "wg_0000000000000000000000000000000000000000000000000000000000000000", ""] {
        outcome(app.get("/api/v1/sessions", token).await, 401).await;
    }
    let res = app.client.get(app.url("/api/v1/sessions")).header("Authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    outcome(res, 401).await;
    // Health stays open.
    assert_eq!(app.client.get(app.url("/health/live")).send().await.unwrap().status().as_u16(), 200);
}

async fn other_lea_never_sees_data(app: TestApp) {
    let receipt: Value = app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await.json().await.unwrap();
    let id = receipt["id"].as_str().unwrap();
    let other = &app.other_submitter_token;
    // Reading another LEA's session looks exactly like a missing one.
    let a = outcome(app.get(&format!("/api/v1/sessions/{id}"), other).await, 404).await;
    let b = outcome(app.get("/api/v1/sessions/00000000-0000-0000-0000-000000000000", other).await, 404).await;
    assert_eq!(a[0]["code"], b[0]["code"]);
    outcome(app.get(&format!("/api/v1/sessions/{id}/versions/1/raw"), other).await, 404).await;
    // Listing shows only the client's own LEA; asking for another LEA or its site is refused.
    let page: Value = app.get("/api/v1/sessions", other).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    outcome(app.get("/api/v1/sessions?lea=lea-demo", other).await, 403).await;
    outcome(app.get("/api/v1/sessions?site=site-demo-hs", other).await, 403).await;
    // Submitting a record for another LEA is refused and stores nothing.
    outcome(app.post_json("/api/v1/sessions", other, &session()).await, 403).await;
    let mut mine = session();
    mine["source_id"] = serde_json::json!("OTHER-1");
    let res: Value = app
        .client
        .get(app.url(&format!("/api/v1/sessions/{id}")))
        .bearer_auth(&app.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["versions"].as_array().unwrap().len(), 1, "the refused submission changed nothing");
    // The admin sees every LEA.
    let page: Value = app.get("/api/v1/sessions", &app.admin_token).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}

async fn roles_outside_intake_get_403(app: TestApp) {
    outcome(app.post_json("/api/v1/sessions", &app.partner_token, &session()).await, 403).await;
    outcome(app.get("/api/v1/sessions", &app.partner_token).await, 403).await;
}
