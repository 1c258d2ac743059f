//! `spawn_app(Backend)`: the real server on a random port with a fresh database per test
//! (a temp-file SQLite database, or a fresh PostgreSQL database when `TEST_DATABASE_URL` is set),
//! and a real HTTP client.

use std::path::{Path, PathBuf};
use std::sync::Once;

use secrecy::SecretString;
use serde_json::{Value, json};
use wellness_gateway::auth::{Credentials, Registered, Role, register, register_client};
use wellness_gateway::settings::{LogFormat, Settings};
use wellness_gateway::startup::Application;
use wellness_gateway::store::Store;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

static INIT: Once = Once::new();

fn init_once() {
    INIT.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        if std::env::var("TEST_LOG").is_ok() {
            wellness_gateway::telemetry::init(&wellness_gateway::settings::LogSettings {
                format: LogFormat::Pretty,
                level: "debug".into(),
            });
        }
    });
}

/// Settings from `config/default.toml` adapted for a test: port 0, one worker, given database.
pub fn test_settings(database_url: &str) -> Settings {
    let path = repo_path("config/default.toml");
    let figment = figment::Figment::from(figment::providers::Serialized::defaults(Settings::default()))
        .merge(<figment::providers::Toml as figment::providers::Format>::file_exact(&path));
    let mut s = Settings::from_figment(figment, Some(path)).expect("config/default.toml loads");
    s.server.port = 0;
    s.server.workers = 2;
    s.database.url = SecretString::from(database_url.to_owned());
    s.database.max_connections = 4;
    s.rules.schemas_dir = repo_path("schemas");
    s.rules.mappings_dir = repo_path("mappings");
    s
}

/// A database for one test; PostgreSQL databases are dropped when this is dropped.
pub struct TestDb {
    pub url: String,
    /// Export files of this test's instances.
    pub files: tempfile::TempDir,
    _dir: Option<tempfile::TempDir>,
    pg_admin: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(backend: Backend) -> Option<TestDb> {
        init_once();
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
                Some(TestDb { url, files: tempfile::tempdir().expect("temp dir"), _dir: Some(dir), pg_admin: None })
            }
            Backend::Postgres => {
                let admin = std::env::var("TEST_DATABASE_URL").ok()?;
                let name = format!("wg_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.expect("connect to TEST_DATABASE_URL");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create test database");
                let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin.clone());
                Some(TestDb {
                    url: format!("{base}/{name}"),
                    files: tempfile::tempdir().expect("temp dir"),
                    _dir: None,
                    pg_admin: Some((admin, name)),
                })
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_admin.take() {
            // Drop runs outside async; use a private runtime on a plain thread.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
                rt.block_on(async move {
                    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.ok()?;
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(&mut conn).await.ok()
                })
            })
            .join();
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub settings: Settings,
    pub db: TestDb,
    pub submitter_token: String,
    pub other_submitter_token: String,
    pub admin_token: String,
    /// An access token of `partner_client_id` (SMART, ES384 assertion, `system/*.read`).
    pub partner_token: String,
    /// The FQHC partner registered with `tests/fixtures/smart/jwks.json`.
    pub partner_client_id: String,
    handle: actix_web::dev::ServerHandle,
}

/// Starts the app on `backend`; `None` when that backend is not available (no TEST_DATABASE_URL).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// As [`spawn_app`], with a settings tweak.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> Option<TestApp> {
    let db = TestDb::new(backend).await?;
    let mut settings = test_settings(&db.url);
    settings.export.dir = db.files.path().to_path_buf();
    settings.export.poll_seconds = 1;
    tweak(&mut settings);
    Some(start(settings, db, true).await)
}

/// Starts the app on an existing database (restart tests).
pub async fn start(settings: Settings, db: TestDb, register: bool) -> TestApp {
    let app = Application::build(settings.clone()).await.expect("application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let store = Store::connect(&settings.database).await.expect("test store connects");
    let mut tokens = Vec::new();
    let mut partner_client_id = String::new();
    if register {
        for (role, org) in [(Role::Submitter, Some("lea-demo")), (Role::Submitter, Some("lea-other")), (Role::Admin, None)] {
            tokens.push(register_client(&store, &settings, "test client", role, org).await.expect("client registers").secret);
        }
        partner_client_id = register_partner(&store, &settings, "fqhc-demo", None).await;
    } else {
        tokens.resize(3, String::new());
    }
    let mut app = TestApp {
        address,
        client: reqwest::Client::builder().build().expect("http client"),
        store,
        settings,
        db,
        submitter_token: tokens[0].clone(),
        other_submitter_token: tokens[1].clone(),
        admin_token: tokens[2].clone(),
        partner_token: String::new(),
        partner_client_id,
        handle,
    };
    // (Over plain HTTP only; the TLS test talks to the server with its own client.)
    if register && !app.settings.server.tls.enabled {
        app.partner_token = app.smart_token(&app.partner_client_id.clone(), "system/*.read", None).await;
    }
    app
}

/// Registers a partner of `fqhc` with the fixture JWKS (or `scope`); returns its client id.
pub async fn register_partner(store: &Store, settings: &Settings, fqhc: &str, scope: Option<&str>) -> String {
    let creds =
        Credentials { jwks: Some(repo_path("tests/fixtures/smart/jwks.json").display().to_string()), scope: scope.map(str::to_owned) };
    match register(store, settings, "test partner", Role::Partner, Some(fqhc), creds).await.expect("partner registers") {
        Registered::Jwks { client_id, .. } => client_id,
        Registered::Secret(_) => panic!("a partner gets no secret"),
    }
}

/// Which fixture key signs an assertion.
#[derive(Debug, Clone, Copy)]
pub enum Key {
    Rs384,
    Es384,
    /// A P-384 key that is not in the client's JWKS, presented under the kid of one that is.
    Impostor,
}

/// What to put in a client assertion (defaults: a valid one).
pub struct Assertion<'a> {
    pub client_id: &'a str,
    pub aud: String,
    pub key: Key,
    pub kid: Option<&'a str>,
    pub exp_in_secs: i64,
    pub jti: String,
}

impl Assertion<'_> {
    pub fn sign(&self) -> String {
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        let (alg, pem, default_kid) = match self.key {
            Key::Rs384 => (Algorithm::RS384, "rs384-private.pem", "test-rs384"),
            Key::Es384 => (Algorithm::ES384, "es384-private.pem", "test-es384"),
            Key::Impostor => (Algorithm::ES384, "other-es384-private.pem", "test-es384"),
        };
        let pem = std::fs::read(repo_path(&format!("tests/fixtures/smart/{pem}"))).unwrap();
        let key = match alg {
            Algorithm::RS384 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let mut header = Header::new(alg);
        header.kid = Some(self.kid.unwrap_or(default_kid).to_string());
        let now = jsonwebtoken::get_current_timestamp() as i64;
        let claims = json!({
            "iss": self.client_id, "sub": self.client_id, "aud": self.aud,
            "exp": now + self.exp_in_secs, "jti": self.jti,
        });
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

impl TestApp {
    /// A valid assertion for `client_id` signed with the ES384 fixture key.
    pub fn assertion<'a>(&self, client_id: &'a str) -> Assertion<'a> {
        Assertion {
            client_id,
            aud: self.url("/auth/token"),
            key: Key::Es384,
            kid: None,
            exp_in_secs: 240,
            jti: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// POSTs a token request; returns the raw response.
    pub async fn token_request(&self, assertion: &str, scope: &str, purpose: Option<&str>) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("scope", scope),
            ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
            ("client_assertion", assertion),
        ];
        if let Some(p) = purpose {
            form.push(("purpose_of_use", p));
        }
        let body = serde_urlencoded::to_string(&form).unwrap();
        self.client
            .post(self.url("/auth/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("token request sent")
    }

    /// An access token for a registered partner (panics when refused).
    pub async fn smart_token(&self, client_id: &str, scope: &str, purpose: Option<&str>) -> String {
        let res = self.token_request(&self.assertion(client_id).sign(), scope, purpose).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "token refused: {body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

impl TestApp {
    pub async fn stop(self) -> (Settings, TestDb) {
        self.handle.stop(true).await;
        self.store.close().await;
        (self.settings, self.db)
    }

    /// Submits a session as the lea-demo submitter; its id.
    pub async fn submit(&self, s: &Value) -> String {
        let res = self.post_json("/api/v1/sessions", &self.submitter_token, s).await;
        assert!(res.status().is_success(), "{}", res.status());
        res.json::<Value>().await.expect("receipt")["id"].as_str().expect("id").to_owned()
    }

    /// Records the example consent form for `student` naming `recipients` (payment included).
    pub async fn payment_consent(&self, student: &str, source_id: &str, recipients: Value) {
        let mut form: Value =
            serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).expect("form")).expect("json");
        form["student"]["district_id"] = serde_json::json!(student);
        form["source_id"] = serde_json::json!(source_id);
        form["recipients"] = recipients;
        let res = self.post_json("/api/v1/consents", &self.submitter_token, &form).await;
        assert!(res.status().is_success(), "{}", res.status());
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> reqwest::Response {
        self.post_raw(path, token, "application/json", serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_raw(&self, path: &str, token: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.client.get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }
}

/// Runs raw SQL against a test database of either backend (to age rows, break the chain...).
pub async fn exec_sql(db_url: &str, sql: &str) {
    use sqlx::Connection;
    if db_url.starts_with("sqlite") {
        let mut c = sqlx::SqliteConnection::connect(db_url).await.expect("connect to the test SQLite file");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.expect("SQL runs");
    } else {
        let mut c = sqlx::PgConnection::connect(db_url).await.expect("connect to the test database");
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())).execute(&mut c).await.expect("SQL runs");
    }
}

/// The issue's example session, as a JSON value.
pub fn session() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/session.json")).unwrap()).unwrap()
}

/// The example session with another source id.
pub fn session_with_id(source_id: &str) -> Value {
    let mut s = session();
    s["source_id"] = json!(source_id);
    s
}

/// Asserts a response is an OperationOutcome with `status` and returns its issues.
pub async fn outcome(res: reqwest::Response, status: u16) -> Vec<Value> {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    let ct = res.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    assert!(ct.starts_with("application/fhir+json"), "content type {ct}");
    let body: Value = res.json().await.expect("JSON body");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    body["issue"].as_array().cloned().unwrap_or_default()
}

/// Whether any issue has this expression and a diagnostics containing `text`.
pub fn has_issue(issues: &[Value], expression: &str, text: &str) -> bool {
    issues.iter().any(|i| {
        i["expression"].as_array().is_some_and(|e| e.iter().any(|x| x == expression))
            && i["diagnostics"].as_str().is_some_and(|d| d.contains(text))
    })
}

/// Runs each named `async fn(TestApp)` on SQLite and, when available, PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::helpers::spawn_app($crate::helpers::Backend::Sqlite).await.expect("sqlite always available");
                super::$name(app).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match $crate::helpers::spawn_app($crate::helpers::Backend::Postgres).await {
                    Some(app) => super::$name(app).await,
                    None => eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL"),
                }
            }
        }
    )* };
}

/// A copy of the shipped mappings in a temp dir, for tests that break or override one.
pub fn copy_mappings() -> tempfile::TempDir {
    fn copy(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.path().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&repo_path("mappings"), dir.path());
    dir
}

/// One request an [`Endpoint`] received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status it answered.
    pub status: u16,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl Received {
    /// The body as JSON (`Null` when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A party outside the product (a partner's webhook, a payer's clearinghouse) as a real local
/// HTTP server: records every POST to `/hook`; answers 500 while `fail` > 0.
pub struct Endpoint {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    pub fail: std::sync::Arc<std::sync::Mutex<u32>>,
    _server: actix_web::dev::ServerHandle,
}

/// Starts an [`Endpoint`] that fails the first `fail_first` requests.
pub async fn endpoint(fail_first: u32) -> Endpoint {
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let fail = Arc::new(Mutex::new(fail_first));
    let (r, f) = (received.clone(), fail.clone());
    let server = actix_web::HttpServer::new(move || {
        let (r, f) = (r.clone(), f.clone());
        actix_web::App::new().route(
            "/hook",
            actix_web::web::post().to(move |req: actix_web::HttpRequest, body: actix_web::web::Bytes| {
                let (r, f) = (r.clone(), f.clone());
                async move {
                    let status = {
                        let mut left = f.lock().unwrap();
                        if *left > 0 {
                            *left -= 1;
                            500
                        } else {
                            200
                        }
                    };
                    let authorization = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    r.lock().unwrap().push(Received { status, authorization, body: body.to_vec() });
                    actix_web::HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
                }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    Endpoint { url: format!("http://127.0.0.1:{port}/hook"), received, fail, _server: handle }
}

/// An ISA header from the clearinghouse to the gateway.
pub fn isa(control: u32) -> String {
    format!("ISA*00*          *00*          *ZZ*CLEARINGHOUSE  *ZZ*WELLNESSGW     *261130*1200*^*00501*{control:09}*0*T*:~\n")
}

/// A 277CA with one patient level per (CLM01, category:status, payer claim number).
pub fn ack_277(claims: &[(&str, &str, Option<&str>)]) -> String {
    let mut b = String::from(
        "BHT*0085*08*ACK1*20261130*1200*TH~\nHL*1**20*1~\nNM1*PR*2*MEDI-CAL*****PI*610442~\nTRN*1*ACK1~\nDTP*050*D8*20261130~\nDTP*009*D8*20261130~\nHL*2*1*21*1~\nNM1*41*2*WELLNESS GATEWAY*****46*WELLNESSGW~\nTRN*2*1~\nSTC*A1:20*20261130*WQ*1~\nHL*3*2*19*1~\nNM1*85*2*DEMO COMMUNITY HEALTH CENTER*****XX*1600000016~\n",
    );
    for (i, (pcn, stc, icn)) in claims.iter().enumerate() {
        b.push_str(&format!("HL*{}*3*PT~\nNM1*QC*1*LOPEZ*ANA****MI*91234567A~\nTRN*2*{pcn}~\nSTC*{stc}*20261130*WQ*245.67~\n", 4 + i));
        if let Some(n) = icn {
            b.push_str(&format!("REF*1K*{n}~\n"));
        }
        b.push_str("DTP*472*D8*20261102~\n");
    }
    let segments = 2 + b.matches('~').count();
    format!(
        "{}GS*HN*CLEARINGHOUSE*WELLNESSGW*20261130*1200*78*X*005010X214~\nST*277*0001*005010X214~\n{b}SE*{segments}*0001~\nGE*1*78~\nIEA*1*000000078~\n",
        isa(78)
    )
}
