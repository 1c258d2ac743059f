//! SMART Backend Services: token issue with real RS384 / ES384 assertions, every refusal the
//! specification names, scopes enforced per resource type, JWKS by URL from a local server.

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::{Backend, Key, register_partner, repo_path, spawn_app, spawn_app_with};

async fn refused(res: reqwest::Response, status: u16, error: &str) -> String {
    let got = res.status().as_u16();
    assert_eq!(res.headers()["cache-control"], "no-store");
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"], error, "{body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    body["error_description"].as_str().unwrap().to_owned()
}

async fn token_flow(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let id = app.partner_client_id.clone();

    // Discovery.
    let conf: Value = app.client.get(app.url("/.well-known/smart-configuration")).send().await.unwrap().json().await.unwrap();
    assert_eq!(conf["token_endpoint"], app.url("/auth/token"));
    assert_eq!(conf["token_endpoint_auth_signing_alg_values_supported"], serde_json::json!(["RS384", "ES384"]));
    assert!(conf["capabilities"].as_array().unwrap().iter().any(|c| c == "client-confidential-asymmetric"));

    // RS384 and ES384 both work; the scope is narrowed to what the gateway grants (reads).
    for key in [Key::Rs384, Key::Es384] {
        let mut a = app.assertion(&id);
        a.key = key;
        let res = app.token_request(&a.sign(), "system/Encounter.read system/Patient.cruds launch", None).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], "system/Encounter.read system/Patient.rs");
        assert_eq!(body["access_token"].as_str().unwrap().split('.').count(), 3);
    }

    // Refusals.
    let sign = |f: &dyn Fn(&mut crate::helpers::Assertion)| {
        let mut a = app.assertion(&id);
        f(&mut a);
        a.sign()
    };
    let d = refused(app.token_request(&sign(&|a| a.key = Key::Impostor), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("InvalidSignature") || d.contains("signature"), "{d}");
    let d = refused(
        app.token_request(&sign(&|a| a.aud = "https://elsewhere/token".into()), "system/*.read", None).await,
        401,
        "invalid_client",
    )
    .await;
    assert!(d.contains("InvalidAudience"), "{d}");
    let d = refused(app.token_request(&sign(&|a| a.exp_in_secs = -120), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("Expired"), "{d}");
    let d = refused(app.token_request(&sign(&|a| a.exp_in_secs = 3600), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("in the future"), "{d}");
    let d = refused(app.token_request(&sign(&|a| a.kid = Some("rotated-away")), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("no key with kid"), "{d}");
    let d = refused(app.token_request(&sign(&|a| a.client_id = "not-a-client"), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("unknown"), "{d}");
    // RS384 key presented as ES384 (kid of the RSA key, EC signature).
    let d = refused(app.token_request(&sign(&|a| a.kid = Some("test-rs384")), "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("cannot verify"), "{d}");

    // A reused jti is refused; a refused request does not burn its jti.
    let mut a = app.assertion(&id);
    a.jti = "jti-once".into();
    let signed = a.sign();
    refused(app.token_request(&signed, "system/Claim.read", None).await, 400, "invalid_scope").await;
    assert_eq!(app.token_request(&signed, "system/*.read", None).await.status(), 200);
    let d = refused(app.token_request(&signed, "system/*.read", None).await, 401, "invalid_client").await;
    assert!(d.contains("already used"), "{d}");

    // Malformed requests.
    let ok = app.assertion(&id).sign();
    refused(app.token_request(&ok, "", None).await, 400, "invalid_request").await;
    refused(app.token_request(&ok, "system/*.read", Some("MARKETING")).await, 400, "invalid_request").await;
    refused(app.token_request("not.a.jwt", "system/*.read", None).await, 401, "invalid_client").await;
    let res = app
        .client
        .post(app.url("/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=x")
        .send()
        .await
        .unwrap();
    refused(res, 400, "unsupported_grant_type").await;
    let res = app.client.post(app.url("/auth/token")).json(&serde_json::json!({"grant_type": "client_credentials"})).send().await.unwrap();
    refused(res, 400, "invalid_request").await;

    // Access tokens: a forged or tampered one is a 401; a partner's secret-style token too.
    let token = app.smart_token(&id, "system/*.read", None).await;
    let mut tampered = token.clone();
    tampered.pop();
    tampered.push(if token.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(app.get("/fhir/Encounter", &tampered).await.status(), 401);
    assert_eq!(app.get("/fhir/Encounter", "a.b.c").await.status(), 401);

    // Disabled client: no new token, and a token it holds stops working (this one was never
    // used, so no instance has it cached; a cached one works for at most auth_cache_seconds).
    let unused = app.smart_token(&id, "system/*.read", None).await;
    app.store.disable_client(&id, chrono::Utc::now()).await.unwrap();
    refused(app.token_request(&app.assertion(&id).sign(), "system/*.read", None).await, 401, "invalid_client").await;
    assert_eq!(app.get("/fhir/Encounter", &unused).await.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_sqlite() {
    token_flow(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_postgres() {
    token_flow(Backend::Postgres).await;
}

/// Scopes are enforced per resource type before anything else is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_limit_resource_types() {
    let Some(app) = spawn_app(Backend::Sqlite).await else { return };
    let narrow = register_partner(&app.store, &app.settings, "fqhc-demo", Some("system/Encounter.rs")).await;
    let refused_scope = app.token_request(&app.assertion(&narrow).sign(), "system/Patient.read", None).await;
    assert_eq!(refused_scope.status(), 400);
    let token = app.smart_token(&narrow, "system/*.read", None).await;
    for path in ["/fhir/Patient", "/fhir/Patient/abc", "/fhir/Condition?patient=x"] {
        let res = app.get(path, &token).await;
        assert_eq!(res.status(), 403, "{path}");
        let body: Value = res.json().await.unwrap();
        assert!(body["issue"][0]["diagnostics"].as_str().unwrap().contains("scopes"), "{body}");
    }
    // v2 search-only scope: search allowed by scope, read not.
    let search_only = app.smart_token(&narrow, "system/Encounter.s", None).await;
    let res: Value = app.get("/fhir/Encounter/abc", &search_only).await.json().await.unwrap();
    assert!(res["issue"][0]["diagnostics"].as_str().unwrap().contains("do not allow reads"), "{res}");
}

/// A partner whose JWKS lives at a URL: fetched over HTTP from a local server, cached, and
/// refetched when an assertion names a kid the cached copy lacks (key rotation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_and_refetched_on_rotation() {
    let served = web::Data::new(std::sync::Mutex::new(std::fs::read_to_string(repo_path("tests/fixtures/smart/other-jwks.json")).unwrap()));
    let hits = web::Data::new(std::sync::atomic::AtomicUsize::new(0));
    let (s2, h2) = (served.clone(), hits.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(s2.clone()).app_data(h2.clone()).route(
            "/jwks.json",
            web::get().to(|s: web::Data<std::sync::Mutex<String>>, h: web::Data<std::sync::atomic::AtomicUsize>| async move {
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                HttpResponse::Ok().content_type("application/json").body(s.lock().unwrap().clone())
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let running = server.run();
    let handle = running.handle();
    tokio::spawn(running);

    let Some(app) = spawn_app_with(Backend::Sqlite, |s| s.auth.allow_http_jwks = true).await else { return };
    let url = format!("http://127.0.0.1:{port}/jwks.json");
    let creds = wellness_gateway::auth::Credentials { jwks: Some(url), scope: None };
    let id = match wellness_gateway::auth::register(
        &app.store,
        &app.settings,
        "url partner",
        wellness_gateway::auth::Role::Partner,
        Some("fqhc-demo"),
        creds,
    )
    .await
    .unwrap()
    {
        wellness_gateway::auth::Registered::Jwks { client_id, .. } => client_id,
        _ => unreachable!(),
    };
    // The served JWKS has only `other-es384`: our key is unknown -> one refetch, still unknown.
    let res = app.token_request(&app.assertion(&id).sign(), "system/*.read", None).await;
    assert_eq!(res.status(), 401);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 2, "first fetch + one refetch for the unknown kid");
    // The partner rotates its keys; the refetch is rate-limited, so wait it out.
    *served.lock().unwrap() = std::fs::read_to_string(repo_path("tests/fixtures/smart/jwks.json")).unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(app.settings.auth.jwks_refetch_seconds + 1)).await;
    assert_eq!(app.token_request(&app.assertion(&id).sign(), "system/*.read", None).await.status(), 200);
    let after = hits.load(std::sync::atomic::Ordering::SeqCst);
    // Cached now: no further fetch.
    assert_eq!(app.token_request(&app.assertion(&id).sign(), "system/*.read", None).await.status(), 200);
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), after);
    handle.stop(true).await;
}

/// Partners do not authenticate with secrets, and registering one needs a JWKS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partners_need_a_jwks() {
    let Some(app) = spawn_app(Backend::Sqlite).await else { return };
    let creds = wellness_gateway::auth::Credentials::default();
    let err =
        wellness_gateway::auth::register(&app.store, &app.settings, "p", wellness_gateway::auth::Role::Partner, Some("fqhc-demo"), creds)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("--jwks"));
    // A partner row with a secret (as older demo data had) is refused at the door.
    let secret = "legacy-partner-secret";
    app.store.insert_client("legacy", "legacy", "partner", Some("fqhc-demo"), &wellness_gateway::auth::hash_secret(secret)).await.unwrap();
    let res = app.get("/fhir/Encounter", secret).await;
    assert_eq!(res.status(), 401);
    // A JWKS file with a private key is refused.
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("private.json");
    std::fs::write(&private, r#"{"keys":[{"kty":"EC","kid":"k","crv":"P-384","x":"AAAA","y":"AAAA","d":"AAAA"}]}"#).unwrap();
    let creds = wellness_gateway::auth::Credentials { jwks: Some(private.display().to_string()), scope: None };
    assert!(
        wellness_gateway::auth::register(&app.store, &app.settings, "p", wellness_gateway::auth::Role::Partner, Some("fqhc-demo"), creds)
            .await
            .is_err()
    );
}
