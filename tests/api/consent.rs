//! Consent records and the consent leak suite: the real server, partners with real signed
//! SMART tokens, every read path. A withheld record must look exactly like one that does not
//! exist: no data, no count, no include, no history.

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, outcome, register_partner, repo_path, session_with_id, spawn_app_with};
use wellness_gateway::settings::{OrgKind, Organization, Partnership, Settings};

fn with_second_fqhc(s: &mut Settings) {
    s.organizations.push(Organization {
        id: "fqhc-other".into(),
        kind: OrgKind::Fqhc,
        name: "Other Community Clinic".into(),
        cds_code: None,
        npi: Some("1245319599".into()),
        tin: None,
        taxonomy: None,
        address: None,
    });
    s.partnerships.push(Partnership {
        fqhc: "fqhc-other".into(),
        sites: vec!["site-other-es".into()],
        effective_from: None,
        effective_to: None,
    });
    // A token is looked up on every request, so a disabled client or a revoked consent shows at once.
    s.server.auth_cache_seconds = 0;
}

fn consent_form() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).unwrap()).unwrap()
}

async fn json_of(res: reqwest::Response) -> (u16, Value) {
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

impl TestApp {
    async fn get_as(&self, path: &str, token: &str, purpose: Option<&str>) -> reqwest::Response {
        let mut r = self.client.get(self.url(path)).bearer_auth(token);
        if let Some(p) = purpose {
            r = r.header("X-Purpose-Of-Use", p);
        }
        r.send().await.unwrap()
    }

    async fn record_consent(&self, form: &Value) -> Value {
        let (status, body) = json_of(self.post_json("/api/v1/consents", &self.submitter_token, form).await).await;
        assert!(status == 201 || status == 200, "{status} {body}");
        body
    }

    async fn bundle(&self, path: &str, token: &str) -> Value {
        let (status, body) = json_of(self.get_as(path, token, None).await).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["resourceType"], "Bundle");
        body
    }
}

fn entries(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| format!("{}/{}", x["resource"]["resourceType"].as_str().unwrap(), x["resource"]["id"].as_str().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

fn labels(resource: &Value) -> Vec<String> {
    resource["meta"]["security"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap().to_owned()).collect()
}

/// Everything a partner could try for one encounter, asserting it sees nothing.
async fn sees_nothing(app: &TestApp, token: &str, purpose: Option<&str>, encounter: &str, patient: &str) {
    for path in [
        format!("/fhir/Encounter/{encounter}"),
        format!("/fhir/Encounter/{encounter}/_history/1"),
        format!("/fhir/Encounter/{encounter}/_history"),
        format!("/fhir/Patient/{patient}"),
        format!("/fhir/DocumentReference/{encounter}"),
    ] {
        let res = app.get_as(&path, token, purpose).await;
        let issues = outcome(res, 404).await;
        assert!(
            issues[0]["diagnostics"].as_str().unwrap().contains("not known")
                || issues[0]["diagnostics"].as_str().unwrap().contains("no version")
        );
    }
    for path in [
        format!("/fhir/Encounter?patient={patient}"),
        format!("/fhir/Encounter?_id={encounter}&_include=Encounter:patient"),
        format!("/fhir/Condition?encounter={encounter}"),
        format!("/fhir/Provenance?target=Encounter/{encounter}"),
        "/fhir/Patient?identifier=S1002345".to_string(),
        format!("/fhir/Coverage?beneficiary={patient}"),
        format!("/fhir/DocumentReference?encounter={encounter}"),
    ] {
        let (status, b) = json_of(app.get_as(&path, token, purpose).await).await;
        assert_eq!(status, 200, "{path}");
        assert!(entries(&b).is_empty(), "{path} leaked {:?}", entries(&b));
        assert!(b.get("total").is_none());
        let (_, c) = json_of(app.get_as(&format!("{path}&_summary=count"), token, purpose).await).await;
        assert_eq!(c["total"], 0, "{path} counts hidden data");
    }
}

async fn leak_suite(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_second_fqhc).await else { return };
    let enc = app.submit(&session_with_id("LEAK-1")).await;
    let patient = wellness_gateway::mapping::engine::patient_id("lea-demo", "S1002345");
    let partner = app.partner_token.clone();
    let other_id = register_partner(&app.store, &app.settings, "fqhc-other", None).await;
    let other = app.smart_token(&other_id, "system/*.read", None).await;

    // 1. No consent: nothing, while an admin sees it all.
    sees_nothing(&app, &partner, None, &enc, &patient).await;
    assert_eq!(app.get(&format!("/fhir/Encounter/{enc}"), &app.admin_token).await.status(), 200);

    // 2. A guardian's consent for fqhc-demo, treatment and payment, general + mental-health data.
    let receipt = app.record_consent(&consent_form()).await;
    let consent_id = receipt["id"].as_str().unwrap().to_owned();
    let (status, e) = json_of(app.get_as(&format!("/fhir/Encounter/{enc}"), &partner, None).await).await;
    assert_eq!(status, 200, "{e}");
    let l = labels(&e);
    for code in ["R", "BH", "PSY", "TREAT"] {
        assert!(l.contains(&code.to_string()), "{code} missing from {l:?}");
    }
    assert_eq!(app.get_as(&format!("/fhir/Patient/{patient}"), &partner, None).await.status(), 200);
    let b =
        app.bundle(&format!("/fhir/Encounter?patient={patient}&_include=Encounter:patient&_include=Encounter:location"), &partner).await;
    let got = entries(&b);
    assert!(
        got.contains(&format!("Encounter/{enc}"))
            && got.contains(&format!("Patient/{patient}"))
            && got.contains(&"Location/site-demo-hs".to_string()),
        "{got:?}"
    );
    let b = app.bundle(&format!("/fhir/Condition?encounter={enc}"), &partner).await;
    assert_eq!(entries(&b).len(), 2);
    let c = app.bundle(&format!("/fhir/Encounter?patient={patient}&_summary=count"), &partner).await;
    assert_eq!(c["total"], 1);
    assert_eq!(app.bundle(&format!("/fhir/Encounter/{enc}/_history"), &partner).await["entry"].as_array().unwrap().len(), 1);

    // Session notes are withheld unless a consent names them.
    outcome(app.get_as(&format!("/fhir/DocumentReference/{enc}"), &partner, None).await, 404).await;
    assert!(entries(&app.bundle(&format!("/fhir/DocumentReference?patient={patient}"), &partner).await).is_empty());
    let mut notes = consent_form();
    notes["source_id"] = json!("CONSENT-NOTES");
    notes["categories"] = json!(["general-counselling", "mental-health-diagnosis", "session-notes"]);
    let notes_id = app.record_consent(&notes).await["id"].as_str().unwrap().to_owned();
    let (status, doc) = json_of(app.get_as(&format!("/fhir/DocumentReference/{enc}"), &partner, None).await).await;
    assert_eq!(status, 200, "{doc}");
    assert!(labels(&doc).contains(&"session-notes".to_string()));
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.decode(doc["content"][0]["attachment"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(String::from_utf8(text).unwrap(), crate::helpers::session()["note"].as_str().unwrap());
    // Not for payment, even though the consent allows payment (minimum necessary).
    outcome(app.get_as(&format!("/fhir/DocumentReference/{enc}"), &partner, Some("HPAYMT")).await, 404).await;
    assert_eq!(app.post_json(&format!("/api/v1/consents/{notes_id}/$revoke"), &app.submitter_token, &json!({})).await.status(), 200);
    outcome(app.get_as(&format!("/fhir/DocumentReference/{enc}"), &partner, None).await, 404).await;

    // 3. The wrong partner, the wrong purpose: nothing. Payment (allowed) gets the payment label.
    sees_nothing(&app, &other, None, &enc, &patient).await;
    sees_nothing(&app, &partner, Some("HOPERAT"), &enc, &patient).await;
    let (status, e) = json_of(app.get_as(&format!("/fhir/Encounter/{enc}"), &partner, Some("HPAYMT")).await).await;
    assert_eq!(status, 200);
    assert!(labels(&e).contains(&"HPAYMT".to_string()));
    // A token bound to a purpose cannot be used for another.
    let pay = app.smart_token(&app.partner_client_id, "system/*.read", Some("HPAYMT")).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{enc}"), &pay, Some("TREAT")).await, 400).await;
    let bound_ops = app.smart_token(&app.partner_client_id, "system/*.read", Some("HOPERAT")).await;
    sees_nothing(&app, &bound_ops, None, &enc, &patient).await;

    // 4. A service the minor consented to themself stays closed to the parent's consent.
    let mut minor = session_with_id("LEAK-MINOR");
    minor["treatment_consent"] = json!("minor-self");
    let minor_enc = app.submit(&minor).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{minor_enc}"), &partner, None).await, 404).await;
    let b = app.bundle(&format!("/fhir/Encounter?patient={patient}"), &partner).await;
    assert_eq!(entries(&b), vec![format!("Encounter/{enc}")]);
    // The minor's own consent opens it (and only it).
    let mut own = consent_form();
    own["source_id"] = json!("CONSENT-MINOR-1");
    own["granted_by"] = json!("minor-self");
    app.record_consent(&own).await;
    assert_eq!(app.get_as(&format!("/fhir/Encounter/{minor_enc}"), &partner, None).await.status(), 200);

    // 5. Part 2: substance-use data needs a consent naming the partner for that category.
    let mut sud = session_with_id("LEAK-SUD");
    sud["diagnoses"] = json!(["F10.20"]);
    let sud_enc = app.submit(&sud).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{sud_enc}"), &partner, None).await, 404).await;
    let mut general = consent_form();
    general["source_id"] = json!("CONSENT-GENERAL-SUD");
    general["recipients"] = json!(["*"]);
    general["categories"] = json!(["general-counselling", "substance-use"]);
    app.record_consent(&general).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{sud_enc}"), &partner, None).await, 404).await;
    let mut named = general.clone();
    named["source_id"] = json!("CONSENT-NAMED-SUD");
    named["recipients"] = json!(["fqhc-demo"]);
    app.record_consent(&named).await;
    let (status, e) = json_of(app.get_as(&format!("/fhir/Encounter/{sud_enc}"), &partner, None).await).await;
    assert_eq!(status, 200, "{e}");
    assert!(labels(&e).contains(&"NORDSCLCD".to_string()));
    let ext = e["extension"].as_array().unwrap();
    assert!(ext.iter().any(|x| x["valueString"].as_str().is_some_and(|t| t.contains("42 CFR part 2"))));
    let named_id = wellness_gateway::consent::form::consent_id("lea-demo", "CONSENT-NAMED-SUD");
    assert!(ext.iter().any(|x| x["valueReference"]["reference"] == format!("Consent/{named_id}/_history/1")), "{ext:?}");

    // 6. A deny exception beats every permit: withhold mental-health data.
    let mut deny = consent_form();
    deny["source_id"] = json!("CONSENT-DENY-MH");
    deny["exceptions"] = json!([{ "categories": ["mental-health-diagnosis"] }]);
    app.record_consent(&deny).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{enc}"), &partner, None).await, 404).await;
    // Z63.8 is not a mental-health diagnosis: that Condition stays visible.
    let b = app.bundle(&format!("/fhir/Condition?encounter={enc}"), &partner).await;
    assert_eq!(entries(&b).len(), 1, "{:?}", entries(&b));
    let deny_id = wellness_gateway::consent::form::consent_id("lea-demo", "CONSENT-DENY-MH");
    assert_eq!(app.post_json(&format!("/api/v1/consents/{deny_id}/$revoke"), &app.submitter_token, &json!({})).await.status(), 200);
    assert_eq!(app.get_as(&format!("/fhir/Encounter/{enc}"), &partner, None).await.status(), 200);

    // 7. Revoked mid-paging: the next page is empty and counts drop at once.
    for i in 0..4 {
        app.submit(&session_with_id(&format!("LEAK-PAGE-{i}"))).await;
    }
    let first = app.bundle(&format!("/fhir/Encounter?patient={patient}&_count=2"), &partner).await;
    assert_eq!(entries(&first).len(), 2);
    let next = first["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_owned();
    for id in [
        consent_id.clone(),
        wellness_gateway::consent::form::consent_id("lea-demo", "CONSENT-NAMED-SUD"),
        wellness_gateway::consent::form::consent_id("lea-demo", "CONSENT-GENERAL-SUD"),
    ] {
        let (status, body) =
            json_of(app.post_json(&format!("/api/v1/consents/{id}/$revoke"), &app.submitter_token, &json!({})).await).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("revoked")));
    }
    let path = next.split_once("/fhir/").map(|(_, p)| format!("/fhir/{p}")).unwrap();
    let second = app.bundle(&path, &partner).await;
    // Only the minor's own consent is left, and it opens only the minor-consented session.
    assert!(entries(&second).iter().all(|e| *e == format!("Encounter/{minor_enc}")), "{:?}", entries(&second));
    let c = app.bundle(&format!("/fhir/Encounter?patient={patient}&_summary=count"), &partner).await;
    assert_eq!(c["total"], 1);

    // 8. Consent records themselves are not disclosed to partners.
    outcome(app.get_as(&format!("/fhir/Consent/{consent_id}"), &partner, None).await, 404).await;
    assert!(entries(&app.bundle(&format!("/fhir/Consent?patient={patient}"), &partner).await).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_leak_suite_sqlite() {
    leak_suite(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_leak_suite_postgres() {
    leak_suite(Backend::Postgres).await;
}

async fn expired_consent(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_second_fqhc).await else { return };
    let enc = app.submit(&session_with_id("EXP-1")).await;
    let patient = wellness_gateway::mapping::engine::patient_id("lea-demo", "S1002345");
    let mut form = consent_form();
    form["period"] = json!({ "start": "2025-08-01", "end": "2026-06-30" });
    form["data_period"] = json!({ "start": "2025-08-01", "end": "2026-12-31" });
    app.record_consent(&form).await;
    sees_nothing(&app, &app.partner_token, None, &enc, &patient).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_consent_discloses_nothing_sqlite() {
    expired_consent(Backend::Sqlite).await;
}

async fn consent_records(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_second_fqhc).await else { return };
    let form = consent_form();
    let (status, r) = json_of(app.post_json("/api/v1/consents", &app.submitter_token, &form).await).await;
    assert_eq!((status, r["status"].as_str(), r["version"].as_i64()), (201, Some("created"), Some(1)), "{r}");
    let id = r["id"].as_str().unwrap().to_owned();
    let (status, r) = json_of(app.post_json("/api/v1/consents", &app.submitter_token, &form).await).await;
    assert_eq!((status, r["status"].as_str()), (200, Some("duplicate")));
    let mut changed = form.clone();
    changed["purposes"] = json!(["TREAT"]);
    let (status, r) = json_of(app.post_json("/api/v1/consents", &app.submitter_token, &changed).await).await;
    assert_eq!((status, r["status"].as_str(), r["version"].as_i64()), (201, Some("amended"), Some(2)));

    // Stored as a FHIR Consent with its history; searchable by patient, status, actor, period.
    let (status, c) = json_of(app.get(&format!("/fhir/Consent/{id}"), &app.admin_token).await).await;
    assert_eq!(status, 200);
    assert_eq!(c["meta"]["versionId"], "2");
    assert_eq!(c["provision"]["purpose"].as_array().unwrap().len(), 1);
    let h = app.bundle(&format!("/fhir/Consent/{id}/_history"), &app.admin_token).await;
    assert_eq!(h["entry"].as_array().unwrap().len(), 2);
    let patient = wellness_gateway::mapping::engine::patient_id("lea-demo", "S1002345");
    for q in [format!("patient={patient}"), "status=active".into(), "actor=Organization/fqhc-demo".into(), "period=ge2026-09-01".into()] {
        assert_eq!(entries(&app.bundle(&format!("/fhir/Consent?{q}"), &app.submitter_token).await), vec![format!("Consent/{id}")], "{q}");
    }
    // Another LEA sees none of it.
    outcome(app.get(&format!("/api/v1/consents/{id}"), &app.other_submitter_token).await, 404).await;
    outcome(app.get(&format!("/fhir/Consent/{id}"), &app.other_submitter_token).await, 404).await;
    let issues = outcome(app.post_json("/api/v1/consents", &app.other_submitter_token, &form).await, 422).await;
    assert_eq!(issues[0]["expression"][0], "lea");

    // Revocation: a new version, inactive; again: nothing changes. A resend of the form does not
    // re-activate it.
    let (status, r) = json_of(app.post_json(&format!("/api/v1/consents/{id}/$revoke"), &app.submitter_token, &json!({})).await).await;
    assert_eq!((status, r["status"].as_str(), r["version"].as_i64()), (200, Some("revoked"), Some(3)));
    let (_, r) = json_of(app.post_json(&format!("/api/v1/consents/{id}/$revoke"), &app.submitter_token, &json!({})).await).await;
    assert_eq!(r["status"], "duplicate");
    let (_, r) = json_of(app.post_json("/api/v1/consents", &app.submitter_token, &changed).await).await;
    assert_eq!(r["status"], "duplicate");
    let (_, d) = json_of(app.get(&format!("/api/v1/consents/{id}"), &app.submitter_token).await).await;
    assert_eq!(d["directive"]["status"], "inactive");
    assert!(entries(&app.bundle("/fhir/Consent?status=active", &app.admin_token).await).is_empty());

    // Bad forms: every problem named with its pointer.
    let mut bad = form.clone();
    bad["recipients"] = json!(["lea-other"]);
    bad["period"] = json!({ "start": "2026-08-01", "end": "2026-01-01" });
    bad["document_sha256"] = json!("not-a-hash");
    let issues = outcome(app.post_json("/api/v1/consents", &app.submitter_token, &bad).await, 422).await;
    assert!(issues.iter().any(|i| i["expression"][0] == "document_sha256"), "{issues:?}");
    bad["document_sha256"] = form["document_sha256"].clone();
    let issues = outcome(app.post_json("/api/v1/consents", &app.submitter_token, &bad).await, 422).await;
    let at: Vec<&str> = issues.iter().map(|i| i["expression"][0].as_str().unwrap()).collect();
    assert_eq!(at, vec!["recipients[0]", "period.end"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_records_sqlite() {
    consent_records(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_records_postgres() {
    consent_records(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_names_the_rule_and_each_consent() {
    let Some(app) = spawn_app_with(Backend::Sqlite, with_second_fqhc).await else { return };
    let enc = app.submit(&session_with_id("EXPLAIN-1")).await;
    let url =
        |partner: &str, purpose: &str| format!("/api/v1/consent/explain?partner={partner}&purpose={purpose}&resource=Encounter/{enc}");
    let (_, e) = json_of(app.get(&url("fqhc-demo", "TREAT"), &app.admin_token).await).await;
    assert_eq!((e["decision"].as_str(), e["rule"].as_str()), (Some("deny"), Some("no-consent")), "{e}");
    let id = app.record_consent(&consent_form()).await["id"].as_str().unwrap().to_owned();
    let (_, e) = json_of(app.get(&url("fqhc-demo", "TREAT"), &app.admin_token).await).await;
    assert_eq!((e["decision"].as_str(), e["consent"].as_str()), (Some("permit"), Some(format!("Consent/{id}/_history/1").as_str())), "{e}");
    let (_, e) = json_of(app.get(&url("fqhc-demo", "HOPERAT"), &app.admin_token).await).await;
    assert_eq!(e["sessions"][0]["consents"][0]["why_not"], "the consent does not allow this purpose of use");
    let (_, e) = json_of(app.get(&url("fqhc-other", "TREAT"), &app.admin_token).await).await;
    assert_eq!((e["rule"].as_str(), e["sessions"][0]["partner_serves_site"].as_bool()), (Some("partner-site"), Some(false)));
    app.post_json(&format!("/api/v1/consents/{id}/$revoke"), &app.submitter_token, &json!({})).await;
    let (_, e) = json_of(app.get(&url("fqhc-demo", "TREAT"), &app.admin_token).await).await;
    assert_eq!(e["sessions"][0]["consents"][0]["consent"], format!("Consent/{id}/_history/2"));
    assert!(e["sessions"][0]["consents"][0]["why_not"].as_str().unwrap().contains("not active"));
    // Admins only; explaining does not disclose, so it writes no AuditEvent.
    outcome(app.get(&url("fqhc-demo", "TREAT"), &app.submitter_token).await, 403).await;
    outcome(app.get(&url("nowhere", "TREAT"), &app.admin_token).await, 400).await;
}

fn fhir_consent(patient: &str) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy" }] },
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
        "patient": { "reference": format!("Patient/{patient}") },
        "dateTime": "2026-09-01",
        "performer": [{ "type": "RelatedPerson", "display": "Mother" }],
        "identifier": [{ "system": "urn:wellness-gateway:sid:document-sha256", "value": "ab".repeat(32) }],
        "policyRule": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN" }] },
        "provision": {
            "type": "permit",
            "period": { "start": "2026-09-01" },
            "actor": [{ "role": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP" }] },
                        "reference": { "reference": "Organization/fqhc-demo" } }],
            "action": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "disclose" }] }],
            "purpose": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT" }],
            "securityLabel": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "BH" },
                              { "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY" }]
        }
    })
}

async fn post_fhir(app: &TestApp, path: &str, method: reqwest::Method, token: &str, body: &Value) -> (u16, Value) {
    let res = app
        .client
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("Content-Type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    json_of(res).await
}

async fn fhir_consents(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_second_fqhc).await else { return };
    let enc = app.submit(&session_with_id("FHIRC-1")).await;
    let patient = wellness_gateway::mapping::engine::patient_id("lea-demo", "S1002345");
    let (status, c) = post_fhir(&app, "/fhir/Consent", reqwest::Method::POST, &app.submitter_token, &fhir_consent(&patient)).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(c["resourceType"], "Consent");
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await.status(), 200);
    let (_, d) = json_of(app.get(&format!("/api/v1/consents/{id}"), &app.submitter_token).await).await;
    assert_eq!(d["directive"]["granted_by"], "guardian");
    assert_eq!(d["directive"]["categories"], json!(["general-counselling", "mental-health-diagnosis"]));

    // PUT with status inactive revokes: a new version, and the partner sees nothing again.
    let mut revoked = fhir_consent(&patient);
    revoked["status"] = json!("inactive");
    revoked["id"] = json!(id);
    let (status, c) = post_fhir(&app, &format!("/fhir/Consent/{id}"), reqwest::Method::PUT, &app.submitter_token, &revoked).await;
    assert_eq!((status, c["meta"]["versionId"].as_str(), c["status"].as_str()), (201, Some("2"), Some("inactive")), "{c}");
    outcome(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await, 404).await;
    let (status, _) = post_fhir(&app, &format!("/fhir/Consent/{id}"), reqwest::Method::PUT, &app.submitter_token, &revoked).await;
    assert_eq!(status, 200, "the same state again changes nothing");

    // Refusals name the path.
    let mut narrowed = fhir_consent(&patient);
    narrowed["provision"]["data"] = json!([{ "meaning": "instance", "reference": { "reference": format!("Encounter/{enc}") } }]);
    let issues = outcome(app.post_json("/fhir/Consent", &app.submitter_token, &narrowed).await, 422).await;
    assert_eq!(issues[0]["expression"][0], "provision.data", "{issues:?}");
    let issues = outcome(app.post_json("/fhir/Consent", &app.submitter_token, &fhir_consent("no-such-patient")).await, 422).await;
    assert_eq!(issues[0]["expression"][0], "patient.reference");
    let issues = outcome(app.post_json("/fhir/Consent", &app.other_submitter_token, &fhir_consent(&patient)).await, 422).await;
    assert_eq!(issues[0]["expression"][0], "patient.reference", "another LEA's student is not theirs");
    let mut bad = fhir_consent(&patient);
    bad["status"] = json!(7);
    let issues = outcome(app.post_json("/fhir/Consent", &app.submitter_token, &bad).await, 422).await;
    assert_eq!(issues[0]["expression"][0], "status");
    outcome(app.post_json("/fhir/Consent", &app.partner_token, &fhir_consent(&patient)).await, 403).await;
    // Nothing that would widen or silently weaken what was signed is accepted.
    let refused = |f: fn(&mut Value), at: &'static str| {
        let mut c = fhir_consent(&patient);
        f(&mut c);
        let app = &app;
        async move {
            let issues = outcome(app.post_json("/fhir/Consent", &app.submitter_token, &c).await, 422).await;
            assert!(issues.iter().any(|i| i["expression"][0] == at), "{at}: {issues:?}");
        }
    };
    refused(|c| c["provision"]["period"]["end"] = json!("2027"), "provision.period.end").await;
    refused(|c| c["provision"]["actor"][0]["reference"] = json!({ "display": "Clinic X" }), "provision.actor[0].reference").await;
    refused(|c| c["provision"]["provision"] = json!([{ "type": "deny", "purpose": [] }]), "provision.provision[0].purpose").await;
    refused(
        |c| {
            c["extension"] = json!([{ "url": "urn:wellness-gateway:fhir:extension:consent-granted-by", "valueCode": "adult-self" }]);
            c["performer"] = json!([{ "reference": c["patient"]["reference"].clone() }]);
        },
        "performer",
    )
    .await;
    let mut admin_consent = fhir_consent(&patient);
    admin_consent["organization"] = json!([{ "reference": "Organization/lea-demo" }]);
    let (status, _) = post_fhir(&app, "/fhir/Consent/nope", reqwest::Method::PUT, &app.admin_token, &admin_consent).await;
    assert_eq!(status, 404, "a consent is created with POST");
    outcome(app.post_json("/fhir/Consent/nope", &app.admin_token, &admin_consent).await, 405).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_consents_sqlite() {
    fhir_consents(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fhir_consents_postgres() {
    fhir_consents(Backend::Postgres).await;
}

/// The date of service is the local calendar date the session was submitted with, not the UTC
/// date: an evening session on 31 August (18:00 PDT = 1 September UTC) is not covered by a
/// consent for services from 1 September.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_of_service_is_the_local_date() {
    let Some(app) = spawn_app_with(Backend::Sqlite, with_second_fqhc).await else { return };
    let mut evening = session_with_id("EVENING-1");
    evening["service"]["start"] = json!("2026-08-31T18:00:00-07:00");
    evening["service"]["end"] = json!("2026-08-31T18:45:00-07:00");
    let enc = app.submit(&evening).await;
    let mut form = consent_form();
    form["data_period"] = json!({ "start": "2026-09-01" });
    app.record_consent(&form).await;
    outcome(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await, 404).await;
    let mut wider = consent_form();
    wider["source_id"] = json!("CONSENT-FROM-AUGUST");
    wider["data_period"] = json!({ "start": "2026-08-31", "end": "2026-08-31" });
    app.record_consent(&wider).await;
    assert_eq!(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await.status(), 200);
}

/// A parent's consent stops opening a student's records once the student is 18; the adult
/// student's own consent opens them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guardians_consent_lapses_when_the_student_turns_18() {
    let Some(app) = spawn_app_with(Backend::Sqlite, with_second_fqhc).await else { return };
    let mut s = session_with_id("TURNS-18");
    s["student"]["birth_date"] = json!("2008-01-15");
    s["service"]["start"] = json!("2025-10-01T10:00:00-07:00");
    s["service"]["end"] = json!("2025-10-01T10:45:00-07:00");
    let enc = app.submit(&s).await;
    let mut form = consent_form();
    form["period"] = json!({ "start": "2025-08-01" });
    app.record_consent(&form).await;
    // Served when the student was 17, consented by a parent, read now that the student is 18.
    outcome(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await, 404).await;
    let mut own = form.clone();
    own["source_id"] = json!("CONSENT-ADULT-1");
    own["granted_by"] = json!("adult-self");
    app.record_consent(&own).await;
    assert_eq!(app.get_as(&format!("/fhir/Encounter/{enc}"), &app.partner_token, None).await.status(), 200);
}

/// A partner's read uses decision facts kept in memory on SQLite (`store::memo`): they must follow
/// every write at once, also writes that never pass through the gateway's code (another
/// connection, another process). Both backends must answer alike.
async fn remembered_facts_follow_every_write(backend: Backend) {
    let Some(app) = spawn_app_with(backend, with_second_fqhc).await else { return };
    if backend == Backend::Sqlite {
        // Every writer of the facts bumps the generation: a migration that rebuilt `sessions` or
        // `consent_directives` would drop these triggers silently.
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&app.db.url).await.unwrap();
        let triggers: Vec<String> = sqlx::query_scalar(
            "SELECT tbl_name || ':' || name FROM sqlite_master WHERE type = 'trigger' AND sql LIKE '%facts_generation%' ORDER BY 1",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        assert_eq!(
            triggers,
            [
                "consent_directives:consent_directives_delete",
                "consent_directives:consent_directives_insert",
                "consent_directives:consent_directives_update",
                "sessions:sessions_facts_delete",
                "sessions:sessions_facts_insert",
                "sessions:sessions_facts_update"
            ]
        );
    }
    let enc = app.submit(&session_with_id("MEMO-1")).await;
    let other = app.submit(&session_with_id("MEMO-2")).await;
    let read = |id: String| {
        let app = &app;
        async move { app.get_as(&format!("/fhir/Encounter/{id}"), &app.partner_token, None).await.status().as_u16() }
    };
    assert_eq!(read(enc.clone()).await, 404, "no consent yet");
    app.record_consent(&consent_form()).await;
    // Read twice: the second read is answered from what the first kept.
    assert_eq!((read(enc.clone()).await, read(enc.clone()).await, read(other.clone()).await), (200, 200, 200));
    // A session moved to a site of another FQHC, by another connection.
    crate::helpers::exec_sql(&app.db.url, &format!("UPDATE sessions SET site_id = 'site-other-es' WHERE id = '{enc}'")).await;
    assert_eq!(read(enc.clone()).await, 404, "the partner no longer serves the session's site");
    assert_eq!(read(other.clone()).await, 200, "the other session is unchanged");
    // Every consent gone, by another connection.
    crate::helpers::exec_sql(&app.db.url, "DELETE FROM consent_directives").await;
    assert_eq!(read(other.clone()).await, 404, "no consent, no disclosure");
    // A new consent, through the API.
    let mut form = consent_form();
    form["source_id"] = json!("CONSENT-MEMO-2");
    app.record_consent(&form).await;
    assert_eq!(read(other.clone()).await, 200);

    // The labelled text kept between reads is the one for the read's own obligations: alternate
    // purposes on one encounter, and each answer carries its own purpose, the same as when it was
    // first built.
    let purposes = |r: &Value| -> Vec<String> {
        r["meta"]["security"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActReason")
            .map(|c| c["code"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut first: std::collections::HashMap<&str, Value> = std::collections::HashMap::new();
    for purpose in ["TREAT", "HPAYMT", "TREAT", "HPAYMT"] {
        let (status, r) = json_of(app.get_as(&format!("/fhir/Encounter/{other}"), &app.partner_token, Some(purpose)).await).await;
        assert_eq!((status, purposes(&r)), (200, vec![purpose.to_owned()]), "{r}");
        assert_eq!(first.entry(purpose).or_insert_with(|| r.clone()), &r);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_facts_follow_every_write_sqlite() {
    remembered_facts_follow_every_write(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_facts_follow_every_write_postgres() {
    remembered_facts_follow_every_write(Backend::Postgres).await;
}
