//! The binary: `clients add`, `import` of a CSV with bad rows, `migrate`, `check`, config errors.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{Backend, TestDb, repo_path, spawn_app_with};

fn gateway(database_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wellness-gateway"));
    cmd.current_dir(repo_path("")).env("WG__DATABASE__URL", database_url).env("RUST_LOG", "warn");
    cmd
}

const CSV_HEADER: &str = "source_id,lea,site,student.district_id,student.medi_cal_cin,student.given_name,student.family_name,student.birth_date,student.sex,student.grade,clinician.npi,clinician.given_name,clinician.family_name,clinician.credential,service.type,service.tier,service.modality,service.start,service.end,diagnoses,consent_ids,note";

fn csv_row(id: &str, npi: &str, tier: &str) -> String {
    format!(
        "{id},lea-demo,site-demo-hs,S{id},91234567A,Test,Student,2011-04-02,female,09,{npi},Maya,Reed,LCSW,individual-counseling,{tier},in-person,2026-11-02T10:05:00-08:00,2026-11-02T10:50:00-08:00,F41.1;Z63.8,,\"Note, with a comma\""
    )
}

async fn import_and_clients(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sessions.csv");
    let mut text = format!("{CSV_HEADER}\n");
    text.push_str(&csv_row("CSV-1", "1234567893", "3"));
    text.push('\n');
    text.push_str(&csv_row("CSV-2", "1234567890", "3")); // bad NPI
    text.push_str("\r\n");
    text.push_str(&csv_row("CSV-3", "1234567893", "three")); // not a number
    text.push('\n');
    text.push_str(&csv_row("CSV-4", "1234567893", "2"));
    text.push('\n');
    std::fs::write(&file, &text).unwrap();

    let out = gateway(&db.url).args(["import", "--quiet", "--json"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((summary["received"].as_u64(), summary["created"].as_u64(), summary["rejected"].as_u64()), (Some(4), Some(2), Some(2)));
    let report = std::fs::read_to_string(dir.path().join("sessions.csv.errors.csv")).unwrap();
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[0], "line,source_id,field,message");
    assert!(lines.iter().any(|l| l.starts_with("3,CSV-2,clinician.npi,")), "{report}");
    assert!(lines.iter().any(|l| l.starts_with("4,CSV-3,service.tier,")), "{report}");
    // Importing again: all duplicates, nothing new.
    let out = gateway(&db.url).args(["import", "--quiet", "--json"]).arg(&file).output().unwrap();
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["duplicate"], 2);

    // clients add prints the secret alone on the last line; it authenticates against the server.
    let out =
        gateway(&db.url).args(["clients", "add", "--name", "County clerk", "--role", "submitter", "--org", "lea-demo"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.lines().last().unwrap().to_owned();
    assert!(secret.starts_with("wg_") && secret.len() == 67, "{stdout}");
    let url = db.url.clone();
    let app = spawn_app_with(backend, |s| s.database.url = url.into()).await.unwrap();
    let page: Value = app.get("/api/v1/sessions", &secret).await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let stored: Value =
        app.get(&format!("/api/v1/sessions/{}", page["items"][0]["id"].as_str().unwrap()), &secret).await.json().await.unwrap();
    assert_eq!(stored["raw_format"], "text/csv");
    assert_eq!(stored["record"]["note"], "Note, with a comma");
    let raw = app.get(&format!("/api/v1/sessions/{}/versions/1/raw", stored["id"].as_str().unwrap()), &secret).await.text().await.unwrap();
    assert_eq!(raw, csv_row(stored["source_id"].as_str().unwrap(), "1234567893", if stored["source_id"] == "CSV-1" { "3" } else { "2" }));
    drop(app);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_csv_with_bad_rows_and_register_client_sqlite() {
    import_and_clients(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_csv_with_bad_rows_and_register_client_postgres() {
    import_and_clients(Backend::Postgres).await;
}

#[test]
fn clients_add_refuses_a_wrong_binding() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let out = gateway(&url).args(["clients", "add", "--name", "x", "--role", "submitter", "--org", "fqhc-demo"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a lea"));
    let out = gateway(&url).args(["clients", "add", "--name", "x", "--role", "partner"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn migrate_check_and_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let out = gateway(&url).arg("migrate").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = gateway(&url).arg("check").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A typo in an environment override names the key.
    let out = gateway(&url).arg("check").env("WG__SERVER__PORT", "eighty").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).to_lowercase().contains("server.port"));
    // A bad file names the file and the key.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[sites]]\nid = \"s\"\nlea = \"nowhere\"\nname = \"S\"\n").unwrap();
    let out = gateway(&url).arg("--config").arg(&bad).arg("check").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("bad.toml") && err.contains("sites[0].lea"), "{err}");
}

#[test]
fn clients_add_registers_a_smart_partner() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let jwks = crate::helpers::repo_path("tests/fixtures/smart/jwks.json");
    let out = gateway(&url)
        .args(["clients", "add", "--name", "FQHC EHR", "--role", "partner", "--org", "fqhc-demo", "--jwks"])
        .arg(&jwks)
        .args(["--scope", "system/Encounter.rs system/Patient.read"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap();
    assert!(uuid::Uuid::parse_str(last).is_ok(), "the client id alone on the last line: {stdout}");
    assert!(stdout.contains("system/Encounter.rs system/Patient.read"));
    // A URL must be https; a secret-style partner is refused; --jwks is for partners only.
    let out = gateway(&url)
        .args(["clients", "add", "--name", "x", "--role", "partner", "--org", "fqhc-demo", "--jwks", "http://example.org/jwks"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("https"));
    let out = gateway(&url).args(["clients", "add", "--name", "x", "--role", "partner", "--org", "fqhc-demo"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--jwks"));
    let out = gateway(&url).args(["clients", "add", "--name", "x", "--role", "admin", "--jwks"]).arg(&jwks).output().unwrap();
    assert!(!out.status.success());
}

/// The binary itself starts and serves (the tests above build the app in-process; this catches
/// what only `main` sets up, such as the TLS crypto provider of outgoing HTTP clients).
#[test]
fn serve_starts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("g.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut child = gateway(&url).arg("serve").env("WG__SERVER__PORT", port.to_string()).spawn().unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /.well-known/smart-configuration HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            ready = out.starts_with("HTTP/1.1 200") && out.contains("token_endpoint");
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(exited.is_none(), "serve exited: {exited:?}");
    assert!(ready, "serve did not answer on port {port}");
}

/// `remit FILE…`: posts 835 files (here the corpus's 1,000-claim synthetic 835, whose claims
/// this gateway never filed: all unmatched, queued as exceptions), prints the API's answer with
/// `--json`, does nothing the second time, and refuses a 4010 file with a non-zero exit.
async fn remit_files(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else { return };
    let corpora = crate::corpora::corpora_dir();
    let big = corpora.join("x12/large/x12sdk-synthetic__synth_835_1000.x12");
    let out = gateway(&db.url).args(["remit", "--quiet", "--json"]).arg(&big).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &answer["report"]["transactions"][0];
    assert_eq!((t["status"].as_str(), t["claim_count"].as_i64(), t["unmatched"].as_i64()), (Some("posted"), Some(1000), Some(1000)), "{t}");
    assert_eq!(t["unmatched_claims"].as_array().map(Vec::len), Some(100));
    let out = gateway(&db.url).args(["remit", "--quiet", "--json"]).arg(&big).output().unwrap();
    let again: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again["report"]["transactions"][0]["status"], "duplicate");
    // Plain text: one line per payment.
    let out = gateway(&db.url).args(["remit", "--quiet"]).arg(&big).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("payment duplicate") && text.contains("1000 claims"), "{text}");
    let old = corpora.join("x12/legacy-4010/pyx12__835_simple.txt");
    let out = gateway(&db.url).args(["remit", "--quiet"]).arg(&old).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused, nothing posted") && err.contains("segment 1 (ISA)") && err.contains("4010"), "{err}");
}

#[tokio::test]
async fn remit_files_sqlite() {
    remit_files(Backend::Sqlite).await;
}

#[tokio::test]
async fn remit_files_postgres() {
    remit_files(Backend::Postgres).await;
}
