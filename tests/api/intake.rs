//! Single-session intake: happy path, exactly-once, versions, semantic checks, hostile bodies.

use serde_json::{Value, json};

use crate::helpers::{TestApp, exec_sql, has_issue, outcome, session, session_with_id};
use crate::on_both_backends;

on_both_backends!(
    happy_path_stores_and_reads_back,
    identical_resubmission_is_a_duplicate,
    amended_record_keeps_every_version,
    each_semantic_check_rejects_with_its_field,
    malformed_and_hostile_bodies_get_precise_outcomes,
    concurrent_identical_submissions_store_one_version,
    rejected_records_go_to_the_rejected_lane,
    a_write_the_database_rolls_back_stores_nothing_and_intake_goes_on,
);

async fn happy_path_stores_and_reads_back(app: TestApp) {
    let res = app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await;
    assert_eq!(res.status().as_u16(), 201);
    assert!(res.headers().get("x-request-id").is_some());
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let receipt: Value = res.json().await.unwrap();
    assert_eq!(receipt["status"], "created");
    assert_eq!(receipt["version"], 1);
    assert_eq!(receipt["lea"], "lea-demo");
    assert_eq!(location, format!("/api/v1/sessions/{}", receipt["id"].as_str().unwrap()));

    let got: Value = app.get(&location, &app.submitter_token).await.json().await.unwrap();
    assert_eq!(got["record"], session());
    assert_eq!(got["site"], "site-demo-hs");
    assert_eq!(got["versions"].as_array().unwrap().len(), 1);
}

async fn identical_resubmission_is_a_duplicate(app: TestApp) {
    let first: Value = app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await.json().await.unwrap();
    // Same content, different key order and spacing: still identical.
    let text = serde_json::to_string_pretty(&session()).unwrap().replace("\"lea\": \"lea-demo\",", "");
    let mut reordered: Value = serde_json::from_str(&text).unwrap();
    reordered["lea"] = json!("lea-demo");
    for body in [serde_json::to_vec(&session()).unwrap(), serde_json::to_vec_pretty(&reordered).unwrap()] {
        let res = app.post_raw("/api/v1/sessions", &app.submitter_token, "application/json", body).await;
        assert_eq!(res.status().as_u16(), 200);
        let again: Value = res.json().await.unwrap();
        assert_eq!(again["status"], "duplicate");
        assert_eq!(again["id"], first["id"]);
        assert_eq!(again["version"], 1);
        assert_eq!(again["received_at"], first["received_at"]);
    }
    assert_eq!(app.store.count_versions().await.unwrap(), 1);
}

async fn amended_record_keeps_every_version(app: TestApp) {
    let original_bytes = serde_json::to_vec(&session()).unwrap();
    let first: Value =
        app.post_raw("/api/v1/sessions", &app.submitter_token, "application/json", original_bytes.clone()).await.json().await.unwrap();
    let mut changed = session();
    changed["service"]["end"] = json!("2026-11-02T10:55:00-08:00");
    let res = app.post_json("/api/v1/sessions", &app.submitter_token, &changed).await;
    assert_eq!(res.status().as_u16(), 201);
    let second: Value = res.json().await.unwrap();
    assert_eq!(second["status"], "amended");
    assert_eq!(second["id"], first["id"]);
    assert_eq!(second["version"], 2);

    let id = first["id"].as_str().unwrap();
    let current: Value = app.get(&format!("/api/v1/sessions/{id}"), &app.submitter_token).await.json().await.unwrap();
    assert_eq!(current["version"], 2);
    assert_eq!(current["record"]["service"]["end"], "2026-11-02T10:55:00-08:00");
    assert_eq!(current["versions"].as_array().unwrap().len(), 2);
    let v1: Value = app.get(&format!("/api/v1/sessions/{id}/versions/1"), &app.submitter_token).await.json().await.unwrap();
    assert_eq!(v1["record"], session());
    // The exact submitted bytes and their SHA-256 are kept.
    let raw = app.get(&format!("/api/v1/sessions/{id}/versions/1/raw"), &app.submitter_token).await;
    assert_eq!(raw.status().as_u16(), 200);
    let bytes = raw.bytes().await.unwrap();
    assert_eq!(bytes.as_ref(), original_bytes.as_slice());
    assert_eq!(v1["raw_sha256"], wellness_gateway::intake::sha256_hex(&original_bytes));
    let missing = app.get(&format!("/api/v1/sessions/{id}/versions/3"), &app.submitter_token).await;
    outcome(missing, 404).await;
}

/// (what, how to change the valid example, expected field, text the diagnostics must contain)
type Case = (&'static str, Box<dyn Fn(&mut Value)>, &'static str, &'static str);

fn semantic_cases() -> Vec<Case> {
    vec![
        ("end before start", Box::new(|s| s["service"]["end"] = json!("2026-11-02T09:00:00-08:00")), "service.end", "after service.start"),
        ("too long", Box::new(|s| s["service"]["end"] = json!("2026-11-02T20:00:00-08:00")), "service.end", "longer than"),
        (
            "face-to-face > duration",
            Box::new(|s| s["service"]["minutes_face_to_face"] = json!(90)),
            "service.minutes_face_to_face",
            "longer than the session",
        ),
        ("NPI check digit", Box::new(|s| s["clinician"]["npi"] = json!("1234567890")), "clinician.npi", "check digit"),
        ("ICD-10 shape", Box::new(|s| s["diagnoses"] = json!(["F41.1", "41.1"])), "diagnoses[1]", "not an ICD-10-CM code"),
        ("repeated diagnosis", Box::new(|s| s["diagnoses"] = json!(["F41.1", "F411"])), "diagnoses[1]", "repeats"),
        (
            "CIN shape",
            Box::new(|s| s["student"]["medi_cal_cin"] = json!("91234567")),
            "student.medi_cal_cin",
            "8 digits followed by a letter",
        ),
        (
            "future session",
            Box::new(|s| {
                s["service"]["start"] = json!("2099-01-01T10:00:00-08:00");
                s["service"]["end"] = json!("2099-01-01T10:45:00-08:00");
            }),
            "service.start",
            "in the future",
        ),
        ("future birth date", Box::new(|s| s["student"]["birth_date"] = json!("2099-01-01")), "student.birth_date", "in the future"),
        ("implausible age", Box::new(|s| s["student"]["birth_date"] = json!("1950-01-01")), "student.birth_date", "years old"),
        (
            "group of one",
            Box::new(|s| {
                s["service"]["type"] = json!("group-counseling");
                s["service"]["group_size"] = json!(1);
                s["service"]["group_id"] = json!("G1");
            }),
            "service.group_size",
            "at least 2",
        ),
        (
            "group without id",
            Box::new(|s| {
                s["service"]["type"] = json!("group-counseling");
                s["service"]["group_size"] = json!(4);
            }),
            "service.group_id",
            "group_id",
        ),
        (
            "family without participants",
            Box::new(|s| s["service"]["type"] = json!("family-counseling")),
            "service.participants",
            "family member",
        ),
        ("site of another LEA", Box::new(|s| s["site"] = json!("site-other-es")), "site", "belongs to LEA"),
        ("unknown site", Box::new(|s| s["site"] = json!("site-nowhere")), "site", "not a configured school site"),
        (
            "minor too young to self-consent",
            Box::new(|s| {
                s["student"]["birth_date"] = json!("2016-01-01");
                s["treatment_consent"] = json!("minor-self");
            }),
            "treatment_consent",
            "Family Code 6924",
        ),
        (
            "associate without supervisor",
            Box::new(|s| s["clinician"]["credential"] = json!("AMFT")),
            "clinician.supervisor",
            "supervising licensee",
        ),
        ("bad service type", Box::new(|s| s["service"]["type"] = json!("yoga")), "service.type", "must be one of"),
        ("bad date format", Box::new(|s| s["student"]["birth_date"] = json!("04/02/2011")), "student.birth_date", "YYYY-MM-DD"),
        ("missing offset", Box::new(|s| s["service"]["start"] = json!("2026-11-02T10:05:00")), "service.start", "UTC offset"),
        (
            "missing field",
            Box::new(|s| {
                s["student"].as_object_mut().unwrap().remove("birth_date");
            }),
            "student.birth_date",
            "required",
        ),
        ("unknown field", Box::new(|s| s["student"]["shoe_size"] = json!(7)), "student.shoe_size", "not a field"),
    ]
}

async fn each_semantic_check_rejects_with_its_field(app: TestApp) {
    for (what, change, field, text) in semantic_cases() {
        let mut s = session();
        change(&mut s);
        let issues = outcome(app.post_json("/api/v1/sessions", &app.submitter_token, &s).await, 422).await;
        assert!(has_issue(&issues, field, text), "{what}: expected {field} / {text:?} in {issues:#?}");
        for i in &issues {
            assert_eq!(i["severity"], "error", "{what}");
            assert!(i["code"].is_string(), "{what}");
        }
    }
    assert_eq!(app.store.count_versions().await.unwrap(), 0, "nothing rejected may be stored as a session");
}

async fn malformed_and_hostile_bodies_get_precise_outcomes(app: TestApp) {
    let t = &app.submitter_token;
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("truncated JSON", "application/json", b"{\"source_id\": \"a\"".to_vec(), 400, "not valid JSON"),
        ("not JSON at all", "application/json", b"source_id=a".to_vec(), 400, "not valid JSON"),
        ("invalid UTF-8", "application/json", b"{\"source_id\": \"\xff\xfe\"}".to_vec(), 400, "not valid JSON"),
        ("deep nesting", "application/json", "[".repeat(100_000).into_bytes(), 400, "not valid JSON"),
        ("array instead of object", "application/json", b"[1,2]".to_vec(), 422, "must be an object"),
        ("wrong content type", "text/plain", serde_json::to_vec(&session()).unwrap(), 415, "not accepted"),
        ("empty body", "application/json", Vec::new(), 400, "empty"),
        ("huge string", "application/json", serde_json::to_vec(&json!({"note": "x".repeat(20_000)})).unwrap(), 422, "longer than"),
        ("NUL and control characters", "application/json", br#"{"source_id": "a\u0000b"}"#.to_vec(), 422, "source_id"),
    ];
    for (what, ct, body, status, text) in cases {
        let issues = outcome(app.post_raw("/api/v1/sessions", t, ct, body).await, status).await;
        assert!(
            issues.iter().any(|i| i["diagnostics"].as_str().is_some_and(|d| d.contains(text))),
            "{what}: expected {text:?} in {issues:#?}"
        );
    }
    // No Content-Type at all.
    let res = app.client.post(app.url("/api/v1/sessions")).bearer_auth(t).body("{}").send().await.unwrap();
    outcome(res, 415).await;
    // Oversized body: refused before reading it whole.
    let big = vec![b' '; app.settings.server.max_body_bytes + 1];
    outcome(app.post_raw("/api/v1/sessions", t, "application/json", big).await, 413).await;
    // The server is still healthy.
    assert_eq!(app.client.get(app.url("/health/ready")).send().await.unwrap().status().as_u16(), 200);
}

async fn concurrent_identical_submissions_store_one_version(app: TestApp) {
    let body = session_with_id("CONCURRENT-1");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (client, url, token, body) = (app.client.clone(), app.url("/api/v1/sessions"), app.submitter_token.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            client.post(url).bearer_auth(token).json(&body).send().await.unwrap().json::<Value>().await.unwrap()
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        ids.insert(r["id"].as_str().unwrap().to_owned());
        assert_eq!(r["version"], 1, "{r}");
        if r["status"] == "created" {
            created += 1;
        }
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(created, 1);
    assert_eq!(app.store.count_versions().await.unwrap(), 1);
}

async fn rejected_records_go_to_the_rejected_lane(app: TestApp) {
    let mut bad = session();
    bad["clinician"]["npi"] = json!("1234567890");
    outcome(app.post_json("/api/v1/sessions", &app.submitter_token, &bad).await, 422).await;
    assert_eq!(app.store.count_rejections(Some("lea-demo")).await.unwrap(), 1);
}

/// A write the database refuses midway and rolls back entirely (on SQLite the multi-row inserts
/// are `INSERT OR ROLLBACK`, after which sqlx still counts the connection as inside the
/// transaction): the request fails with an OperationOutcome, nothing of it is stored, and the
/// next write goes through. A trigger stands in for the violation.
async fn a_write_the_database_rolls_back_stores_nothing_and_intake_goes_on(app: TestApp) {
    let url = app.db.url.clone();
    if url.starts_with("sqlite") {
        exec_sql(&url, "CREATE TRIGGER boom BEFORE INSERT ON fhir_changes BEGIN SELECT RAISE(ROLLBACK, 'boom'); END").await;
    } else {
        exec_sql(&url, "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'boom'; END $$ LANGUAGE plpgsql").await;
        exec_sql(&url, "CREATE TRIGGER boom BEFORE INSERT ON fhir_changes FOR EACH ROW EXECUTE FUNCTION boom()").await;
    }
    for _ in 0..2 {
        let res = app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await;
        assert!(res.status().is_server_error(), "{}", res.status());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["resourceType"], "OperationOutcome");
    }
    if url.starts_with("sqlite") {
        exec_sql(&url, "DROP TRIGGER boom").await;
    } else {
        exec_sql(&url, "DROP TRIGGER boom ON fhir_changes").await;
        exec_sql(&url, "DROP FUNCTION boom()").await;
    }
    // Nothing of the refused writes was kept: the same session is new now, on a working writer.
    for (source_id, status) in [("S-1", "created"), ("S-1", "duplicate"), ("S-2", "created")] {
        let s = if source_id == "S-1" { session() } else { session_with_id(source_id) };
        let res = app.post_json("/api/v1/sessions", &app.submitter_token, &s).await;
        assert!(res.status().is_success(), "{}", res.status());
        let receipt: Value = res.json().await.unwrap();
        assert_eq!(receipt["status"], status);
        assert_eq!(receipt["version"], 1);
    }
}
