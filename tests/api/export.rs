//! FHIR Bulk Data export, end to end over real HTTP: kick-off, polling, manifest, download,
//! NDJSON compared with FHIR search for the same partner; consent revoked while an export runs;
//! a restart mid-export; cancel; expiry; a second instance sharing PostgreSQL.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, TestDb, outcome, repo_path, session_with_id, spawn_app_with, start};
use wellness_gateway::settings::Settings;

fn consent_form() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).unwrap()).unwrap()
}

/// A session of another student (district id `student`).
fn session_of(source_id: &str, student: &str) -> Value {
    let mut s = session_with_id(source_id);
    s["student"]["district_id"] = json!(student);
    s
}

fn patient_of(student: &str) -> String {
    wellness_gateway::mapping::engine::patient_id("lea-demo", student)
}

impl TestApp {
    async fn submit_ok(&self, session: &Value) -> String {
        let res = self.post_json("/api/v1/sessions", &self.submitter_token, session).await;
        assert!(res.status().is_success(), "{}", res.status());
        res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn consent_for(&self, student: &str, source_id: &str) -> String {
        let mut form = consent_form();
        form["student"]["district_id"] = json!(student);
        form["source_id"] = json!(source_id);
        let res = self.post_json("/api/v1/consents", &self.submitter_token, &form).await;
        assert!(res.status().is_success(), "{}", res.status());
        res.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
    }

    async fn kickoff(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(&self.partner_token)
            .header("Accept", "application/fhir+json")
            .header("Prefer", "respond-async")
            .send()
            .await
            .unwrap()
    }

    /// Kicks off and returns the status URL.
    async fn start_export(&self, path: &str) -> String {
        let res = self.kickoff(path).await;
        assert_eq!(res.status(), 202, "{:?}", res.text().await);
        res.headers()["content-location"].to_str().unwrap().to_owned()
    }

    /// Polls until the manifest (200), asserting 202s carry X-Progress and Retry-After.
    async fn manifest(&self, status_url: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let res = self.client.get(status_url).bearer_auth(&self.partner_token).send().await.unwrap();
            match res.status().as_u16() {
                202 => {
                    assert!(res.headers().contains_key("x-progress"));
                    assert!(res.headers().contains_key("retry-after"));
                }
                200 => {
                    assert!(res.headers().contains_key("expires"));
                    return res.json().await.unwrap();
                }
                s => panic!("status {s}: {:?}", res.text().await),
            }
            assert!(Instant::now() < deadline, "export did not finish");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every output line of a manifest, parsed.
    async fn download_all(&self, manifest: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        for f in manifest["output"].as_array().unwrap() {
            let res = self.client.get(f["url"].as_str().unwrap()).bearer_auth(&self.partner_token).send().await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/fhir+ndjson");
            let text = res.text().await.unwrap();
            let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("one JSON resource per line")).collect();
            assert_eq!(lines.len() as i64, f["count"].as_i64().unwrap(), "manifest count of {}", f["url"]);
            assert!(lines.iter().all(|r| r["resourceType"] == f["type"]));
            out.extend(lines);
        }
        out
    }

    /// `Type/id` of every resource a partner search returns (all pages).
    async fn search_refs(&self, path: &str) -> BTreeSet<String> {
        let mut url = self.url(path);
        let mut out = BTreeSet::new();
        loop {
            let b: Value = self.client.get(&url).bearer_auth(&self.partner_token).send().await.unwrap().json().await.unwrap();
            for e in b["entry"].as_array().into_iter().flatten() {
                out.insert(format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()));
            }
            match b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
                Some(l) => url = l["url"].as_str().unwrap().to_owned(),
                None => return out,
            }
        }
    }
}

fn refs(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect()
}

fn of_type(refs: &BTreeSet<String>, ty: &str) -> BTreeSet<String> {
    refs.iter().filter(|r| r.starts_with(&format!("{ty}/"))).cloned().collect()
}

async fn end_to_end(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.export.max_file_resources = 2).await else { return };
    // Student A consented (three sessions); student B did not (one session).
    let mut a_encounters = BTreeSet::new();
    for i in 0..3 {
        a_encounters.insert(format!("Encounter/{}", app.submit_ok(&session_of(&format!("BULK-A{i}"), "S1002345")).await));
    }
    let b_encounter = format!("Encounter/{}", app.submit_ok(&session_of("BULK-B0", "S2000001")).await);
    app.consent_for("S1002345", "CONSENT-BULK-A").await;

    let status_url = app.start_export("/fhir/$export").await;
    let manifest = app.manifest(&status_url).await;
    assert_eq!(manifest["requiresAccessToken"], true);
    assert!(manifest["request"].as_str().unwrap().ends_with("/fhir/$export"));
    assert!(manifest["transactionTime"].as_str().is_some());
    assert!(manifest["extension"]["urn:wellness-gateway:bulk:consent-evaluated-at"].as_str().is_some());
    assert_eq!(manifest["error"], json!([]));
    // Split at two resources per file.
    assert!(manifest["output"].as_array().unwrap().iter().all(|f| f["count"].as_i64().unwrap() <= 2));
    let exported = app.download_all(&manifest).await;
    let got = refs(&exported);
    assert_eq!(got.len(), exported.len(), "no resource twice");
    // The same as FHIR search shows this partner, type by type.
    for ty in wellness_gateway::export::EXPORTABLE {
        assert_eq!(of_type(&got, ty), app.search_refs(&format!("/fhir/{ty}?_count=1000")).await, "{ty}");
    }
    assert_eq!(of_type(&got, "Encounter"), a_encounters);
    assert!(!got.contains(&b_encounter));
    assert!(got.contains(&format!("Patient/{}", patient_of("S1002345"))));
    assert!(!got.contains(&format!("Patient/{}", patient_of("S2000001"))));
    // Disclosed as a read is: DS4P labels.
    let enc = exported.iter().find(|r| r["resourceType"] == "Encounter").unwrap();
    let labels: Vec<&str> = enc["meta"]["security"].as_array().unwrap().iter().filter_map(|c| c["code"].as_str()).collect();
    assert!(labels.contains(&"TREAT") && labels.contains(&"R"), "{labels:?}");

    // The download is on the audit trail, naming the student.
    let events: Value =
        app.get(&format!("/fhir/AuditEvent?patient=Patient/{}", patient_of("S1002345")), &app.admin_token).await.json().await.unwrap();
    let texts = events.to_string();
    assert!(texts.contains("export-file"), "no download event");
    let accounting: Value =
        app.get(&format!("/api/v1/students/{}/disclosures", patient_of("S2000001")), &app.admin_token).await.json().await.unwrap();
    assert!(!accounting.to_string().contains("export-file"), "B's data was never disclosed");

    // Group (one site) and Patient level, with _type and _typeFilter.
    let site_group = app.start_export("/fhir/Group/site-demo-hs/$export?_type=Patient,Encounter").await;
    let m = app.manifest(&site_group).await;
    let got = refs(&app.download_all(&m).await);
    assert_eq!(of_type(&got, "Encounter"), a_encounters);
    assert!(of_type(&got, "Condition").is_empty());
    let filtered = app.start_export("/fhir/Patient/$export?_type=Encounter&_typeFilter=Encounter%3Fdate%3Dlt2000-01-01").await;
    let m = app.manifest(&filtered).await;
    assert_eq!(m["output"], json!([]), "no session before 2000");
    // A Group of a site this partner does not serve is unknown.
    outcome(app.kickoff("/fhir/Group/site-other-es/$export").await, 404).await;
    // Group read and search.
    let g: Value = app.get("/fhir/Group/site-demo-hs", &app.partner_token).await.json().await.unwrap();
    assert_eq!(g["resourceType"], "Group");
    let all: Value = app.get("/fhir/Group", &app.partner_token).await.json().await.unwrap();
    assert_eq!(all["total"], 3, "two sites and the partnership");

    // _since after everything: nothing new.
    let since = manifest["transactionTime"].as_str().unwrap();
    let url = app.start_export(&format!("/fhir/$export?_since={}", urlencode(since))).await;
    let m = app.manifest(&url).await;
    assert_eq!(m["output"], json!([]), "{m}");
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap().trim_start_matches("x=").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_sqlite() {
    end_to_end(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_postgres() {
    end_to_end(Backend::Postgres).await;
}

async fn kickoff_rules(app: TestApp) {
    // The partner's token only: admins and submitters are refused.
    let res =
        app.client.get(app.url("/fhir/$export")).bearer_auth(&app.admin_token).header("Prefer", "respond-async").send().await.unwrap();
    outcome(res, 403).await;
    // Prefer: respond-async is required.
    let res = app.client.get(app.url("/fhir/$export")).bearer_auth(&app.partner_token).send().await.unwrap();
    let issues = outcome(res, 400).await;
    assert_eq!(issues[0]["expression"][0], "Prefer");
    for (q, at) in [
        ("_type=Consent", "_type"),
        ("_outputFormat=text/csv", "_outputFormat"),
        ("_since=yesterday", "_since"),
        ("_elements=id", "_elements"),
    ] {
        let issues = outcome(app.kickoff(&format!("/fhir/$export?{q}")).await, 400).await;
        assert_eq!(issues[0]["expression"][0], at, "{q}");
    }
    // POST with a Parameters body.
    let body = json!({ "resourceType": "Parameters", "parameter": [
        { "name": "_type", "valueString": "Patient" },
        { "name": "patient", "valueReference": { "reference": "Patient/nobody" } },
    ]});
    let res = app
        .client
        .post(app.url("/fhir/Patient/$export"))
        .bearer_auth(&app.partner_token)
        .header("Prefer", "respond-async")
        .header("Content-Type", "application/fhir+json")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let status_url = res.headers()["content-location"].to_str().unwrap().to_owned();
    // workers = 0 on this instance: the jobs stay queued. One more than the limit answers 429.
    let second = app.start_export("/fhir/$export").await;
    let res = app.kickoff("/fhir/$export").await;
    assert_eq!(res.headers()["retry-after"], "5");
    outcome(res, 429).await;
    let res = app.client.get(&status_url).bearer_auth(&app.partner_token).send().await.unwrap();
    assert_eq!(res.status(), 202);
    assert_eq!(res.headers()["x-progress"], "queued");
    // Another partner client of the same FQHC does not see the job.
    let other = crate::helpers::register_partner(&app.store, &app.settings, "fqhc-demo", None).await;
    let other_token = app.smart_token(&other, "system/*.read", None).await;
    assert_eq!(app.client.get(&status_url).bearer_auth(&other_token).send().await.unwrap().status(), 404);
    // Cancel: 202, then the job is gone and a new one may start.
    assert_eq!(app.client.delete(&status_url).bearer_auth(&app.partner_token).send().await.unwrap().status(), 202);
    assert_eq!(app.client.get(&status_url).bearer_auth(&app.partner_token).send().await.unwrap().status(), 404);
    assert_eq!(app.client.delete(&status_url).bearer_auth(&app.partner_token).send().await.unwrap().status(), 404);
    assert_eq!(app.kickoff("/fhir/$export").await.status(), 202);
    assert_eq!(app.client.delete(&second).bearer_auth(&app.partner_token).send().await.unwrap().status(), 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kickoff_rules_sqlite() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.export.workers = 0;
        s.export.max_jobs_per_client = 2;
    })
    .await
    .unwrap();
    kickoff_rules(app).await;
}

/// Slow exports (one resource per file and per page) so that a test can act while one runs.
fn slow(s: &mut Settings) {
    s.export.max_file_resources = 1;
    s.export.batch_size = 1;
    s.export.lease_seconds = 5;
    s.server.auth_cache_seconds = 0;
}

/// Files the running job has written so far (finished or not).
fn files_written(app: &TestApp, status_url: &str) -> usize {
    let job = status_url.rsplit('/').next().unwrap();
    std::fs::read_dir(app.db.files.path().join(job)).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_revoked_during_a_running_export() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        slow(s);
        s.export.lease_seconds = 6;
    })
    .await
    .unwrap();
    let mut encounters = BTreeSet::new();
    for i in 0..12 {
        encounters.insert(format!("Encounter/{}", app.submit_ok(&session_of(&format!("REVOKE-{i}"), "S1002345")).await));
    }
    let consent = app.consent_for("S1002345", "CONSENT-REVOKE").await;
    let status_url = app.start_export("/fhir/$export").await;
    // Wait until something of the student was written, then revoke.
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_written(&app, &status_url) < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let res = app.post_json(&format!("/api/v1/consents/{consent}/$revoke"), &app.submitter_token, &json!({})).await;
    assert_eq!(res.status(), 200);
    let manifest = app.manifest(&status_url).await;
    let got = refs(&app.download_all(&manifest).await);
    assert!(of_type(&got, "Encounter").is_empty(), "revoked student's sessions exported: {got:?}");
    assert!(!got.contains(&format!("Patient/{}", patient_of("S1002345"))));
    assert!(!of_type(&got, "Organization").is_empty(), "directory data stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_export_withdraws_and_resends_by_consent() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.server.auth_cache_seconds = 0).await.unwrap();
    let a_enc = format!("Encounter/{}", app.submit_ok(&session_of("SINCE-A", "S1002345")).await);
    let b_enc = format!("Encounter/{}", app.submit_ok(&session_of("SINCE-B", "S2000001")).await);
    let consent_a = app.consent_for("S1002345", "CONSENT-SINCE-A").await;
    let first = app.manifest(&app.start_export("/fhir/$export").await).await;
    assert!(refs(&app.download_all(&first).await).contains(&a_enc));
    let since = urlencode(first["transactionTime"].as_str().unwrap());
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A's consent is revoked; B consents (B's session is older than _since).
    app.post_json(&format!("/api/v1/consents/{consent_a}/$revoke"), &app.submitter_token, &json!({})).await;
    app.consent_for("S2000001", "CONSENT-SINCE-B").await;
    let m = app.manifest(&app.start_export(&format!("/fhir/$export?_since={since}")).await).await;
    let got = refs(&app.download_all(&m).await);
    assert!(got.contains(&b_enc), "newly consented data older than _since is sent: {got:?}");
    assert!(!got.contains(&a_enc));
    let withdrawn = &m["extension"]["urn:wellness-gateway:bulk:withdrawn"];
    assert_eq!(withdrawn["patients"], json!([format!("Patient/{}", patient_of("S1002345"))]), "{m}");
    assert!(withdrawn.get("resources").is_none(), "resource ids are never listed");
    assert!(!withdrawn.to_string().contains(&patient_of("S2000001")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_expire_after_completion() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    app.submit_ok(&session_of("EXPIRE-1", "S1002345")).await;
    let status_url = app.start_export("/fhir/$export").await;
    let m = app.manifest(&status_url).await;
    let file = m["output"][0]["url"].as_str().unwrap().to_owned();
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    assert!(app.db.files.path().join(&job).exists());
    crate::helpers::exec_sql(&app.db.url, &format!("UPDATE export_jobs SET expires_us = 0 WHERE id = '{job}'")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.db.files.path().join(&job).exists() {
        assert!(Instant::now() < deadline, "expired files not removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.client.get(&status_url).bearer_auth(&app.partner_token).send().await.unwrap().status(), 404);
    assert_eq!(app.client.get(&file).bearer_auth(&app.partner_token).send().await.unwrap().status(), 404);
}

async fn restart_mid_export(backend: Backend) {
    // Two resources per file: a full export writes its types at once (in storage order), so files
    // of several types are open when the server stops.
    let Some(app) = spawn_app_with(backend, |s| {
        slow(s);
        s.export.max_file_resources = 2;
    })
    .await
    else {
        return;
    };
    let mut expected = BTreeSet::new();
    for i in 0..40 {
        expected.insert(format!("Encounter/{}", app.submit_ok(&session_of(&format!("RESTART-{i}"), "S1002345")).await));
    }
    app.consent_for("S1002345", "CONSENT-RESTART").await;
    let status_url = app.start_export("/fhir/$export?_type=Patient,Encounter,Condition").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_written(&app, &status_url) < 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client_id = app.partner_client_id.clone();
    let old_address = app.address.clone();
    let (settings, db): (Settings, TestDb) = app.stop().await;
    let job = status_url.rsplit('/').next().unwrap().to_owned();
    let written = std::fs::read_dir(db.files.path().join(&job)).map(|d| d.count()).unwrap_or(0);
    // A new instance on the same database and folder resumes the job once the lease runs out.
    let mut app = start(settings, db, false).await;
    app.partner_client_id = client_id.clone();
    app.partner_token = app.smart_token(&client_id, "system/*.read", None).await;
    let manifest = app.manifest(&status_url.replace(&old_address, &app.address)).await;
    let files = manifest["output"].as_array().unwrap().len();
    assert!(written < files, "the job finished before the restart ({written} of {files} files)");
    assert!(manifest["output"].as_array().unwrap().iter().all(|f| f["count"].as_i64().unwrap() <= 2));
    let exported = app.download_all(&manifest).await;
    let got = refs(&exported);
    assert_eq!(got.len(), exported.len(), "a resumed job wrote a resource twice");
    assert_eq!(of_type(&got, "Encounter"), expected, "a resumed job lost or added sessions");
    assert_eq!(of_type(&got, "Condition").len(), 80, "two diagnoses per session");
    assert_eq!(of_type(&got, "Patient").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_export_sqlite() {
    restart_mid_export(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_export_postgres() {
    restart_mid_export(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_on_postgres_runs_each_job_once() {
    // Instance A accepts and serves exports but runs none; B and C share its database and folder.
    let Some(a) = spawn_app_with(Backend::Postgres, |s| s.export.workers = 0).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    for i in 0..3 {
        a.submit_ok(&session_of(&format!("SHARED-{i}"), "S1002345")).await;
    }
    a.consent_for("S1002345", "CONSENT-SHARED").await;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut s = a.settings.clone();
        s.export.workers = 2;
        let app = wellness_gateway::startup::Application::build(s).await.unwrap();
        let handle = app.handle();
        tokio::spawn(app.run_until_stopped());
        others.push(handle);
    }
    let mut urls = Vec::new();
    for _ in 0..2 {
        urls.push(a.start_export("/fhir/$export?_type=Encounter").await);
    }
    for url in &urls {
        let m = a.manifest(url).await;
        let got = refs(&a.download_all(&m).await);
        assert_eq!(of_type(&got, "Encounter").len(), 3);
    }
    // Each job completed once: one job AuditEvent each (downloads write their own).
    let events: Value = a.get("/fhir/AuditEvent?_count=1000", &a.admin_token).await.json().await.unwrap();
    let job_events = events["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let s = e["resource"].to_string();
            s.contains("export-job") && !s.contains("export-file")
        })
        .count();
    assert_eq!(job_events, 2, "each job ran to completion exactly once");
    for h in others {
        h.stop(true).await;
    }
}
