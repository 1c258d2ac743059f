//! Health, OpenAPI, fallbacks, TLS, restart.

use serde_json::Value;

use crate::helpers::{Backend, TestApp, TestDb, outcome, repo_path, session, spawn_app_with, start, test_settings};
use crate::on_both_backends;

on_both_backends!(health_openapi_and_fallbacks, restart_keeps_the_data);

async fn health_openapi_and_fallbacks(app: TestApp) {
    let live = app.client.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(live.status().as_u16(), 200);
    let ready: Value = app.client.get(app.url("/health/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(ready["status"], "ready");

    let doc: Value = app.client.get(app.url("/api/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in ["/api/v1/sessions", "/api/v1/sessions/$batch", "/api/v1/sessions/{id}", "/api/v1/sessions/{id}/versions/{version}"] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from OpenAPI");
    }
    let session_schema = &doc["components"]["schemas"]["Session"];
    assert_eq!(session_schema["required"][0], "source_id");
    assert_eq!(
        doc["paths"]["/api/v1/sessions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Session"
    );
    assert!(doc["components"]["schemas"]["Session_clinician"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());

    outcome(app.client.get(app.url("/api/v1/nothing-here")).send().await.unwrap(), 404).await;
    outcome(app.client.delete(app.url("/api/v1/sessions")).bearer_auth(&app.admin_token).send().await.unwrap(), 405).await;
    // A well-formed incoming request id is echoed; a hostile one is replaced.
    let res = app.client.get(app.url("/health/live")).header("X-Request-Id", "abc-12345678").send().await.unwrap();
    assert_eq!(res.headers()["x-request-id"], "abc-12345678");
    let res = app.client.get(app.url("/health/live")).header("X-Request-Id", "<script>").send().await.unwrap();
    assert_ne!(res.headers()["x-request-id"], "<script>");
}

async fn restart_keeps_the_data(app: TestApp) {
    let receipt: Value = app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await.json().await.unwrap();
    let token = app.submitter_token.clone();
    let (settings, db) = app.stop().await;
    let app = start(settings, db, false).await;
    let got = app.get(&format!("/api/v1/sessions/{}", receipt["id"].as_str().unwrap()), &token).await;
    assert_eq!(got.status().as_u16(), 200);
    let res: Value = app.post_json("/api/v1/sessions", &token, &session()).await.json().await.unwrap();
    assert_eq!(res["status"], "duplicate");
}

#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.tls.enabled = true;
        s.server.tls.cert_path = Some(repo_path("tests/fixtures/tls/cert.pem"));
        s.server.tls.key_path = Some(repo_path("tests/fixtures/tls/key.pem"));
    })
    .await
    .unwrap();
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    let ca = std::fs::read(repo_path("tests/fixtures/tls/ca.pem")).unwrap();
    let client = reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(&ca).unwrap()]).build().unwrap();
    let res = client.get(format!("https://localhost:{port}/health/live")).send().await.expect("HTTPS request");
    assert_eq!(res.status().as_u16(), 200);
    // Plain HTTP to the TLS port does not get data.
    assert!(!app.client.get(format!("http://127.0.0.1:{port}/health/live")).send().await.map(|r| r.status().is_success()).unwrap_or(false));
}

#[tokio::test]
async fn plain_http_off_loopback_is_refused_at_start() {
    let db = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut settings = test_settings(&db.url);
    settings.server.host = "0.0.0.0".into();
    assert!(settings.check().unwrap_err().to_string().contains("server.host"));
}
