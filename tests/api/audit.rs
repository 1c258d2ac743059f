//! The audit trail: an AuditEvent per partner request (disclosures and refusals), written before
//! the response; the accounting of disclosures; admin-only `/fhir/AuditEvent`; a hash chain
//! whose verification finds an edited or removed event; no disclosure when the audit fails.

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::{Backend, outcome, repo_path, session_with_id, spawn_app_with};
use wellness_gateway::audit::Auditor;
use wellness_gateway::store::Store;

fn verify(url: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wellness-gateway"))
        .current_dir(repo_path(""))
        .env("WG__DATABASE__URL", url)
        .env("RUST_LOG", "warn")
        .args(["audit", "verify"])
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

async fn audit_trail(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| {
        s.server.auth_cache_seconds = 0;
        s.database.audit_journal_load_ms = 50;
    })
    .await
    else {
        return;
    };
    let session: Value = app.post_json("/api/v1/sessions", &app.submitter_token, &session_with_id("AUD-1")).await.json().await.unwrap();
    let enc = session["id"].as_str().unwrap().to_owned();
    let patient = wellness_gateway::mapping::engine::patient_id("lea-demo", "S1002345");

    // A refusal (no consent yet), then a disclosure.
    assert_eq!(app.get(&format!("/fhir/Encounter/{enc}"), &app.partner_token).await.status(), 404);
    let form: Value = serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).unwrap()).unwrap();
    assert_eq!(app.post_json("/api/v1/consents", &app.submitter_token, &form).await.status(), 201);
    assert_eq!(app.get(&format!("/fhir/Encounter/{enc}"), &app.partner_token).await.status(), 200);
    assert_eq!(app.get(&format!("/fhir/Encounter?patient={patient}&_include=Encounter:patient"), &app.partner_token).await.status(), 200);

    // Admins read the events, newest first; each is a valid R4 AuditEvent.
    let b: Value = app.get(&format!("/fhir/AuditEvent?patient={patient}"), &app.admin_token).await.json().await.unwrap();
    let events: Vec<&Value> = b["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).collect();
    assert_eq!(events.len(), 3, "{b}");
    let schema = wellness_gateway::fhir::schema::FhirSchema::load(&repo_path("schemas")).unwrap();
    for e in &events {
        schema.validate(e).unwrap_or_else(|v| panic!("{v:?}"));
    }
    let (search, read, refused) = (events[0], events[1], events[2]);
    assert_eq!(refused["outcome"], "4");
    assert_eq!(refused["entity"][0]["detail"][0]["valueString"], "deny");
    assert_eq!(refused["entity"][0]["detail"][1]["valueString"], "no-consent");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["subtype"][0]["code"], "read");
    assert_eq!(read["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(read["agent"][0]["who"]["identifier"]["value"], app.partner_client_id.as_str());
    let consent_id = wellness_gateway::consent::form::consent_id("lea-demo", "CONSENT-2026-0001");
    assert_eq!(read["entity"][0]["detail"][2]["valueString"], format!("Consent/{consent_id}/_history/1"));
    let refs: Vec<&str> = search["entity"].as_array().unwrap().iter().filter_map(|e| e["what"]["reference"].as_str()).collect();
    assert!(refs.contains(&format!("Encounter/{enc}").as_str()) && refs.contains(&format!("Patient/{patient}").as_str()), "{refs:?}");
    let one = app.get(&format!("/fhir/AuditEvent/{}", read["id"].as_str().unwrap()), &app.admin_token).await;
    assert_eq!(one.status(), 200);
    // Nobody else reads them.
    outcome(app.get("/fhir/AuditEvent", &app.submitter_token).await, 403).await;
    outcome(app.get("/fhir/AuditEvent", &app.partner_token).await, 403).await;

    // The accounting of disclosures lists what was disclosed (not the refusal).
    let acc: Value = app.get("/api/v1/students/S1002345/disclosures", &app.submitter_token).await.json().await.unwrap();
    let list = acc["disclosures"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{acc}");
    assert_eq!(list[1]["recipient_organization"], "fqhc-demo");
    assert_eq!(list[1]["purpose"], "TREAT");
    assert_eq!(list[1]["resources"], json!([format!("Encounter/{enc}")]));
    assert_eq!(list[1]["consents"], json!([format!("Consent/{consent_id}/_history/1")]));
    // A search that disclosed two students' records shows each only their own.
    let mut other_student = session_with_id("AUD-2");
    other_student["student"]["district_id"] = json!("S7654321");
    app.post_json("/api/v1/sessions", &app.submitter_token, &other_student).await;
    let mut other_form = form.clone();
    other_form["source_id"] = json!("CONSENT-OTHER-STUDENT");
    other_form["student"]["district_id"] = json!("S7654321");
    assert_eq!(app.post_json("/api/v1/consents", &app.submitter_token, &other_form).await.status(), 201);
    let both: Value = app.get("/fhir/Encounter?date=ge2026-01-01", &app.partner_token).await.json().await.unwrap();
    assert_eq!(both["entry"].as_array().unwrap().len(), 2);
    let acc: Value = app.get("/api/v1/students/S1002345/disclosures", &app.submitter_token).await.json().await.unwrap();
    let newest = &acc["disclosures"][0];
    assert_eq!(newest["resources"], json!([format!("Encounter/{enc}")]), "{newest}");
    assert_eq!(newest["consents"], json!([format!("Consent/{consent_id}/_history/1")]));

    // Another LEA's student of the same district id is another student.
    let other: Value = app.get("/api/v1/students/S1002345/disclosures", &app.other_submitter_token).await.json().await.unwrap();
    assert!(other["disclosures"].as_array().unwrap().is_empty());
    outcome(app.get("/api/v1/students/S1002345/disclosures", &app.admin_token).await, 400).await;

    // The chain verifies; an edited event and a removed one are found.
    let url = app.db.url.clone();
    let (ok, text) = verify(&url);
    assert!(ok && text.contains("4 events verified"), "{text}");
    crate::helpers::exec_sql(&url, "UPDATE audit_events SET event = replace(event, 'TREAT', 'HOPERAT') WHERE seq = 2").await;
    let (ok, text) = verify(&url);
    assert!(!ok && text.contains("broken at event 2") && text.contains("edited"), "{text}");
    crate::helpers::exec_sql(&url, "UPDATE audit_events SET event = replace(event, 'HOPERAT', 'TREAT') WHERE seq = 2").await;
    assert!(verify(&url).0);
    crate::helpers::exec_sql(&url, "DELETE FROM audit_events WHERE seq = 2").await;
    let (ok, text) = verify(&url);
    assert!(!ok && text.contains("broken at event 3"), "{text}");

    // If the audit trail cannot be written, nothing is disclosed. (On SQLite a read is
    // journaled first and refused once the journal cannot be loaded: at the next round.)
    crate::helpers::exec_sql(&url, "DROP TABLE audit_event_patients").await;
    let mut served_meanwhile = 0;
    let refused = loop {
        let res = app.get(&format!("/fhir/Encounter/{enc}"), &app.partner_token).await;
        if res.status() == 503 {
            break res;
        }
        assert_eq!(res.status(), 200);
        served_meanwhile += 1;
        assert!(backend == Backend::Sqlite && served_meanwhile < 200, "reads go on while the audit trail cannot be written");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let body = refused.text().await.unwrap();
    assert!(!body.contains(&enc), "no data in the refusal");
    // Nothing journaled is lost: once the table is back, the reads served meanwhile are in
    // the trail and disclosures resume.
    crate::helpers::exec_sql(
        &url,
        "CREATE TABLE audit_event_patients (patient_id TEXT NOT NULL, seq BIGINT NOT NULL, disclosed BOOLEAN NOT NULL, PRIMARY KEY (patient_id, seq))",
    )
    .await;
    let mut status = 503;
    for _ in 0..250 {
        status = app.get(&format!("/fhir/Encounter/{enc}"), &app.partner_token).await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(status, 200, "disclosures resume once the trail can be written");
    // Reads in the trail: the first refusal (the disclosing read was removed above), those
    // served meanwhile, the last one; the refused one is not there (it was never disclosed).
    let b: Value = app.get("/fhir/AuditEvent?_count=1000", &app.admin_token).await.json().await.unwrap();
    let reads = b["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["subtype"][0]["code"] == "read").count();
    assert_eq!(reads, 1 + served_meanwhile + 1, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_sqlite() {
    audit_trail(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_postgres() {
    audit_trail(Backend::Postgres).await;
}

fn pending_read(n: usize) -> wellness_gateway::store::PendingEvent {
    let verdicts = vec![(
        "Encounter".to_string(),
        format!("e{n}"),
        wellness_gateway::serve::Verdict { permitted: true, rule: "consent", consent: None, patient: Some("p1".into()) },
    )];
    let d = wellness_gateway::audit::Disclosure {
        client_id: "c",
        org: "fqhc-demo",
        token_id: None,
        purpose: wellness_gateway::domain::PurposeOfUse::Treat,
        interaction: wellness_gateway::audit::Interaction::Read,
        request_id: None,
        query: format!("/fhir/Encounter/e{n}"),
        verdicts: &verdicts,
        count: None,
    };
    wellness_gateway::audit::event(&d, chrono::Utc::now())
}

async fn sqlite_store(url: &str) -> Store {
    let settings = wellness_gateway::settings::DatabaseSettings { url: secrecy::SecretString::from(url.to_string()), ..Default::default() };
    let store = Store::connect(&settings).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// SQLite: events journaled by a gateway that stops without loading them (a crash: its runtime
/// is dropped) are loaded by the next one at start, after the chain's stored events; a line cut
/// short by the crash is dropped; the journal is emptied and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_journal_is_loaded_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("gateway.db").display());
    let journal = wellness_gateway::audit::journal::path_for(&dir.path().join("gateway.db"));
    let never = std::time::Duration::from_secs(3600);
    let first = url.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = sqlite_store(&first).await;
            let auditor = Auditor::start(store.clone(), never).await.unwrap();
            auditor.record(pending_read(1)).await.unwrap();
            auditor.flush().await.unwrap();
            for n in 2..=4 {
                auditor.record(pending_read(n)).await.unwrap();
            }
            // Three events are in the journal only.
            assert_eq!(store.audit_head().await.unwrap().0, 1);
        });
    })
    .join()
    .unwrap();
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 4, "all four lines (the first loaded, not yet emptied)");
    // A write the crash cut short.
    let mut torn = std::fs::OpenOptions::new().append(true).open(&journal).unwrap();
    std::io::Write::write_all(&mut torn, br#"{"seq":5,"id":"x","#).unwrap();
    drop(torn);

    let store = sqlite_store(&url).await;
    let auditor = Auditor::start(store.clone(), never).await.unwrap();
    assert_eq!(store.audit_head().await.unwrap().0, 4);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "emptied once loaded");
    let report = wellness_gateway::audit::verify(&store).await.unwrap();
    assert_eq!((report.events, report.broken), (4, None));
    // The chain goes on from there.
    auditor.record(pending_read(5)).await.unwrap();
    assert_eq!(wellness_gateway::audit::verify(&store).await.unwrap().events, 5, "verify reads the journal's pending events");
    auditor.flush().await.unwrap();
    let rows = store.audit_chain(0, 10).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(rows[4].event.contains(r#""Encounter/e5""#), "the fifth is the new read");
    auditor.close().await;
    assert!(auditor.record(pending_read(6)).await.is_err(), "a closed journal takes nothing more");
}

/// SQLite: once enough of the journal is loaded, it is replaced by a file holding only the lines
/// not loaded yet, while requests keep appending; no event is lost or loaded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_journal_is_replaced_while_requests_append() {
    use wellness_gateway::audit::journal::{Journal, path_for};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let store = sqlite_store(&format!("sqlite://{}", db.display())).await;
    // Replaced after every round that loaded anything; rounds only when flushed.
    let journal = Journal::open_with(store.clone(), &db, std::time::Duration::from_secs(3600), 1).await.unwrap();
    let inode = || std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path_for(&db)).unwrap());
    let first = inode();
    for n in 1..=3 {
        journal.append(pending_read(n)).unwrap();
    }
    assert_eq!(std::fs::read_to_string(path_for(&db)).unwrap().lines().count(), 3);
    journal.flush().await.unwrap();
    // (The replacement follows the load that flush waited for.)
    for _ in 0..500 {
        if inode() != first {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(std::fs::metadata(path_for(&db)).unwrap().len(), 0, "loaded lines are gone");
    assert_ne!(inode(), first, "a new file");
    // Appends racing the loads and replacements.
    let writer = {
        let journal = journal.clone();
        tokio::task::spawn_blocking(move || {
            for n in 4..=400 {
                journal.append(pending_read(n)).unwrap();
                if n % 50 == 0 {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        })
    };
    for _ in 0..20 {
        journal.flush().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    writer.await.unwrap();
    journal.flush().await.unwrap();
    let report = wellness_gateway::audit::verify(&store).await.unwrap();
    assert_eq!((report.events, report.broken), (400, None));
    assert_eq!(store.audit_head().await.unwrap().0, 400);
    let rows = store.audit_chain(0, 1000).await.unwrap();
    assert_eq!(rows.len(), 400, "each event once");
    assert_eq!(journal.events_read_back(), 0, "the loader took every event from memory, not from the file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_load_the_audit_journal_is_read_back_from_its_file() {
    use wellness_gateway::audit::journal::{EMPTY_AT_BYTES, Journal};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("gateway.db");
    let url = format!("sqlite://{}", db.display());
    let store = sqlite_store(&url).await;
    let journal = Journal::open_with(store.clone(), &db, std::time::Duration::from_millis(50), EMPTY_AT_BYTES).await.unwrap();
    for n in 1..=3 {
        journal.append(pending_read(n)).unwrap();
    }
    journal.flush().await.unwrap();
    assert_eq!(journal.events_read_back(), 0);
    // The database refuses the load: the events taken from memory for it are lost there, so
    // they must come from the file once the database takes them again.
    crate::helpers::exec_sql(&url, "ALTER TABLE audit_event_patients RENAME TO audit_event_patients_away").await;
    journal.append(pending_read(4)).unwrap();
    journal.append(pending_read(5)).unwrap();
    assert!(journal.flush().await.is_err(), "the load fails");
    assert!(journal.append(pending_read(6)).is_err(), "fail closed: no disclosure without its audit");
    crate::helpers::exec_sql(&url, "ALTER TABLE audit_event_patients_away RENAME TO audit_event_patients").await;
    let mut loaded = false;
    for _ in 0..200 {
        if journal.flush().await.is_ok() {
            loaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(loaded, "the loader recovers once the database takes the events");
    let read_back = journal.events_read_back();
    assert!(read_back >= 2, "events 4 and 5 came from the file (once per attempt): {read_back}");
    // Caught up: memory mirrors the file again.
    for n in 6..=8 {
        journal.append(pending_read(n)).unwrap();
    }
    journal.flush().await.unwrap();
    assert_eq!(journal.events_read_back(), read_back);
    let report = wellness_gateway::audit::verify(&store).await.unwrap();
    assert_eq!((report.events, report.broken), (8, None));
    assert_eq!(store.audit_chain(0, 100).await.unwrap().len(), 8, "each event once");
}
