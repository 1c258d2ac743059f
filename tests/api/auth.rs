//! Authentication (401) and authorisation (403 / 404, never another LEA's data).

use serde_json::Value;

use crate::helpers::{TestApp, outcome, session};
use crate::on_both_backends;

on_both_backends!(unauthenticated_requests_get_401, other_lea_never_sees_data, roles_outside_intake_get_403);

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
