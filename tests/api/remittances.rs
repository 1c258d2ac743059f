//! Finance end to end on the real server: sessions become claims, claims go out as X12 837
//! batches, a synthetic payer answers each batch with an 835 built from the 837 text (paid,
//! partially paid, denied, reversed and re-paid, PLB interest and recoupment, a claim number
//! the payer mangled), the gateway posts them, and the reports balance to the cent.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Backend, TestApp, repo_path, session_with_id, spawn_app_with};
use wellness_gateway::auth::{Role, register_client};
use wellness_gateway::fhir::FhirSchema;
use wellness_gateway::x12::{parse_cents, read_all};

/// A claim as the 837 carried it.
#[derive(Debug, Clone)]
struct Sent {
    pcn: String,
    charge: i64,
    /// (SVC01 as billed "HC:code:mods", charge, units, REF*6R, date YYYYMMDD)
    lines: Vec<(String, i64, String, String, String)>,
}

/// Reads the claims of an 837 (P or I) as a payer would.
fn claims_of_837(text: &str) -> Vec<Sent> {
    let doc = read_all(text.as_bytes()).expect("837 reads");
    let mut out: Vec<Sent> = Vec::new();
    for seg in &doc.segments {
        match seg.id() {
            "CLM" => {
                out.push(Sent { pcn: seg.element(1).to_string(), charge: parse_cents(seg.element(2)).expect("CLM02"), lines: Vec::new() })
            }
            "SV1" => {
                let c = out.last_mut().expect("claim");
                let code = seg.element(1).to_string();
                c.lines.push((code, parse_cents(seg.element(2)).expect("SV102"), seg.element(4).to_string(), String::new(), String::new()));
            }
            "SV2" => {
                let c = out.last_mut().expect("claim");
                let code = seg.element(2).to_string();
                c.lines.push((code, parse_cents(seg.element(3)).expect("SV203"), seg.element(5).to_string(), String::new(), String::new()));
            }
            "REF" if seg.element(1) == "6R" => {
                if let Some(l) = out.last_mut().and_then(|c| c.lines.last_mut()) {
                    l.3 = seg.element(2).to_string();
                }
            }
            "DTP" if seg.element(1) == "472" => {
                if let Some(l) = out.last_mut().and_then(|c| c.lines.last_mut()) {
                    l.4 = seg.element(3).to_string();
                }
            }
            _ => {}
        }
    }
    out
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", cents.abs() / 100, cents.abs() % 100)
}

/// How the synthetic payer answers one claim.
#[derive(Clone, Copy)]
enum Answer {
    /// Pays each payable line less this many cents (CO-45), informational lines $0.
    Pay(i64),
    /// Denies every line (CO-16, RARC N290).
    Deny,
    /// Reverses an earlier payment of this much less (CLP02 22, negated amounts).
    Reverse(i64),
}

/// One CLP loop (sign -1 for a reversal).
fn clp(c: &Sent, pcn: &str, answer: Answer, icn: &str) -> (String, i64) {
    let (status, less, sign) = match answer {
        Answer::Pay(less) => ("1", less, 1),
        Answer::Deny => ("4", 0, 1),
        Answer::Reverse(less) => ("22", less, -1),
    };
    let mut body = String::new();
    let mut paid = 0;
    let mut less_left = less;
    for (code, charge, units, id, date) in &c.lines {
        let (line_paid, group, reason) = match answer {
            Answer::Deny => (0, "CO", "16"),
            _ if *charge == 0 => (0, "CO", "45"),
            _ => {
                let cut = less_left.min(*charge);
                less_left -= cut;
                (charge - cut, "CO", "45")
            }
        };
        paid += line_paid;
        body.push_str(&format!("SVC*{code}*{}*{}**{units}~DTP*472*D8*{date}~", money(sign * charge), money(sign * line_paid)));
        if charge - line_paid != 0 {
            body.push_str(&format!("CAS*{group}*{reason}*{}~", money(sign * (charge - line_paid))));
        }
        body.push_str(&format!("REF*6R*{id}~"));
        if matches!(answer, Answer::Deny) {
            body.push_str("LQ*HE*N290~");
        }
    }
    let head = format!("CLP*{pcn}*{status}*{}*{}**MC*{icn}*11*1~", money(sign * c.charge), money(sign * paid));
    (format!("{head}{body}"), sign * paid)
}

/// An 835 interchange: payer id, TRN02, CLP loops, PLB entries (reason:ref, cents).
fn x835(control: u32, payer_id: &str, trn: &str, clps: &[(String, i64)], plb: &[(&str, i64)]) -> String {
    let claims: i64 = clps.iter().map(|c| c.1).sum();
    let plb_total: i64 = plb.iter().map(|p| p.1).sum();
    let paid = claims - plb_total;
    let mut st = format!(
        "ST*835*0001~BPR*I*{}*{}*ACH*CCP*01*999999999*DA*123456*1512345678**01*999999999*DA*98765*20261201~TRN*1*{trn}*1{payer_id}~\
         DTM*405*20261201~N1*PR*PAYER {payer_id}*PI*{payer_id}~N1*PE*DEMO COMMUNITY HEALTH CENTER*XX*1600000016~LX*1~",
        money(paid.abs()),
        if paid < 0 { "D" } else { "C" }
    );
    for (text, _) in clps {
        st.push_str(text);
    }
    if !plb.is_empty() {
        st.push_str("PLB*1600000016*20261231");
        for (r, cents) in plb {
            st.push_str(&format!("*{r}*{}", money(*cents)));
        }
        st.push('~');
    }
    let count = st.matches('~').count() + 1;
    format!(
        "ISA*00*          *00*          *ZZ*PAYER          *ZZ*WELLNESSGW     *261201*1200*^*00501*{control:09}*0*P*:~\
         GS*HP*PAYER*WELLNESSGW*20261201*1200*{control}*X*005010X221A1~{st}SE*{count}*0001~GE*1*{control}~IEA*1*{control:09}~"
    )
}

async fn post_835(app: &TestApp, token: &str, text: &str) -> (u16, Value) {
    let res = app.client.post(app.url("/api/v1/remittances")).bearer_auth(token).body(text.to_string()).send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

async fn get_json(app: &TestApp, path: &str, token: &str) -> Value {
    let res = app.get(path, token).await;
    assert_eq!(res.status().as_u16(), 200, "{path}");
    res.json().await.expect("json")
}

fn on_day(mut s: Value, day: &str) -> Value {
    for k in ["start", "end"] {
        let v = s["service"][k].as_str().expect("time").replacen("2026-11-02", day, 1);
        s["service"][k] = json!(v);
    }
    s
}

/// The reconciliation identity: billed = paid + contractual + patient + denied + other + outstanding.
fn balances(row: &Value) -> bool {
    let n = |k: &str| row[k].as_i64().expect(k);
    n("billed_cents")
        == n("paid_cents")
            + n("contractual_cents")
            + n("patient_responsibility_cents")
            + n("denied_cents")
            + n("other_adjustment_cents")
            + n("outstanding_cents")
}

async fn round_trip(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |s| s.billing.poll_seconds = 1).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = register_client(&app.store, &app.settings, "finance", Role::Finance, None).await.expect("finance").secret;

    // Three FQHC visits of one student on three days, two fee-schedule sessions of another.
    let mut ids = Vec::new();
    for (i, day) in ["2026-11-02", "2026-11-03", "2026-11-04"].iter().enumerate() {
        ids.push(app.submit(&on_day(session_with_id(&format!("RT-V{i}")), day)).await);
    }
    for (i, day) in ["2026-11-02", "2026-11-03"].iter().enumerate() {
        let mut s = on_day(session_with_id(&format!("RT-F{i}")), day);
        s["site"] = json!("site-demo-ms");
        s["student"]["district_id"] = json!("S2000001");
        s["clinician"]["credential"] = json!("PPS-school-counselor");
        ids.push(app.submit(&s).await);
    }
    // A session that is never billable (no payment consent for its student).
    let mut unconsented = session_with_id("RT-N0");
    unconsented["student"]["district_id"] = json!("S3000003");
    app.submit(&unconsented).await;
    app.payment_consent("S1002345", "RT-C1", json!(["fqhc-demo"])).await;
    app.payment_consent("S2000001", "RT-C2", json!(["lea-demo"])).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut claims: HashMap<String, Value> = HashMap::new();
    while claims.len() < 5 {
        assert!(Instant::now() < deadline, "claims never appeared: {claims:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        for id in &ids {
            let list = get_json(&app, &format!("/api/v1/claims?session={id}"), &finance).await;
            if let Some(c) = list.as_array().and_then(|a| a.first()) {
                claims.insert(id.clone(), c.clone());
            }
        }
    }
    // Finance builds the 837 batches; the synthetic payers answer from the 837 text.
    let res = app.client.post(app.url("/api/v1/claims/batches")).bearer_auth(&finance).send().await.expect("request");
    assert_eq!(res.status().as_u16(), 201);
    let built: Value = res.json().await.expect("json");
    let mut sent: HashMap<String, Sent> = HashMap::new();
    for b in built["batches"].as_array().expect("batches") {
        let text = app.get(b["x12"].as_str().expect("link"), &finance).await.text().await.expect("x12");
        for c in claims_of_837(&text) {
            sent.insert(c.pcn.clone(), c);
        }
    }
    let pcn_of = |i: usize| claims[&ids[i]]["claim_number"].as_str().expect("pcn").to_string();
    let claim_of = |i: usize| claims[&ids[i]]["id"].as_str().expect("id").to_string();
    let v: Vec<Sent> = (0..5).map(|i| sent[&pcn_of(i)].clone()).collect();
    assert_eq!(v[0].lines.len(), 2, "837I: the PPS line and the informational CPT line");

    // 835 #1 (Medi-Cal): V0 paid less $45.67, V1 denied, V2 paid in full; PLB interest $1.25.
    let a0 = clp(&v[0], &v[0].pcn, Answer::Pay(4567), "ICN-V0");
    let a1 = clp(&v[1], &v[1].pcn, Answer::Deny, "ICN-V1");
    let a2 = clp(&v[2], &v[2].pcn, Answer::Pay(0), "ICN-V2");
    let first = x835(101, "610442", "EFT-0001", &[a0.clone(), a1.clone(), a2.clone()], &[("L6:INT1", -125)]);
    let (status, report) = post_835(&app, &finance, &first).await;
    assert_eq!(status, 200, "{report}");
    let t = &report["transactions"][0];
    assert_eq!(
        (t["status"].as_str(), t["claim_count"].as_i64(), t["matched"].as_i64(), t["unmatched"].as_i64()),
        (Some("posted"), Some(3), Some(3), Some(0)),
        "{t}"
    );
    assert_eq!(t["balanced"], json!(true), "{t}");
    assert_eq!(t["paid_cents"].as_i64(), Some(a0.1 + a1.1 + a2.1 + 125));
    // The same payment again changes nothing.
    let (status, again) = post_835(&app, &finance, &first).await;
    assert_eq!(status, 200);
    assert_eq!(again["transactions"][0]["status"], json!("duplicate"), "{again}");
    assert_eq!(again["transactions"][0]["remittance_id"], t["remittance_id"]);

    // Claim states after the first payment.
    let c0 = get_json(&app, &format!("/api/v1/claims/{}", claim_of(0)), &finance).await;
    assert_eq!(
        (c0["status"].as_str(), c0["payer_claim_number"].as_str(), c0["balance_cents"].as_i64()),
        (Some("closed"), Some("ICN-V0"), Some(0)),
        "{c0}"
    );
    let pay = &c0["remittances"][0];
    assert_eq!(pay["paid_cents"].as_i64(), Some(a0.1));
    assert_eq!(pay["lines"][0]["matched_by"], json!("line-id"));
    assert_eq!(pay["lines"][0]["adjustments"][0]["carc"], json!("45"));
    assert!(pay["lines"][0]["adjustments"][0]["description"].as_str().expect("text").starts_with("Charge exceeds fee schedule"));
    let c1 = get_json(&app, &format!("/api/v1/claims/{}", claim_of(1)), &finance).await;
    assert_eq!(c1["status"], json!("adjudicated"), "a denial stays open: {c1}");
    assert!(c1["exceptions"].as_array().expect("exceptions").iter().any(|x| x["kind"] == json!("denial") && x["status"] == json!("open")));

    // 835 #2 (CYBHI): F0 paid; F1's claim number mangled by the payer (unmatched).
    let b0 = clp(&v[3], &v[3].pcn, Answer::Pay(0), "ICN-F0");
    let b1 = clp(&v[4], "UNKNOWN-123", Answer::Pay(0), "ICN-F1");
    let (status, report) = post_835(&app, &finance, &x835(102, "CYBHI1", "CHK-7", &[b0.clone(), b1.clone()], &[])).await;
    assert_eq!(status, 200, "{report}");
    let t = &report["transactions"][0];
    assert_eq!(
        (t["matched"].as_i64(), t["unmatched"].as_i64(), t["unmatched_claims"][0].as_str()),
        (Some(1), Some(1), Some("UNKNOWN-123")),
        "{t}"
    );
    let open: Value = get_json(&app, "/api/v1/remittances/exceptions", &finance).await;
    let unmatched =
        open.as_array().expect("list").iter().find(|x| x["kind"] == json!("unmatched-claim")).expect("unmatched claim queued").clone();
    // Finance finds the claim it belongs to and posts it there.
    let res = app
        .client
        .post(app.url(&format!("/api/v1/remittances/exceptions/{}/$resolve", unmatched["id"].as_str().expect("id"))))
        .bearer_auth(&finance)
        .json(&json!({ "resolution": "payer keyed the claim number wrong; matched by patient and date", "claim": claim_of(4) }))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    let c4 = get_json(&app, &format!("/api/v1/claims/{}", claim_of(4)), &finance).await;
    assert_eq!(c4["balance_cents"].as_i64(), Some(0), "{c4}");
    // Resolving again: not open any more.
    let res = app
        .client
        .post(app.url(&format!("/api/v1/remittances/exceptions/{}/$resolve", unmatched["id"].as_str().expect("id"))))
        .bearer_auth(&finance)
        .json(&json!({ "resolution": "again" }))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 409);

    // 835 #3 (Medi-Cal): V2's payment reversed and re-paid $20.00 less; a $10.00 recoupment.
    let r2 = clp(&v[2], &v[2].pcn, Answer::Reverse(0), "ICN-V2");
    let p2 = clp(&v[2], &v[2].pcn, Answer::Pay(2000), "ICN-V2B");
    let (status, report) =
        post_835(&app, &finance, &x835(103, "610442", "EFT-0002", &[r2.clone(), p2.clone()], &[("WO:ICN-OLD", 1000)])).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["transactions"][0]["balanced"], json!(true));
    let c2 = get_json(&app, &format!("/api/v1/claims/{}", claim_of(2)), &finance).await;
    assert_eq!(c2["remittances"].as_array().map(Vec::len), Some(3), "{c2}");
    assert_eq!(c2["remittances"][1]["reversal"], json!(true));
    assert_eq!(
        (c2["status"].as_str(), c2["balance_cents"].as_i64(), c2["payer_claim_number"].as_str()),
        (Some("closed"), Some(0), Some("ICN-V2B"))
    );
    let events: Vec<String> =
        c2["events"].as_array().expect("events").iter().map(|e| e["to"].as_str().unwrap_or_default().to_string()).collect();
    assert!(events.ends_with(&["closed".into(), "accepted".into(), "closed".into()]), "{events:?}");

    // Reports balance to the cent.
    let paid_total = a0.1 + a1.1 + a2.1 + b0.1 + b1.1 + r2.1 + p2.1;
    let billed_total: i64 = v.iter().map(|c| c.charge).sum();
    for by in ["payer", "site", "clinician", "month", "program"] {
        let r = get_json(&app, &format!("/api/v1/reports/reconciliation?by={by}"), &finance).await;
        for row in r["rows"].as_array().expect("rows").iter().chain([&r["total"]]) {
            assert!(balances(row), "{by}: {row}");
        }
        assert_eq!(r["total"]["billed_cents"].as_i64(), Some(billed_total), "{by}");
        assert_eq!(r["total"]["paid_cents"].as_i64(), Some(paid_total), "{by}");
        assert_eq!(r["total"]["denied_cents"].as_i64(), Some(v[1].charge), "{by}");
        assert_eq!(r["total"]["contractual_cents"].as_i64(), Some(4567 + 2000), "{by}");
        assert_eq!(r["total"]["outstanding_cents"].as_i64(), Some(0), "{by}");
    }
    let csv = app
        .client
        .get(app.url("/api/v1/reports/reconciliation?by=site"))
        .bearer_auth(&finance)
        .header("accept", "text/csv")
        .send()
        .await
        .expect("csv");
    assert!(csv.headers()["content-type"].to_str().expect("type").starts_with("text/csv"));
    let text = csv.text().await.expect("text");
    let mut lines = text.lines();
    assert!(lines.next().expect("header").starts_with("key,label,claims,billed_cents,"));
    assert!(text.lines().last().expect("total").starts_with(&format!("total,Total,5,{billed_total},")), "{text}");
    let denials = get_json(&app, "/api/v1/reports/denials", &finance).await;
    assert_eq!(denials["rows"][0]["carc"], json!("16"), "{denials}");
    assert_eq!(denials["rows"][0]["amount_cents"].as_i64(), Some(v[1].charge));
    assert_eq!(denials["rows"][0]["remarks"][0]["code"], json!("N290"));
    let aging = get_json(&app, "/api/v1/reports/aging?by=payer&as_of=2026-12-20", &finance).await;
    assert_eq!(aging["total"]["outstanding_cents"].as_i64(), Some(0), "{aging}");
    let pps = get_json(&app, "/api/v1/reports/pps-gap?by=month", &finance).await;
    assert_eq!(pps["total"]["visits"].as_i64(), Some(3), "{pps}");
    let expected_pps: i64 = (0..3).map(|i| claims[&ids[i]]["expected_cents"].as_i64().expect("expected")).sum();
    assert_eq!(pps["total"]["gap_cents"].as_i64(), Some(expected_pps - (a0.1 + a1.1 + a2.1 + r2.1 + p2.1)));
    let sus = get_json(&app, "/api/v1/reports/sustainability", &finance).await;
    let hs = sus["rows"].as_array().expect("rows").iter().find(|r| r["site"] == json!("site-demo-hs")).expect("high school").clone();
    assert_eq!((hs["sessions"].as_i64(), hs["billable_sessions"].as_i64()), (Some(4), Some(3)), "{hs}");
    assert_eq!(hs["not_billable"][0]["reason"], json!("no-payment-consent"), "{hs}");
    assert_eq!(hs["cost_cents"].as_i64(), Some(1_250_000));

    // FHIR: a ClaimResponse per claim payment and a PaymentReconciliation per payment, valid
    // against the official R4 schema.
    let schema = FhirSchema::load(&repo_path("schemas")).expect("schema");
    let bundle = get_json(&app, &format!("/fhir/ClaimResponse?request=Claim/{}", claim_of(2)), &finance).await;
    assert_eq!(bundle["total"], json!(3));
    for e in bundle["entry"].as_array().expect("entries") {
        schema.validate(&e["resource"]).unwrap_or_else(|v| panic!("ClaimResponse invalid: {v:?}\n{}", e["resource"]));
    }
    let list = get_json(&app, "/api/v1/remittances", &finance).await;
    assert_eq!(list.as_array().map(Vec::len), Some(3));
    for r in list.as_array().expect("list") {
        let pr = get_json(&app, &format!("/fhir/PaymentReconciliation/{}", r["remittance_id"].as_str().expect("id")), &finance).await;
        schema.validate(&pr).unwrap_or_else(|v| panic!("PaymentReconciliation invalid: {v:?}\n{pr}"));
        assert_eq!(parse_cents(&pr["paymentAmount"]["value"].to_string()), r["paid_cents"].as_i64(), "{pr}");
    }
    // Partners and submitters see none of it.
    assert_eq!(app.get("/api/v1/reports/reconciliation", &app.submitter_token).await.status().as_u16(), 403);
    assert_eq!(app.get("/api/v1/remittances", &app.partner_token).await.status().as_u16(), 403);
}

#[tokio::test]
async fn round_trip_sqlite() {
    round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn round_trip_postgres() {
    round_trip(Backend::Postgres).await;
}

async fn refusals(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |_| {}).await else {
        eprintln!("skipped: set TEST_DATABASE_URL to run on PostgreSQL");
        return;
    };
    let finance = register_client(&app.store, &app.settings, "finance", Role::Finance, None).await.expect("finance").secret;
    let good = x835(201, "610442", "EFT-9", &[], &[]);
    // A bad amount: refused, located, nothing posted.
    let bad = good.replace("BPR*I*0.00*C", "BPR*I*1O.00*C");
    let (status, body) = post_835(&app, &finance, &bad).await;
    assert_eq!(status, 422, "{body}");
    let issue = &body["issue"][0];
    assert!(issue["expression"][0].as_str().expect("where").contains("(BPR) BPR02"), "{body}");
    // A wrong SE count: refused with the segment named.
    let (status, body) = post_835(&app, &finance, &good.replace("SE*", "SE*9")).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["issue"][0]["diagnostics"].as_str().expect("text").contains("SE01"), "{body}");
    // A 4010 interchange: refused with a clear message.
    let old = good.replace("00501", "00401").replace("005010X221A1", "004010X091A1");
    let (status, body) = post_835(&app, &finance, &old).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["issue"][0]["diagnostics"].as_str().expect("text").contains("4010"), "{body}");
    // Garbage: refused, no panic.
    let (status, _) = post_835(&app, &finance, "not x12 at all").await;
    assert_eq!(status, 422);
    let list = get_json(&app, "/api/v1/remittances", &finance).await;
    assert_eq!(list, json!([]));
    // Every invalid corpus file is refused with a located error.
    let dir = crate::corpora::corpora_dir().join("x12/invalid");
    let mut refused = 0;
    for e in std::fs::read_dir(&dir).expect("invalid corpus").flatten() {
        {
            let bytes = std::fs::read(e.path()).expect("file");
            let res = app.client.post(app.url("/api/v1/remittances")).bearer_auth(&finance).body(bytes).send().await.expect("request");
            assert_eq!(res.status().as_u16(), 422, "{}", e.path().display());
            let body: Value = res.json().await.expect("outcome");
            assert_eq!(body["resourceType"], json!("OperationOutcome"));
            refused += 1;
        }
    }
    assert!(refused >= 3, "only {refused} invalid files");
    assert_eq!(get_json(&app, "/api/v1/remittances", &finance).await, json!([]));
}

#[tokio::test]
async fn refusals_sqlite() {
    refusals(Backend::Sqlite).await;
}

#[tokio::test]
async fn refusals_postgres() {
    refusals(Backend::Postgres).await;
}
