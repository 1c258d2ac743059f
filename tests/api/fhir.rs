//! Sessions become stored FHIR R4 resources, read back over `/fhir`: read, vread, history,
//! conditional read, every search parameter and prefix, includes, keyset paging, access, and
//! mapping failures that store nothing.

use std::collections::HashSet;

use serde_json::{Value, json};
use wellness_gateway::fhir::FhirSchema;

use crate::helpers::{Backend, TestApp, copy_mappings, has_issue, outcome, repo_path, session, spawn_app_with};
use crate::on_both_backends;

on_both_backends!(
    a_session_round_trips_to_valid_fhir_resources,
    shared_resources_are_upserted_not_duplicated,
    an_amendment_versions_resources_and_deletes_dropped_conditions,
    every_search_parameter_and_prefix,
    paging_through_2500_encounters_returns_each_exactly_once,
    access_is_admin_or_the_submitting_lea_only,
);

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let res = app.get(path, token).await;
    assert_eq!(res.status().as_u16(), 200, "GET {path}");
    assert_eq!(res.headers()["content-type"], "application/fhir+json");
    res.json().await.unwrap()
}

/// Ids of the `match` entries of a search, in order.
async fn search(app: &TestApp, query: &str) -> Vec<String> {
    let b = get_json(app, &format!("/fhir/{query}"), &app.admin_token).await;
    assert_eq!(b["type"], "searchset");
    matches(&b)
}

fn matches(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn one_id(id: &str) -> Vec<String> {
    vec![id.to_string()]
}

fn set(ids: &[&String]) -> HashSet<String> {
    ids.iter().map(|s| (*s).clone()).collect()
}

fn as_set(v: Vec<String>) -> HashSet<String> {
    v.into_iter().collect()
}

async fn submit(app: &TestApp, s: &Value) -> Value {
    let res = app.post_json("/api/v1/sessions", &app.submitter_token, s).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    res.json().await.unwrap()
}

async fn one(app: &TestApp, query: &str) -> Value {
    let b = get_json(app, &format!("/fhir/{query}"), &app.admin_token).await;
    let entries = b["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{query}: {b}");
    entries[0]["resource"].clone()
}

fn reference_id(r: &Value) -> String {
    r["reference"].as_str().unwrap().rsplit('/').next().unwrap().to_string()
}

async fn a_session_round_trips_to_valid_fhir_resources(app: TestApp) {
    let receipt = submit(&app, &session()).await;
    let session_id = receipt["id"].as_str().unwrap();
    // The Encounter's id is the session's id.
    let enc = get_json(&app, &format!("/fhir/Encounter/{session_id}"), &app.submitter_token).await;
    assert_eq!(enc["resourceType"], "Encounter");
    assert_eq!(enc["meta"]["versionId"], "1");
    assert_eq!(enc["status"], "finished");
    assert_eq!(enc["period"]["start"], "2026-11-02T10:05:00-08:00");
    assert_eq!(enc["location"][0]["location"]["reference"], "Location/site-demo-hs");
    assert_eq!(enc["serviceProvider"]["reference"], "Organization/fqhc-demo");
    assert_eq!(enc["length"]["value"], 45);

    // Every referenced resource is stored, readable and valid against the official R4 schema.
    let schema = FhirSchema::load(&repo_path("schemas")).unwrap();
    let patient_id = reference_id(&enc["subject"]);
    let mut refs = vec![format!("Patient/{patient_id}"), "Location/site-demo-hs".into(), "Organization/fqhc-demo".into()];
    for p in enc["participant"].as_array().unwrap() {
        refs.push(p["individual"]["reference"].as_str().unwrap().to_string());
    }
    for d in enc["diagnosis"].as_array().unwrap() {
        refs.push(d["condition"]["reference"].as_str().unwrap().to_string());
    }
    for r in &refs {
        let res = get_json(&app, &format!("/fhir/{r}"), &app.admin_token).await;
        assert_eq!(format!("{}/{}", res["resourceType"].as_str().unwrap(), res["id"].as_str().unwrap()), *r);
        schema.validate(&res).unwrap_or_else(|v| panic!("{r}: {v:?}"));
    }
    schema.validate(&enc).unwrap();
    let patient = get_json(&app, &format!("/fhir/Patient/{patient_id}"), &app.admin_token).await;
    assert_eq!(patient["birthDate"], "2011-04-02");
    assert_eq!(patient["gender"], "female");
    assert!(patient["identifier"].as_array().unwrap().iter().any(|i| i["value"] == "S1002345"));
    // Coverage for the Medi-Cal CIN, and a Provenance naming the session and its bytes.
    let cov = one(&app, &format!("Coverage?beneficiary={patient_id}")).await;
    schema.validate(&cov).unwrap();
    let prov = one(&app, &format!("Provenance?target=Encounter/{session_id}")).await;
    schema.validate(&prov).unwrap();
    let entities = prov["entity"].to_string();
    assert!(entities.contains("LEADEMO-2026-000123"), "{entities}");
    assert!(entities.contains(&format!("session {session_id} version 1")), "{entities}");
    assert!(prov["target"].as_array().unwrap().len() >= 8);

    // Headers: FHIR JSON, ETag, Last-Modified; If-None-Match answers 304.
    let res = app.get(&format!("/fhir/Encounter/{session_id}"), &app.admin_token).await;
    assert_eq!(res.headers()["etag"], "W/\"1\"");
    assert!(res.headers().contains_key("last-modified"));
    let res = app
        .client
        .get(app.url(&format!("/fhir/Encounter/{session_id}")))
        .bearer_auth(&app.admin_token)
        .header("If-None-Match", "W/\"1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 304);
    let res = app
        .client
        .get(app.url(&format!("/fhir/Encounter/{session_id}")))
        .bearer_auth(&app.admin_token)
        .header("If-None-Match", "W/\"7\"")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    // vread, history; unknowns are 404 OperationOutcomes.
    let v1 = get_json(&app, &format!("/fhir/Encounter/{session_id}/_history/1"), &app.admin_token).await;
    assert_eq!(v1, enc);
    let h = get_json(&app, &format!("/fhir/Encounter/{session_id}/_history"), &app.admin_token).await;
    assert_eq!(h["type"], "history");
    assert_eq!(h["entry"].as_array().unwrap().len(), 1);
    let issues = outcome(app.get(&format!("/fhir/Encounter/{session_id}/_history/2"), &app.admin_token).await, 404).await;
    assert!(!issues.is_empty());
    outcome(app.get("/fhir/Encounter/no-such-id", &app.admin_token).await, 404).await;
    outcome(app.get("/fhir/Observation/x", &app.admin_token).await, 404).await;
    outcome(app.get("/fhir/Encounter/bad%20id", &app.admin_token).await, 404).await;
    outcome(app.get(&format!("/fhir/Encounter/{session_id}?foo=bar"), &app.admin_token).await, 400).await;

    // The stored session and the FHIR side agree on the session's version.
    let stored: Value = app.get(&format!("/api/v1/sessions/{session_id}"), &app.admin_token).await.json().await.unwrap();
    assert_eq!(stored["version"], 1);
}

fn second_student(source_id: &str) -> Value {
    let mut s = session();
    s["source_id"] = json!(source_id);
    s["student"] =
        json!({ "district_id": "S2000001", "given_name": "José", "family_name": "Núñez", "birth_date": "2010-09-15", "sex": "male" });
    s
}

async fn shared_resources_are_upserted_not_duplicated(app: TestApp) {
    let mut later = session();
    later["source_id"] = json!("LEADEMO-2026-000124");
    later["service"]["start"] = json!("2026-11-09T10:05:00-08:00");
    later["service"]["end"] = json!("2026-11-09T10:50:00-08:00");
    submit(&app, &session()).await;
    submit(&app, &later).await;
    submit(&app, &second_student("LEADEMO-2026-000200")).await;
    // Two students, three encounters; one clinician, one site, one LEA, one FQHC.
    assert_eq!(search(&app, "Patient").await.len(), 2);
    assert_eq!(search(&app, "Encounter").await.len(), 3);
    assert_eq!(search(&app, "Practitioner").await.len(), 1);
    assert_eq!(search(&app, "Location").await.len(), 1);
    assert_eq!(search(&app, "Organization").await.len(), 2);
    assert_eq!(search(&app, "Provenance").await.len(), 3);
    // The shared Patient was written once: still version 1.
    let p = one(&app, "Patient?identifier=S1002345").await;
    assert_eq!(p["meta"]["versionId"], "1");
    let total = get_json(&app, "/fhir/Condition?_summary=count", &app.admin_token).await;
    assert_eq!(total["total"], 6);
}

async fn an_amendment_versions_resources_and_deletes_dropped_conditions(app: TestApp) {
    let first = submit(&app, &session()).await;
    let id = first["id"].as_str().unwrap().to_string();
    let enc1 = get_json(&app, &format!("/fhir/Encounter/{id}"), &app.admin_token).await;
    let conditions1 = search(&app, &format!("Condition?encounter={id}")).await;
    assert_eq!(conditions1.len(), 2);

    // Amend: a later end time and only the first diagnosis.
    let mut amended = session();
    amended["service"]["end"] = json!("2026-11-02T10:55:00-08:00");
    amended["diagnoses"] = json!(["F41.1"]);
    let second = submit(&app, &amended).await;
    assert_eq!((second["status"].as_str(), second["version"].as_i64()), (Some("amended"), Some(2)));

    let enc2 = get_json(&app, &format!("/fhir/Encounter/{id}"), &app.admin_token).await;
    assert_eq!(enc2["meta"]["versionId"], "2");
    assert_eq!(enc2["length"]["value"], 50);
    // The old version stays readable, unchanged.
    assert_eq!(get_json(&app, &format!("/fhir/Encounter/{id}/_history/1"), &app.admin_token).await, enc1);
    let h = get_json(&app, &format!("/fhir/Encounter/{id}/_history"), &app.admin_token).await;
    let versions: Vec<&str> = h["entry"].as_array().unwrap().iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(versions, ["2", "1"]);

    // The dropped diagnosis: its Condition is deleted (410), its history ends with a DELETE.
    let conditions2 = search(&app, &format!("Condition?encounter={id}")).await;
    assert_eq!(conditions2.len(), 1);
    let dropped = conditions1.iter().find(|c| !conditions2.contains(c)).unwrap();
    let issues = outcome(app.get(&format!("/fhir/Condition/{dropped}"), &app.admin_token).await, 410).await;
    assert_eq!(issues[0]["code"], "deleted");
    let h = get_json(&app, &format!("/fhir/Condition/{dropped}/_history"), &app.admin_token).await;
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(h["entry"][0].get("resource").is_none());
    outcome(app.get(&format!("/fhir/Condition/{dropped}/_history/2"), &app.admin_token).await, 410).await;
    get_json(&app, &format!("/fhir/Condition/{dropped}/_history/1"), &app.admin_token).await;
    // The kept Condition did not change, so it is still version 1.
    let kept = one(&app, &format!("Condition?encounter={id}")).await;
    assert_eq!(kept["meta"]["versionId"], "1");
    // One Provenance per session version.
    assert_eq!(search(&app, &format!("Provenance?target=Encounter/{id}")).await.len(), 2);

    // Restoring the diagnosis brings the Condition back as a new version.
    submit(&app, &session()).await;
    let back = get_json(&app, &format!("/fhir/Condition/{dropped}"), &app.admin_token).await;
    assert_eq!(back["meta"]["versionId"], "3");
    // Re-sending identical content changes nothing.
    submit(&app, &session()).await;
    assert_eq!(get_json(&app, &format!("/fhir/Encounter/{id}"), &app.admin_token).await["meta"]["versionId"], "3");
}

async fn every_search_parameter_and_prefix(app: TestApp) {
    // E1: Ana, 2026-10-05 at the high school, Maya Reed (LCSW), F41.1 + Z63.8.
    let mut e1 = session();
    e1["source_id"] = json!("E1");
    e1["service"]["start"] = json!("2026-10-05T10:00:00-07:00");
    e1["service"]["end"] = json!("2026-10-05T10:45:00-07:00");
    // E2: José, 2026-10-20, same clinician, F32.0.
    let mut e2 = second_student("E2");
    e2["service"]["start"] = json!("2026-10-20T09:00:00-07:00");
    e2["service"]["end"] = json!("2026-10-20T09:40:00-07:00");
    e2["diagnoses"] = json!(["F32.0"]);
    // E3: Ana, 2026-11-02 at the middle school, Priya Natarajan (LMFT), F41.1.
    let mut e3 = session();
    e3["source_id"] = json!("E3");
    e3["site"] = json!("site-demo-ms");
    e3["clinician"] = json!({ "npi": "1550123453", "given_name": "Priya", "family_name": "Natarajan", "credential": "LMFT" });
    e3["diagnoses"] = json!(["F41.1"]);
    let mut ids = Vec::new();
    for s in [&e1, &e2, &e3] {
        ids.push(submit(&app, s).await["id"].as_str().unwrap().to_string());
    }
    let [e1, e2, e3] = [&ids[0], &ids[1], &ids[2]];
    let student = "urn:wellness-gateway:lea:lea-demo:student-id";

    // Patient: identifier (code, system|code, |code, system|), name, birthdate, _id.
    let ana = one(&app, &format!("Patient?identifier={student}|S1002345")).await["id"].as_str().unwrap().to_string();
    let jose = one(&app, "Patient?identifier=S2000001").await["id"].as_str().unwrap().to_string();
    assert!(search(&app, "Patient?identifier=%7CS1002345").await.is_empty(), "the identifier has a system");
    assert_eq!(as_set(search(&app, &format!("Patient?identifier={student}%7C")).await), set(&[&ana, &jose]));
    assert_eq!(search(&app, "Patient?identifier=S1002345,S2000001").await.len(), 2);
    assert_eq!(search(&app, "Patient?name=lop").await, one_id(&ana));
    assert_eq!(search(&app, "Patient?name=NUNEZ").await, one_id(&jose), "case and accents are ignored");
    assert_eq!(search(&app, "Patient?name=jos").await, one_id(&jose));
    assert!(search(&app, "Patient?name=opez").await.is_empty(), "string search matches prefixes");
    assert_eq!(search(&app, "Patient?birthdate=2011-04-02").await, one_id(&ana));
    assert_eq!(search(&app, "Patient?birthdate=lt2011").await, one_id(&jose));
    assert_eq!(search(&app, "Patient?birthdate=ge2011-01-01").await, one_id(&ana));
    assert_eq!(search(&app, &format!("Patient?_id={ana}")).await, one_id(&ana));
    assert_eq!(search(&app, &format!("Patient?_id={ana},{jose}")).await.len(), 2);
    assert!(search(&app, &format!("Patient?_id={e1}")).await.is_empty(), "an Encounter's id is no Patient");
    assert!(search(&app, &format!("Encounter?_id={ana}")).await.is_empty(), "a Patient's id is no Encounter");

    // Encounter: patient, subject, date with every prefix, location, practitioner, status.
    assert_eq!(as_set(search(&app, &format!("Encounter?patient={ana}")).await), set(&[e1, e3]));
    assert_eq!(search(&app, &format!("Encounter?patient=Patient/{jose}")).await, one_id(e2));
    assert_eq!(as_set(search(&app, &format!("Encounter?subject=Patient/{ana}")).await), set(&[e1, e3]));
    assert_eq!(as_set(search(&app, &format!("Encounter?subject={ana}")).await), set(&[e1, e3]));
    for (q, want) in [
        ("date=2026-10-20", vec![e2]),
        ("date=eq2026-10-20", vec![e2]),
        ("date=ne2026-10-20", vec![e1, e3]),
        ("date=ge2026-10-20", vec![e2, e3]),
        ("date=gt2026-10-20", vec![e3]),
        ("date=le2026-10-20", vec![e1, e2]),
        ("date=lt2026-10-20", vec![e1]),
        ("date=sa2026-10-20", vec![e3]),
        ("date=eb2026-10-20", vec![e1]),
        ("date=2026-10", vec![e1, e2]),
        ("date=ge2026-10-01&date=le2026-10-31", vec![e1, e2]),
        ("date=2026-10-05,2026-11-02", vec![e1, e3]),
        ("date=ge2026-11-02T18:30:00Z", vec![e3]),
        ("date=gt2026-11-02T18:50:00Z", vec![]),
        ("date=lt2026-10-05T17:00:00Z", vec![]),
        ("date=le2026-10-05T17:00:00Z", vec![e1]),
        ("date=ge2026-10-05T10:30-07:00", vec![e1, e2, e3]),
    ] {
        assert_eq!(as_set(search(&app, &format!("Encounter?{}", q.replace(':', "%3A").replace('+', "%2B"))).await), set(&want), "{q}");
    }
    assert_eq!(as_set(search(&app, &format!("Encounter?patient={ana}&date=ge2026-10-06")).await), set(&[e3]));
    assert_eq!(search(&app, "Encounter?location=Location/site-demo-ms").await, one_id(e3));
    assert_eq!(as_set(search(&app, "Encounter?location=site-demo-hs").await), set(&[e1, e2]));
    let enc3 = get_json(&app, &format!("/fhir/Encounter/{e3}"), &app.admin_token).await;
    let priya = enc3["participant"][0]["individual"]["reference"].as_str().unwrap().to_string();
    assert!(priya.starts_with("Practitioner/"));
    assert_eq!(search(&app, &format!("Encounter?practitioner={priya}")).await, one_id(e3));
    assert_eq!(search(&app, "Encounter?status=finished").await.len(), 3);
    assert!(search(&app, "Encounter?status=planned").await.is_empty());
    assert_eq!(search(&app, &format!("Encounter?status=finished&patient={jose}")).await, one_id(e2));

    // _lastUpdated and _sort: the sessions were stored one after another.
    let lu2 = get_json(&app, &format!("/fhir/Encounter/{e2}"), &app.admin_token).await["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let lu2 = lu2.replace(':', "%3A");
    assert_eq!(as_set(search(&app, &format!("Encounter?_lastUpdated=ge{lu2}")).await), set(&[e2, e3]));
    assert_eq!(search(&app, &format!("Encounter?_lastUpdated=lt{lu2}")).await, one_id(e1));
    assert_eq!(search(&app, "Encounter?_sort=_lastUpdated").await, [e1.clone(), e2.clone(), e3.clone()]);
    assert_eq!(search(&app, "Encounter?_sort=-_lastUpdated").await, [e3.clone(), e2.clone(), e1.clone()]);
    let mut by_id = ids.clone();
    by_id.sort();
    assert_eq!(search(&app, "Encounter").await, by_id, "the default order is by id");

    // Condition: patient, encounter, code (code, system|code, system|).
    assert_eq!(search(&app, &format!("Condition?patient={ana}")).await.len(), 3);
    assert_eq!(search(&app, &format!("Condition?encounter=Encounter/{e2}")).await.len(), 1);
    assert_eq!(search(&app, "Condition?code=F41.1").await.len(), 2);
    assert_eq!(search(&app, "Condition?code=http://hl7.org/fhir/sid/icd-10-cm%7CF32.0").await.len(), 1);
    assert_eq!(search(&app, "Condition?code=http://hl7.org/fhir/sid/icd-10-cm%7C").await.len(), 4);
    assert!(search(&app, "Condition?code=urn:other%7CF41.1").await.is_empty());
    assert_eq!(search(&app, &format!("Condition?code=F41.1&patient={ana}&encounter={e1}")).await.len(), 1);

    // Coverage (Ana has a Medi-Cal CIN, José none) and Provenance.
    assert_eq!(search(&app, &format!("Coverage?beneficiary={ana}")).await.len(), 1);
    assert!(search(&app, &format!("Coverage?beneficiary=Patient/{jose}")).await.is_empty());
    assert_eq!(search(&app, &format!("Provenance?target=Encounter/{e1}")).await.len(), 1);
    assert_eq!(search(&app, &format!("Provenance?target=Patient/{ana}")).await.len(), 2);

    // _include: the page's patients, practitioners and locations, once each.
    let b =
        get_json(&app, &format!("/fhir/Encounter?patient={ana}&_include=Encounter:patient&_include=Encounter:location"), &app.admin_token)
            .await;
    let included: Vec<String> = b["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        as_set(included.clone()),
        as_set(vec![format!("Patient/{ana}"), "Location/site-demo-hs".into(), "Location/site-demo-ms".into()])
    );
    assert_eq!(included.len(), 3);
    let b = get_json(&app, "/fhir/Encounter?_include=Encounter:practitioner", &app.admin_token).await;
    assert_eq!(b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").count(), 2);

    // _summary=count and _count with next links.
    let b = get_json(&app, "/fhir/Encounter?_summary=count", &app.admin_token).await;
    assert_eq!(b["total"], 3);
    assert!(b.get("entry").is_none());
    let b = get_json(&app, &format!("/fhir/Encounter?patient={ana}&_summary=count"), &app.admin_token).await;
    assert_eq!(b["total"], 2);
    let mut seen = Vec::new();
    let mut next = Some("/fhir/Encounter?_count=1&_sort=-_lastUpdated".to_string());
    while let Some(url) = next {
        let b = get_json(&app, &url, &app.admin_token).await;
        seen.extend(matches(&b));
        next = b["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().replace(&app.address, ""));
    }
    assert_eq!(seen, [e3.clone(), e2.clone(), e1.clone()]);

    // Strict handling: each error names the parameter.
    for (q, expr) in [
        ("Encounter?colour=red", "colour"),
        ("Encounter?date=soon", "date"),
        ("Encounter?date=ap2026-10-20", "date"),
        ("Encounter?patient:missing=true", "patient:missing"),
        ("Encounter?patient=Location/site-demo-hs", "patient"),
        ("Encounter?_count=5000", "_count"),
        ("Encounter?_sort=status", "_sort"),
        ("Patient?_include=Encounter:patient", "_include"),
        ("Encounter?_cursor=00", "_cursor"),
        ("Patient?birthdate=2011-02-30", "birthdate"),
    ] {
        let issues = outcome(app.get(&format!("/fhir/{q}"), &app.admin_token).await, 400).await;
        assert!(has_issue(&issues, expr, ""), "{q}: {issues:?}");
    }
}

async fn paging_through_2500_encounters_returns_each_exactly_once(app: TestApp) {
    let mut want = HashSet::new();
    for chunk in 0..3 {
        let batch: Vec<Value> = (0..1000)
            .map(|i| chunk * 1000 + i)
            .take_while(|n| *n < 2500)
            .map(|n| {
                let mut s = session();
                s["source_id"] = json!(format!("PAGE-{n:05}"));
                s["student"]["district_id"] = json!(format!("P{:05}", n % 700));
                s
            })
            .collect();
        let res = app.post_json("/api/v1/sessions/$batch?atomic=true", &app.submitter_token, &json!(batch)).await;
        assert_eq!(res.status().as_u16(), 200);
        let receipt: Value = res.json().await.unwrap();
        for r in receipt["results"].as_array().unwrap() {
            want.insert(r["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(want.len(), 2500);
    for order in ["", "&_sort=_lastUpdated", "&_sort=-_lastUpdated"] {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut next = Some(format!("/fhir/Encounter?_count=100{order}"));
        while let Some(url) = next {
            let b = get_json(&app, &url, &app.submitter_token).await;
            let page = matches(&b);
            assert!(page.len() <= 100);
            seen.extend(page);
            pages += 1;
            next = b["link"]
                .as_array()
                .unwrap()
                .iter()
                .find(|l| l["relation"] == "next")
                .map(|l| l["url"].as_str().unwrap().replace(&app.address, ""));
        }
        assert_eq!(seen.len(), 2500, "{order}");
        assert_eq!(as_set(seen), want, "{order}");
        assert_eq!(pages, 25, "{order}");
    }
    let b = get_json(&app, "/fhir/Patient?_summary=count", &app.admin_token).await;
    assert_eq!(b["total"], 700);
}

async fn access_is_admin_or_the_submitting_lea_only(app: TestApp) {
    let id = submit(&app, &session()).await["id"].as_str().unwrap().to_string();
    // Another LEA's submitter sees nothing: not the resource, not in searches.
    outcome(app.get(&format!("/fhir/Encounter/{id}"), &app.other_submitter_token).await, 404).await;
    outcome(app.get(&format!("/fhir/Encounter/{id}/_history"), &app.other_submitter_token).await, 404).await;
    let b = get_json(&app, "/fhir/Encounter", &app.other_submitter_token).await;
    assert!(matches(&b).is_empty());
    let b = get_json(&app, "/fhir/Practitioner?_summary=count", &app.other_submitter_token).await;
    assert_eq!(b["total"], 0);
    // An FQHC partner without a consent sees nothing (tests/api/consent.rs tries every path).
    outcome(app.get(&format!("/fhir/Encounter/{id}"), &app.partner_token).await, 404).await;
    let b = get_json(&app, "/fhir/Encounter", &app.partner_token).await;
    assert!(matches(&b).is_empty());
    outcome(app.get("/fhir/Encounter", "not-a-token").await, 401).await;
    // The submitting LEA and admins read it.
    get_json(&app, &format!("/fhir/Encounter/{id}"), &app.submitter_token).await;
    get_json(&app, &format!("/fhir/Encounter/{id}"), &app.admin_token).await;

    // The CapabilityStatement is open and lists what is implemented.
    let res = app.client.get(app.url("/fhir/metadata")).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    let cs: Value = res.json().await.unwrap();
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    let encounter = resources.iter().find(|r| r["type"] == "Encounter").unwrap();
    let params: HashSet<&str> = encounter["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(params, HashSet::from(["_id", "_lastUpdated", "patient", "subject", "date", "location", "practitioner", "status"]));
    assert_eq!(encounter["searchInclude"], json!(["Encounter:patient", "Encounter:practitioner", "Encounter:location"]));
    let p = encounter["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "date").unwrap();
    assert_eq!(p["definition"], "http://hl7.org/fhir/SearchParameter/clinical-date");
    let consent = resources.iter().find(|r| r["type"] == "Consent").unwrap();
    let interactions: HashSet<&str> = consent["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert!(interactions.contains("create") && interactions.contains("update"));
    assert!(resources.iter().any(|r| r["type"] == "AuditEvent"));
    assert!(resources.iter().any(|r| r["type"] == "DocumentReference"));
    assert_eq!(cs["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_that_produces_an_invalid_resource_is_a_500_and_stores_nothing() {
    let dir = copy_mappings();
    let enc = dir.path().join("fhir/encounter.toml");
    let text = std::fs::read_to_string(&enc).unwrap().replace("value = \"finished\"", "value = \"done-and-dusted\"");
    std::fs::write(&enc, text).unwrap();
    let app = spawn_app_with(Backend::Sqlite, |s| s.rules.mappings_dir = dir.path().to_path_buf()).await.unwrap();
    let issues = outcome(app.post_json("/api/v1/sessions", &app.submitter_token, &session()).await, 500).await;
    let d = issues[0]["diagnostics"].as_str().unwrap();
    assert!(d.contains("Encounter/") && d.contains("/status"), "{d}");
    assert!(!d.contains("done-and-dusted"), "messages never carry values");
    let batch = json!([session()]);
    outcome(app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &batch).await, 500).await;
    assert_eq!(app.store.count_versions().await.unwrap(), 0);
    assert_eq!(app.store.fhir_count_type("Patient").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_without_a_mapping_entry_is_refused_naming_field_and_file() {
    let dir = copy_mappings();
    std::fs::write(
        dir.path().join("tables/site-programs.toml"),
        "key = \"session.site\"\n[entries.site-demo-hs]\nprogram = { system = \"urn:county:program\", code = \"HS\", display = \"High school program\" }\n",
    )
    .unwrap();
    let enc = dir.path().join("fhir/encounter.toml");
    let text = std::fs::read_to_string(&enc).unwrap();
    std::fs::write(
        &enc,
        format!("{text}\n[[element]]\npath = \"type[+]\"\nfrom = \"session.site\"\ntable = \"site-programs\"\ncolumn = \"program\"\n"),
    )
    .unwrap();
    let app = spawn_app_with(Backend::Sqlite, |s| s.rules.mappings_dir = dir.path().to_path_buf()).await.unwrap();
    submit(&app, &session()).await;
    let mut ms = session();
    ms["source_id"] = json!("MS-1");
    ms["site"] = json!("site-demo-ms");
    let issues = outcome(app.post_json("/api/v1/sessions", &app.submitter_token, &ms).await, 422).await;
    assert_eq!(issues[0]["code"], "code-invalid");
    assert!(has_issue(&issues, "site", "site-programs.toml"), "{issues:?}");
    // In a batch the record is rejected on its own; the other is stored with its resources.
    let mut hs = session();
    hs["source_id"] = json!("HS-2");
    let receipt: Value = app.post_json("/api/v1/sessions/$batch", &app.submitter_token, &json!([hs, ms])).await.json().await.unwrap();
    assert_eq!((receipt["created"].as_i64(), receipt["rejected"].as_i64()), (Some(1), Some(1)));
    assert_eq!(app.store.fhir_count_type("Encounter").await.unwrap(), 2);
}
