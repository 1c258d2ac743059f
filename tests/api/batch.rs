//! `$batch`: JSON array and NDJSON, per-record answers, atomic mode, limits, listing and paging.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, outcome, session, session_with_id, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    mixed_json_array_batch_reports_per_record,
    ndjson_batch_numbers_lines,
    atomic_batch_is_all_or_nothing,
    listing_pages_through_every_session_once
);

fn invalid() -> Value {
    let mut s = session_with_id("BATCH-BAD");
    s["clinician"]["npi"] = json!("1234567890");
    s
}

async fn mixed_json_array_batch_reports_per_record(app: TestApp) {
    let mut amended = session_with_id("BATCH-1");
    amended["note"] = json!("changed");
    let body = json!([session_with_id("BATCH-1"), session_with_id("BATCH-2"), invalid(), session_with_id("BATCH-1"), amended]);
    let res = app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &body).await;
    assert_eq!(res.status().as_u16(), 200);
    let r: Value = res.json().await.unwrap();
    let statuses: Vec<&str> = r["results"].as_array().unwrap().iter().map(|x| x["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["created", "created", "rejected", "duplicate", "amended"]);
    assert_eq!(
        (r["created"].as_u64(), r["amended"].as_u64(), r["duplicate"].as_u64(), r["rejected"].as_u64()),
        (Some(2), Some(1), Some(1), Some(1))
    );
    assert_eq!(r["committed"], true);
    let bad = &r["results"][2];
    assert_eq!(bad["index"], 2);
    assert_eq!(bad["source_id"], "BATCH-BAD");
    assert_eq!(bad["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(bad["outcome"]["issue"][0]["expression"][0], "clinician.npi");
    assert_eq!(r["results"][4]["version"], 2);
    // Accepted records keep their identity in the receipt (their parsed tree is dropped before the write).
    assert_eq!(r["results"][0]["source_id"], "BATCH-1");
    assert_eq!(r["results"][4]["source_id"], "BATCH-1");
    assert_eq!(app.store.count_versions().await.unwrap(), 3);
    // Re-sending the current records changes nothing.
    let mut current = session_with_id("BATCH-1");
    current["note"] = json!("changed");
    let resend = json!([current, session_with_id("BATCH-2"), invalid()]);
    let again: Value = app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &resend).await.json().await.unwrap();
    assert_eq!(again["duplicate"], 2);
    assert_eq!(again["rejected"], 1);
    assert_eq!(app.store.count_versions().await.unwrap(), 3);
}

async fn ndjson_batch_numbers_lines(app: TestApp) {
    let mut body = String::new();
    body.push_str(&serde_json::to_string(&session_with_id("ND-1")).unwrap());
    body.push_str("\r\n\n{not json\n");
    body.push_str(&serde_json::to_string(&session_with_id("ND-2")).unwrap());
    body.push('\n');
    let res = app.post_raw("/api/v1/sessions/$batch", &app.submitter_token, "application/x-ndjson", body.into_bytes()).await;
    assert_eq!(res.status().as_u16(), 200);
    let r: Value = res.json().await.unwrap();
    assert_eq!(r["received"], 3);
    assert_eq!(r["results"][1]["status"], "rejected");
    assert_eq!(r["results"][1]["line"], 3);
    assert!(r["results"][1]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(r["results"][2]["line"], 4);
    assert_eq!(r["created"], 2);
}

async fn atomic_batch_is_all_or_nothing(app: TestApp) {
    let body = json!([session_with_id("AT-1"), invalid(), session_with_id("AT-2")]);
    let issues = outcome(app.post_json("/api/v1/sessions/$batch?atomic=true", &app.submitter_token, &body).await, 422).await;
    assert!(issues[0]["diagnostics"].as_str().unwrap().contains("nothing was stored"));
    let tagged = issues.iter().find(|i| i["expression"][0] == "clinician.npi").expect("record issue");
    assert!(tagged["extension"].as_array().unwrap().iter().any(|e| e["valueInteger"] == 1));
    assert!(tagged["diagnostics"].as_str().unwrap().starts_with("record 1"));
    assert_eq!(app.store.count_versions().await.unwrap(), 0);
    let ok: Value = app
        .post_json("/api/v1/sessions/$batch?atomic=true", &app.submitter_token, &json!([session_with_id("AT-1"), session_with_id("AT-2")]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ok["created"], 2);
    assert_eq!(app.store.count_versions().await.unwrap(), 2);
    // Unknown query parameters are refused.
    outcome(app.post_json("/api/v1/sessions/$batch?atomik=true", &app.submitter_token, &body).await, 400).await;
    // Shapes and content types.
    outcome(app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &session()).await, 400).await;
    outcome(app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &json!([])).await, 400).await;
    outcome(app.post_raw("/api/v1/sessions/$batch", &app.submitter_token, "text/csv", b"a,b".to_vec()).await, 415).await;
}

#[tokio::test]
async fn batch_over_the_record_limit_is_refused_with_413() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.intake.max_batch_records = 3).await.unwrap();
    let body = json!([session_with_id("L-1"), session_with_id("L-2"), session_with_id("L-3"), session_with_id("L-4")]);
    let issues = outcome(app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &body).await, 413).await;
    assert!(issues[0]["diagnostics"].as_str().unwrap().contains("limit is 3"));
    assert_eq!(app.store.count_versions().await.unwrap(), 0);
}

async fn listing_pages_through_every_session_once(app: TestApp) {
    let mut records: Vec<Value> = (0..25).map(|i| session_with_id(&format!("PAGE-{i:03}"))).collect();
    for r in records.iter_mut().skip(20) {
        r["site"] = json!("site-demo-ms");
    }
    let r: Value = app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &Value::Array(records)).await.json().await.unwrap();
    assert_eq!(r["created"], 25);
    let mut seen = std::collections::BTreeSet::new();
    let mut next = Some("/api/v1/sessions?_count=10".to_string());
    let mut pages = 0;
    while let Some(url) = next {
        let page: Value = app.get(&url, &app.submitter_token).await.json().await.unwrap();
        for item in page["items"].as_array().unwrap() {
            assert!(seen.insert(item["source_id"].as_str().unwrap().to_owned()), "seen twice: {item}");
        }
        next = page["next"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages < 10);
    }
    assert_eq!(seen.len(), 25);
    let ms: Value = app.get("/api/v1/sessions?site=site-demo-ms", &app.submitter_token).await.json().await.unwrap();
    assert_eq!(ms["items"].as_array().unwrap().len(), 5);
    let future: Value = app.get("/api/v1/sessions?since=2099-01-01", &app.submitter_token).await.json().await.unwrap();
    assert_eq!(future["items"].as_array().unwrap().len(), 0);
    let past: Value = app.get("/api/v1/sessions?since=2020-01-01T00:00:00Z&_count=1000", &app.submitter_token).await.json().await.unwrap();
    assert_eq!(past["items"].as_array().unwrap().len(), 25);
    outcome(app.get("/api/v1/sessions?since=yesterday", &app.submitter_token).await, 400).await;
    outcome(app.get("/api/v1/sessions?cursor=garbage", &app.submitter_token).await, 400).await;
    outcome(app.get("/api/v1/sessions?colour=red", &app.submitter_token).await, 400).await;
}
