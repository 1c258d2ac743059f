//! Claims end to end on the real server: the claim worker turns billable sessions into claims,
//! amendments into cancellations, frequency-7 replacements and frequency-8 voids; finance builds
//! X12 batches (837I for the FQHC PPS visit, 837P for the fee schedule) whose files the CI step
//! checks with pyx12 (`target/x12-out/`); the same session sent again and again, or by two
//! instances at once, never has more than one active claim.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, ack_277, endpoint, exec_sql, isa, repo_path, session_with_id, spawn_app_with};
use wellness_gateway::auth::{Role, register_client};
use wellness_gateway::settings::Clearinghouse;

async fn finance_token(app: &TestApp) -> String {
    register_client(&app.store, &app.settings, "finance", Role::Finance, None).await.expect("finance client").secret
}

async fn submit(app: &TestApp, s: &Value) -> String {
    let res = app.post_json("/api/v1/sessions", &app.submitter_token, s).await;
    assert!(res.status().is_success(), "{}", res.status());
    res.json::<Value>().await.expect("receipt")["id"].as_str().expect("id").to_owned()
}

async fn consent(app: &TestApp, student: &str, source_id: &str, recipients: Value) {
    let mut form: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).expect("form")).expect("json");
    form["student"]["district_id"] = json!(student);
    form["source_id"] = json!(source_id);
    form["recipients"] = recipients;
    let res = app.post_json("/api/v1/consents", &app.submitter_token, &form).await;
    assert!(res.status().is_success(), "{}", res.status());
}

async fn claims_of(app: &TestApp, token: &str, session: &str) -> Vec<Value> {
    let res = app.get(&format!("/api/v1/claims?session={session}"), token).await;
    assert_eq!(res.status().as_u16(), 200);
    res.json::<Vec<Value>>().await.expect("claims")
}

/// Waits until the session's claims satisfy `done` (the worker polls every second).
async fn wait_claims(app: &TestApp, token: &str, session: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = claims_of(app, token, session).await;
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "claims of {session} never settled: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn active(claims: &[Value]) -> Vec<&Value> {
    claims.iter().filter(|c| c["active"] == json!(true)).collect()
}

/// Writes a built file where `.ci/x12-check.sh` finds it.
fn keep_x12(name: &str, text: &str) {
    let dir = repo_path("target/x12-out");
    std::fs::create_dir_all(&dir).expect("x12 output folder");
    std::fs::write(dir.join(format!("{name}.x12")), text).expect("x12 file written");
}

async fn build_batches(app: &TestApp, token: &str) -> Vec<Value> {
    let res = app.client.post(app.url("/api/v1/claims/batches")).bearer_auth(token).send().await.expect("request");
    let status = res.status().as_u16();
    let body: Value = res.json().await.expect("json");
    assert!(status == 201 || status == 200, "{status} {body}");
    body["batches"].as_array().cloned().unwrap_or_default()
}

async fn x12_of(app: &TestApp, token: &str, batch: &Value) -> String {
    let res = app.get(batch["x12"].as_str().expect("x12 link"), token).await;
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "application/edi-x12");
    res.text().await.expect("text")
}

fn with_minutes(mut s: Value, minutes: i64) -> Value {
    let start = chrono::DateTime::parse_from_rfc3339(s["service"]["start"].as_str().expect("start")).expect("start");
    s["service"]["end"] = json!((start + chrono::Duration::minutes(minutes)).to_rfc3339());
    s
}

async fn claim_lifecycle(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = finance_token(&app).await;
    let tag = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };

    // An FQHC visit (LCSW, in scope) and a fee-schedule service (school counsellor).
    let visit = session_with_id("CLAIM-VISIT-1");
    let mut counsel = session_with_id("CLAIM-FEE-1");
    counsel["site"] = json!("site-demo-ms");
    counsel["student"]["district_id"] = json!("S2000001");
    counsel["clinician"]["credential"] = json!("PPS-school-counselor");
    // Names X12 cannot carry as typed: transliterated, delimiters dropped (never a failed batch).
    counsel["student"]["family_name"] = json!("Peña*Ruíz");
    counsel["student"]["given_name"] = json!("José~María");
    let visit_id = submit(&app, &visit).await;
    let fee_id = submit(&app, &counsel).await;
    // Not billable yet: no payment consent. The worker settles both versions without a claim.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(claims_of(&app, &finance, &visit_id).await.is_empty());
    // Consents arrive: the held sessions are looked at again and claimed.
    consent(&app, "S1002345", "CONSENT-CLAIM-1", json!(["fqhc-demo"])).await;
    let mut lea_payment = json!(["lea-demo"]);
    consent(&app, "S2000001", "CONSENT-CLAIM-2", lea_payment.take()).await;
    let c = wait_claims(&app, &finance, &visit_id, |c| c.len() == 1).await;
    assert_eq!(c[0]["program"], json!("medi-cal-fqhc-pps"));
    assert_eq!(c[0]["status"], json!("ready"));
    assert_eq!(c[0]["frequency"], json!("1"));
    assert_eq!(c[0]["charge_cents"], json!(24567));
    let first_visit_claim = c[0]["id"].as_str().expect("id").to_owned();
    let c = wait_claims(&app, &finance, &fee_id, |c| c.len() == 1).await;
    assert_eq!(c[0]["program"], json!("cybhi-fee-schedule"));

    // The FHIR Claim, for finance only.
    let res = app.get(&format!("/fhir/Claim/{first_visit_claim}"), &finance).await;
    assert_eq!(res.status().as_u16(), 200);
    let fhir: Value = res.json().await.expect("claim");
    assert_eq!(fhir["resourceType"], json!("Claim"));
    assert_eq!(fhir["type"]["coding"][0]["code"], json!("institutional"));
    assert_eq!(fhir["item"][0]["productOrService"]["coding"][0]["code"], json!("T1015"));
    assert_eq!(fhir["item"][1]["productOrService"]["coding"][0]["code"], json!("90834"));
    assert_eq!(fhir["total"]["value"], json!(245.67));
    for token in [&app.submitter_token, &app.partner_token] {
        assert_eq!(app.get(&format!("/fhir/Claim/{first_visit_claim}"), token).await.status().as_u16(), 403);
        assert_eq!(app.get("/api/v1/claims", token).await.status().as_u16(), 403);
    }
    let bundle: Value = app.get(&format!("/fhir/Claim?encounter=Encounter/{visit_id}"), &finance).await.json().await.expect("bundle");
    assert_eq!(bundle["total"], json!(1));

    // The same session again: nothing new. Amended before it was sent: the ready claim is
    // withdrawn and an original for the new version takes its place.
    submit(&app, &visit).await;
    let amended = with_minutes(visit.clone(), 60);
    submit(&app, &amended).await;
    let c = wait_claims(&app, &finance, &visit_id, |c| c.len() == 2).await;
    let act = active(&c);
    assert_eq!(act.len(), 1);
    assert_eq!(act[0]["frequency"], json!("1"));
    assert_eq!(act[0]["session_version"], json!(2));
    let old: Value = app.get(&format!("/api/v1/claims/{first_visit_claim}"), &finance).await.json().await.expect("claim");
    assert_eq!(old["status"], json!("cancelled"));
    assert_eq!(old["events"].as_array().map(Vec::len), Some(2), "{old}");
    assert_eq!(old["lines"][1]["code"], json!("90834"));

    // Finance batches: one 837I (FQHC, Medi-Cal) and one 837P (LEA, fee schedule).
    let batches = build_batches(&app, &finance).await;
    assert_eq!(batches.len(), 2, "{batches:?}");
    let mut by_impl: HashMap<String, Value> = HashMap::new();
    for b in batches {
        by_impl.insert(b["implementation"].as_str().expect("impl").to_owned(), b);
    }
    let inst = &by_impl["005010X223A2"];
    let prof = &by_impl["005010X222A1"];
    assert_eq!(inst["biller"], json!("fqhc-demo"));
    assert_eq!(prof["biller"], json!("lea-demo"));
    let text_i = x12_of(&app, &finance, inst).await;
    let text_p = x12_of(&app, &finance, prof).await;
    assert!(
        text_i.starts_with("ISA*") && text_i.contains("SV2*0521*HC:T1015:SE*245.67*UN*1") && text_i.contains("SV2*0900*HC:90837*0*UN*1"),
        "{text_i}"
    );
    assert!(text_p.contains("SV1*HC:H0004:HA*85.59*UN*3") && text_p.contains("CLM*"), "{text_p}");
    assert!(text_p.contains("NM1*IL*1*PENA RUIZ*JOSE MARIA****MI*"), "{text_p}");
    keep_x12(&format!("claims-{tag}-837i-original"), &text_i);
    keep_x12(&format!("claims-{tag}-837p-original"), &text_p);
    // Nothing left to batch.
    assert!(build_batches(&app, &finance).await.is_empty());
    let sent = active(&claims_of(&app, &finance, &visit_id).await)[0].clone();
    assert_eq!(sent["status"], json!("batched"));

    // Amended after it went out: a frequency-7 replacement, held until the payer's claim number
    // is known (the 835 brings it; set here as posting would).
    let amended = with_minutes(visit.clone(), 30);
    submit(&app, &amended).await;
    let c = wait_claims(&app, &finance, &visit_id, |c| c.len() == 3).await;
    let repl = active(&c)[0].clone();
    assert_eq!(repl["frequency"], json!("7"));
    assert_eq!(repl["replaces"], sent["id"]);
    let sent_now: Value =
        app.get(&format!("/api/v1/claims/{}", sent["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    assert_eq!(sent_now["status"], json!("replaced"));
    assert!(build_batches(&app, &finance).await.is_empty(), "a replacement waits for the payer's claim number");
    exec_sql(
        &app.db.url,
        &format!("UPDATE claims SET payer_claim_number = 'ICN2026000111' WHERE id = '{}'", repl["id"].as_str().expect("id")),
    )
    .await;
    let batches = build_batches(&app, &finance).await;
    assert_eq!(batches.len(), 1);
    let text = x12_of(&app, &finance, &batches[0]).await;
    assert!(text.contains(":A:7*") && text.contains("REF*F8*ICN2026000111") && text.contains("HC:90832"), "{text}");
    keep_x12(&format!("claims-{tag}-837i-replacement"), &text);
    let fhir: Value = app.get(&format!("/fhir/Claim/{}", repl["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    assert_eq!(fhir["related"][0]["claim"]["reference"], json!(format!("Claim/{}", sent["id"].as_str().expect("id"))));

    // Amended to something not billable (tier 1) after it went out: voided (frequency 8).
    let mut universal = amended.clone();
    universal["service"]["tier"] = json!(1);
    submit(&app, &universal).await;
    let c = wait_claims(&app, &finance, &visit_id, |c| c.len() == 4).await;
    let void = active(&c)[0].clone();
    assert_eq!(void["frequency"], json!("8"));
    assert_eq!(void["payer_claim_number"], json!("ICN2026000111"));
    let batches = build_batches(&app, &finance).await;
    let text = x12_of(&app, &finance, &batches[0]).await;
    assert!(text.contains(":A:8*"), "{text}");
    keep_x12(&format!("claims-{tag}-837i-void"), &text);
    // At every step exactly one claim was active.
    assert_eq!(active(&claims_of(&app, &finance, &visit_id).await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_lifecycle_sqlite() {
    claim_lifecycle(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_lifecycle_postgres() {
    claim_lifecycle(Backend::Postgres).await;
}

/// Two gateway instances on one PostgreSQL database, both running the claim worker, while the
/// same sessions are sent again and amended concurrently: each session ends with exactly one
/// active claim, for its current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_never_double_bill() {
    let Some(a) = spawn_app_with(Backend::Postgres, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let b = wellness_gateway::startup::Application::build(a.settings.clone()).await.expect("second instance");
    let b_address = format!("http://127.0.0.1:{}", b.port());
    let b_handle = b.handle();
    tokio::spawn(b.run_until_stopped());
    let finance = finance_token(&a).await;
    consent(&a, "S1002345", "CONSENT-TWO", json!(["fqhc-demo"])).await;
    // Twenty sessions of one student on twenty days, each sent to both instances at once,
    // three times, with an amendment in between.
    let mut ids = Vec::new();
    for i in 0..20 {
        let mut s = session_with_id(&format!("TWO-{i}"));
        let day = 2 + i;
        s["service"]["start"] = json!(format!("2026-10-{day:02}T10:00:00-07:00"));
        s["service"]["end"] = json!(format!("2026-10-{day:02}T10:45:00-07:00"));
        let amended = with_minutes(s.clone(), 55);
        let mut sends = Vec::new();
        for (round, body) in [&s, &s, &amended].into_iter().enumerate() {
            for address in [&a.address, &b_address] {
                let req = a.client.post(format!("{address}/api/v1/sessions")).bearer_auth(&a.submitter_token).json(body).send();
                sends.push((round, req));
            }
        }
        for (_, req) in sends {
            let res = req.await.expect("send");
            assert!(res.status().is_success(), "{}", res.status());
        }
        ids.push(submit(&a, &amended).await);
    }
    // Both workers settle; wait until every session's claim covers its last version.
    let deadline = Instant::now() + Duration::from_secs(40);
    for id in &ids {
        loop {
            let c = claims_of(&a, &finance, id).await;
            let act = active(&c);
            assert!(act.len() <= 1, "session {id} has {} active claims: {c:?}", act.len());
            let version: Value = a.get(&format!("/api/v1/sessions/{id}"), &a.admin_token).await.json().await.expect("session");
            if act.len() == 1 && act[0]["session_version"] == version["current_version"] {
                break;
            }
            assert!(Instant::now() < deadline, "session {id} never settled: {c:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let active_total: i64 = {
        let rows = a.get("/api/v1/claims?status=ready&_count=1000", &finance).await.json::<Vec<Value>>().await.expect("claims");
        rows.iter().filter(|c| c["active"] == json!(true)).count() as i64
    };
    assert_eq!(active_total, 20, "one active claim per session");
    b_handle.stop(true).await;
}

async fn batch_status(app: &TestApp, token: &str, id: &str) -> Value {
    app.get(&format!("/api/v1/claims/batches/{id}"), token).await.json().await.expect("batch")
}

async fn wait_batch(app: &TestApp, token: &str, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let b = batch_status(app, token, id).await;
        if b["status"] == json!(status) {
            return b;
        }
        assert!(Instant::now() < deadline, "batch {id} never became {status}: {b}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Batches go to the payer's clearinghouse (a local HTTP server here) through the outbox:
/// failures are retried with backoff and the same bytes; when the retries run out the batch is
/// a dead letter that finance can send again.
async fn submission_outbox(backend: Backend) {
    let house = endpoint(2).await;
    let url = house.url.clone();
    let Some(app) = spawn_app_with(backend, move |s| {
        s.billing.poll_seconds = 1;
        s.billing.allow_http_clearinghouse = true;
        s.billing.backoff_initial_ms = 50;
        s.billing.backoff_max_seconds = 1;
        s.billing.submit_retry_seconds = 2;
        s.billing.clearinghouses =
            vec![Clearinghouse { payer: "medi-cal-ffs".into(), url, token: Some("house-secret".to_string().into()) }];
    })
    .await
    else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = finance_token(&app).await;
    consent(&app, "S1002345", "CONSENT-SUBMIT", json!(["fqhc-demo"])).await;
    let id = submit(&app, &session_with_id("SUBMIT-1")).await;
    wait_claims(&app, &finance, &id, |c| c.len() == 1).await;
    let batches = build_batches(&app, &finance).await;
    assert_eq!(batches[0]["status"], json!("queued"));
    let batch_id = batches[0]["id"].as_str().expect("id").to_owned();
    let b = wait_batch(&app, &finance, &batch_id, "submitted").await;
    assert_eq!(b["attempts"], json!(3), "two failures, then accepted: {b}");
    let got = house.received.lock().expect("lock").clone();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter().all(|r| r.body == got[0].body && r.authorization.as_deref() == Some("Bearer house-secret")),
        "every attempt sends the same file"
    );
    assert!(String::from_utf8_lossy(&got[0].body).starts_with("ISA*"));
    let c = claims_of(&app, &finance, &id).await;
    assert_eq!(c[0]["status"], json!("submitted"));
    let detail: Value =
        app.get(&format!("/api/v1/claims/{}", c[0]["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    let path: Vec<&str> = detail["events"].as_array().expect("events").iter().filter_map(|e| e["to"].as_str()).collect();
    assert_eq!(path, vec!["ready", "batched", "submitted"]);

    // The clearinghouse stays down past the retry window: a dead letter, re-driven by finance.
    *house.fail.lock().expect("lock") = 1_000_000;
    let amended = with_minutes(session_with_id("SUBMIT-1"), 60);
    submit(&app, &amended).await;
    wait_claims(&app, &finance, &id, |c| c.len() == 2).await;
    exec_sql(&app.db.url, "UPDATE claims SET payer_claim_number = 'ICN-SUBMIT-1' WHERE frequency = '7'").await;
    let batch_id = build_batches(&app, &finance).await[0]["id"].as_str().expect("id").to_owned();
    let b = wait_batch(&app, &finance, &batch_id, "failed").await;
    assert!(b["last_error"].as_str().is_some_and(|e| e.contains("500")), "{b}");
    let dead: Vec<Value> = app.get("/api/v1/claims/batches?status=failed", &finance).await.json().await.expect("list");
    assert_eq!(dead.len(), 1);
    let res = app
        .client
        .post(app.url(&format!("/api/v1/claims/batches/{batch_id}/$resubmit")))
        .bearer_auth(&app.submitter_token)
        .send()
        .await
        .expect("req");
    assert_eq!(res.status().as_u16(), 403);
    *house.fail.lock().expect("lock") = 0;
    let res =
        app.client.post(app.url(&format!("/api/v1/claims/batches/{batch_id}/$resubmit"))).bearer_auth(&finance).send().await.expect("req");
    assert_eq!(res.status().as_u16(), 202);
    wait_batch(&app, &finance, &batch_id, "submitted").await;
    let res =
        app.client.post(app.url(&format!("/api/v1/claims/batches/{batch_id}/$resubmit"))).bearer_auth(&finance).send().await.expect("req");
    assert_eq!(res.status().as_u16(), 409, "a submitted batch is not sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_outbox_sqlite() {
    submission_outbox(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_outbox_postgres() {
    submission_outbox(Backend::Postgres).await;
}

/// A 999 answering the batch with GS06 `group`: `IK5*A`, or `IK5*R` with a segment error.
fn ack_999(group: i64, accept: bool) -> String {
    let body = if accept {
        "AK2*837*0001*005010X223A2~\nIK5*A~\nAK9*A*1*1*1~\n".to_string()
    } else {
        "AK2*837*0001*005010X223A2~\nIK3*NM1*17**8~\nIK4*9*67*7*BADNPI~\nIK5*R*5~\nAK9*R*1*1*0~\n".to_string()
    };
    let segments = 3 + body.matches('~').count();
    format!(
        "{}GS*FA*CLEARINGHOUSE*WELLNESSGW*20261130*1200*77*X*005010X231A1~\nST*999*0001*005010X231A1~\nAK1*HC*{group}*005010X223A2~\n{body}SE*{segments}*0001~\nGE*1*77~\nIEA*1*000000077~\n",
        isa(77)
    )
}

async fn post_ack(app: &TestApp, token: &str, text: &str) -> (u16, Value) {
    let res = app.post_raw("/api/v1/acks", token, "application/edi-x12", text.as_bytes().to_vec()).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn acknowledgements(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = finance_token(&app).await;
    consent(&app, "S1002345", "CONSENT-ACK-1", json!(["fqhc-demo"])).await;
    consent(&app, "S3000001", "CONSENT-ACK-2", json!(["fqhc-demo"])).await;
    let one = session_with_id("ACK-1");
    let mut two = session_with_id("ACK-2");
    two["student"]["district_id"] = json!("S3000001");
    let id1 = submit(&app, &one).await;
    let id2 = submit(&app, &two).await;
    let c1 = wait_claims(&app, &finance, &id1, |c| c.len() == 1).await[0].clone();
    let c2 = wait_claims(&app, &finance, &id2, |c| c.len() == 1).await[0].clone();
    let batches = build_batches(&app, &finance).await;
    assert_eq!(batches.len(), 1);
    let group = batches[0]["gs_control"].as_i64().expect("gs");

    // Our own file, read back with the gateway's reader, holds exactly these claims and lines.
    let text = x12_of(&app, &finance, &batches[0]).await;
    let doc = wellness_gateway::x12::read_all(text.as_bytes()).expect("our 837 reads");
    assert!(doc.findings.is_empty(), "{:?}", doc.findings);
    let clm: Vec<(String, String)> =
        doc.segments.iter().filter(|s| s.id() == "CLM").map(|s| (s.element(1).to_string(), s.element(2).to_string())).collect();
    let mut want = vec![
        (c1["claim_number"].as_str().expect("pcn").to_string(), "245.67".to_string()),
        (c2["claim_number"].as_str().expect("pcn").to_string(), "245.67".to_string()),
    ];
    let mut got = clm.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let line_ids: Vec<String> =
        doc.segments.iter().filter(|s| s.id() == "REF" && s.element(1) == "6R").map(|s| s.element(2).to_string()).collect();
    let detail: Value = app.get(&format!("/api/v1/claims/{}", c1["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    for l in detail["lines"].as_array().expect("lines") {
        assert!(line_ids.contains(&l["line_id"].as_str().expect("line id").to_string()));
    }

    // 999: the transaction is accepted.
    let (status, report) = post_ack(&app, &finance, &ack_999(group, true)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["transactions"][0]["accepted"].as_array().map(Vec::len), Some(2), "{report}");
    // 277CA: the first claim accepted with the payer's claim number, the second rejected.
    let pcn1 = c1["claim_number"].as_str().expect("pcn");
    let pcn2 = c2["claim_number"].as_str().expect("pcn");
    let ack = ack_277(&[(pcn1, "A2:20", Some("ICN-ACK-1")), (pcn2, "A7:562:85", None), ("NOT-OURS", "A2:20", None)]);
    let (status, report) = post_ack(&app, &finance, &ack).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["transactions"][0]["accepted"], json!([pcn1]));
    assert_eq!(report["transactions"][0]["rejected"], json!([pcn2]));
    assert_eq!(report["transactions"][0]["unmatched"], json!(["NOT-OURS"]));
    // The same file again changes nothing.
    let (_, again) = post_ack(&app, &finance, &ack).await;
    assert_eq!(again["transactions"][0]["unchanged"].as_array().map(Vec::len), Some(2), "{again}");
    let r1 = claims_of(&app, &finance, &id1).await;
    assert_eq!(r1[0]["status"], json!("accepted"));
    assert_eq!(r1[0]["payer_claim_number"], json!("ICN-ACK-1"));
    let d2: Value = app.get(&format!("/api/v1/claims/{}", c2["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    assert_eq!(d2["status"], json!("rejected"));
    assert!(d2["events"].as_array().expect("events").iter().any(|e| e["reason"].as_str().is_some_and(|r| r.contains("A7:562"))), "{d2}");

    // Corrections: the accepted claim gets a replacement carrying the payer's number at once;
    // the rejected one (the payer never took it) a new original.
    submit(&app, &with_minutes(one.clone(), 60)).await;
    submit(&app, &with_minutes(two.clone(), 60)).await;
    let r1 = wait_claims(&app, &finance, &id1, |c| c.len() == 2).await;
    let r2 = wait_claims(&app, &finance, &id2, |c| c.len() == 2).await;
    assert_eq!(active(&r1)[0]["frequency"], json!("7"));
    assert_eq!(active(&r1)[0]["payer_claim_number"], json!("ICN-ACK-1"));
    assert_eq!(active(&r2)[0]["frequency"], json!("1"));
    let batches = build_batches(&app, &finance).await;
    assert_eq!(batches[0]["claim_count"], json!(2));
    let group = batches[0]["gs_control"].as_i64().expect("gs");
    keep_x12(
        &format!("acks-{}-837i", if matches!(backend, Backend::Sqlite) { "sqlite" } else { "postgres" }),
        &x12_of(&app, &finance, &batches[0]).await,
    );

    // 999 rejecting the whole transaction: both claims rejected with the segment error.
    let (_, report) = post_ack(&app, &finance, &ack_999(group, false)).await;
    assert_eq!(report["transactions"][0]["rejected"].as_array().map(Vec::len), Some(2), "{report}");
    let r1 = claims_of(&app, &finance, &id1).await;
    assert_eq!(active(&r1)[0]["status"], json!("rejected"));
    // Finance fixes what the 999 complained about and queues the rejected claims again as they are.
    let requeue = |id: Value| {
        let url = app.url(&format!("/api/v1/claims/{}/$requeue", id.as_str().unwrap_or_default()));
        app.client.post(url).bearer_auth(&finance).send()
    };
    let res = requeue(active(&r1)[0]["id"].clone()).await.expect("requeue");
    assert_eq!(res.status().as_u16(), 200);
    let again = requeue(active(&r1)[0]["id"].clone()).await.expect("requeue");
    assert_eq!(again.status().as_u16(), 409, "only a rejected claim is queued again");
    let rebuilt = build_batches(&app, &finance).await;
    assert_eq!(rebuilt[0]["claim_count"], json!(1));

    // Not an acknowledgement, or not X12: 422 naming the segment.
    let issues = crate::helpers::outcome(app.post_raw("/api/v1/acks", &finance, "application/edi-x12", text.into_bytes()).await, 422).await;
    assert!(issues[0]["diagnostics"].as_str().is_some_and(|d| d.contains("segment 3 (ST)") && d.contains("837")), "{issues:?}");
    let issues = crate::helpers::outcome(app.post_raw("/api/v1/acks", &finance, "application/edi-x12", b"hello".to_vec()).await, 422).await;
    assert!(!issues.is_empty());
    assert_eq!(app.post_raw("/api/v1/acks", &app.submitter_token, "application/edi-x12", b"x".to_vec()).await.status().as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_sqlite() {
    acknowledgements(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_postgres() {
    acknowledgements(Backend::Postgres).await;
}

/// One FQHC visit per student per day, with crisis as a visit of its own (the same-day rule as
/// data): the day's second counselling session is held with the reason, the crisis is claimed;
/// when the first is withdrawn (made unbillable before it was sent) the second takes the visit.
async fn same_day_visits(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = finance_token(&app).await;
    consent(&app, "S1002345", "CONSENT-DAY", json!(["fqhc-demo"])).await;
    let at = |source: &str, start: &str, end: &str, kind: &str| {
        let mut s = session_with_id(source);
        s["service"]["start"] = json!(start);
        s["service"]["end"] = json!(end);
        s["service"]["type"] = json!(kind);
        s
    };
    let morning = at("DAY-1", "2026-11-03T09:00:00-08:00", "2026-11-03T09:45:00-08:00", "individual-counseling");
    let first = submit(&app, &morning).await;
    wait_claims(&app, &finance, &first, |c| c.len() == 1).await;
    let second = submit(&app, &at("DAY-2", "2026-11-03T13:00:00-08:00", "2026-11-03T13:45:00-08:00", "individual-counseling")).await;
    let crisis = submit(&app, &at("DAY-3", "2026-11-03T15:00:00-08:00", "2026-11-03T16:00:00-08:00", "crisis-intervention")).await;
    wait_claims(&app, &finance, &crisis, |c| c.len() == 1).await;
    let d: Value = app.get(&format!("/api/v1/sessions/{second}/billing"), &finance).await.json().await.expect("decision");
    assert_eq!(d["reasons"][0]["code"], json!("visit-limit"), "{d}");
    assert!(claims_of(&app, &finance, &second).await.is_empty());
    // The morning session turns out to be a tier-1 activity: its unsent claim is withdrawn and
    // the afternoon session takes the visit.
    let mut universal = morning.clone();
    universal["service"]["tier"] = json!(1);
    submit(&app, &universal).await;
    let c = wait_claims(&app, &finance, &second, |c| c.len() == 1).await;
    assert_eq!(c[0]["status"], json!("ready"));
    assert!(active(&claims_of(&app, &finance, &first).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_day_visits_sqlite() {
    same_day_visits(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_day_visits_postgres() {
    same_day_visits(Backend::Postgres).await;
}

/// Frequency limits across claims read the store: a wellness coach bills at most three 0592T
/// units a day, whichever students they see.
async fn coach_limits_across_claims(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = finance_token(&app).await;
    let coach_session = |source: &str, student: &str, start: &str, end: &str| {
        let mut s = session_with_id(source);
        s["student"]["district_id"] = json!(student);
        s["clinician"]["credential"] = json!("wellness-coach");
        s["clinician"]["supervisor"] =
            json!({ "npi": "1550123453", "given_name": "Priya", "family_name": "Natarajan", "credential": "LMFT" });
        s["service"]["start"] = json!(start);
        s["service"]["end"] = json!(end);
        s
    };
    consent(&app, "S4000001", "CONSENT-COACH-1", json!(["lea-demo"])).await;
    consent(&app, "S4000002", "CONSENT-COACH-2", json!(["lea-demo"])).await;
    let a = submit(&app, &coach_session("COACH-1", "S4000001", "2026-11-04T09:00:00-08:00", "2026-11-04T10:00:00-08:00")).await;
    let c = wait_claims(&app, &finance, &a, |c| c.len() == 1).await;
    let detail: Value =
        app.get(&format!("/api/v1/claims/{}", c[0]["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    assert_eq!((detail["lines"][0]["code"].clone(), detail["lines"][0]["units"].clone()), (json!("0592T"), json!(2)));
    // Another student, 90 minutes (3 units): one unit is left of the coach's three today.
    let b = submit(&app, &coach_session("COACH-2", "S4000002", "2026-11-04T11:00:00-08:00", "2026-11-04T12:30:00-08:00")).await;
    let c = wait_claims(&app, &finance, &b, |c| c.len() == 1).await;
    let detail: Value =
        app.get(&format!("/api/v1/claims/{}", c[0]["id"].as_str().expect("id")), &finance).await.json().await.expect("claim");
    assert_eq!(detail["lines"][0]["units"], json!(1), "{detail}");
    assert_eq!(detail["charge_cents"], json!(4108));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coach_limits_across_claims_sqlite() {
    coach_limits_across_claims(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coach_limits_across_claims_postgres() {
    coach_limits_across_claims(Backend::Postgres).await;
}
