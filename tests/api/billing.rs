//! Billing decisions: the shipped rule tables against a matrix of sessions (every time
//! threshold edge, credential, modality, tier, missing coverage / diagnosis / consent, late
//! filing, visit limit, funding-path lock), and the two endpoints on the real server.

use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::helpers::{TestApp, copy_mappings, outcome, repo_path, session_with_id, test_settings};
use crate::on_both_backends;
use wellness_gateway::billing::{BillingDecision, BillingRules, Context, ReasonCode, decide::decide};
use wellness_gateway::validate::{ValidSession, Validator};

/// A stand-in for what billing reads from the store.
struct Fake {
    consent: bool,
    visits: Vec<String>,
    claimed: Option<String>,
    /// Units of a code already claimed (any query about that code).
    used: Option<(&'static str, u32)>,
}

impl Context for Fake {
    fn fqhc_for_site(&self, site: &str, date: NaiveDate) -> Option<String> {
        let from = NaiveDate::from_ymd_opt(2025, 7, 1)?;
        (matches!(site, "site-demo-hs" | "site-demo-ms") && date >= from).then(|| "fqhc-demo".to_string())
    }
    fn payment_consent(&self, _biller: &str, _by_name_only: bool) -> Result<String, String> {
        if self.consent { Ok("consent-1/_history/1".into()) } else { Err("rule no-consent".into()) }
    }
    fn visits_same_day(&self, _biller: &str, _category: &str) -> Vec<String> {
        self.visits.clone()
    }
    fn claimed_program(&self) -> Option<String> {
        self.claimed.clone()
    }
    fn claimed_units(&self, code: &str, _provider: Option<&str>, _student_year: bool) -> u32 {
        self.used.filter(|(c, _)| *c == code).map_or(0, |(_, n)| n)
    }
}

struct Bench {
    validator: Validator,
    rules: BillingRules,
}

impl Bench {
    fn new() -> Bench {
        let settings = std::sync::Arc::new(test_settings("sqlite::memory:"));
        let validator = Validator::new(&repo_path("schemas"), settings.clone()).expect("schemas compile");
        let rules =
            BillingRules::load(&repo_path("mappings"), validator.schemas().session_document(), &settings).expect("billing rules load");
        Bench { validator, rules }
    }

    fn valid(&self, s: &Value) -> ValidSession {
        self.validator.validate(s, chrono::Utc::now()).unwrap_or_else(|e| panic!("test session invalid: {e:?}"))
    }

    fn decide_with(&self, s: &Value, ctx: &Fake, today: &str) -> BillingDecision {
        decide(&self.rules, &self.valid(s), ctx, date(today))
    }

    fn decide(&self, s: &Value) -> BillingDecision {
        self.decide_with(s, &Fake { consent: true, visits: vec![], claimed: None, used: None }, "2026-11-30")
    }
}

fn date(s: &str) -> NaiveDate {
    NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date")
}

/// The example session (LCSW, individual, in person, site in the FQHC's scope) lasting `minutes`.
fn lasting(kind: &str, minutes: i64) -> Value {
    let mut s = session_with_id("BILL-1");
    s["service"]["type"] = json!(kind);
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-02T09:00:00-08:00").expect("start");
    s["service"]["start"] = json!(start.to_rfc3339());
    s["service"]["end"] = json!((start + chrono::Duration::minutes(minutes)).to_rfc3339());
    if kind == "group-counseling" {
        s["service"]["group_size"] = json!(4);
        s["service"]["group_id"] = json!("GRP-1");
    }
    if kind == "family-counseling" {
        s["service"]["participants"] = json!([{ "relationship": "mother" }]);
    }
    s
}

fn codes(d: &BillingDecision) -> Vec<(String, u32)> {
    d.claim.as_ref().map(|c| c.lines.iter().map(|l| (l.code.clone(), l.units)).collect()).unwrap_or_default()
}

fn reasons(d: &BillingDecision) -> Vec<ReasonCode> {
    d.reasons.iter().map(|r| r.code).collect()
}

fn coach(mut s: Value) -> Value {
    s["clinician"]["credential"] = json!("wellness-coach");
    s["clinician"]["supervisor"] = json!({ "npi": "1550123453", "given_name": "Priya", "family_name": "Natarajan", "credential": "LMFT" });
    s
}

#[test]
fn psychotherapy_time_thresholds_on_each_edge() {
    let b = Bench::new();
    for (minutes, code) in [(16, "90832"), (37, "90832"), (38, "90834"), (52, "90834"), (53, "90837"), (90, "90837")] {
        let d = b.decide(&lasting("individual-counseling", minutes));
        assert!(d.billable, "{minutes} min: {:?}", d.reasons);
        assert_eq!(d.program.as_deref(), Some("medi-cal-fqhc-pps"));
        // PPS: the payable T1015 visit line at the FQHC's rate, then the $0 CPT line.
        assert_eq!(codes(&d), vec![("T1015".to_string(), 1), (code.to_string(), 1)], "{minutes} min");
        let c = d.claim.as_ref().expect("claim");
        assert_eq!(c.expected_cents.0, 24567);
        assert_eq!(c.charge_cents.0, 24567);
        assert_eq!(c.lines[0].revenue_code.as_deref(), Some("0521"));
        assert_eq!(c.lines[0].modifiers, vec!["SE"]);
        assert_eq!(c.lines[1].revenue_code.as_deref(), Some("0900"));
        assert!(c.lines[1].informational && c.lines[1].charge_cents.0 == 0);
        assert_eq!(c.facility_type.as_deref(), Some("77"));
    }
    let d = b.decide(&lasting("individual-counseling", 15));
    assert!(!d.billable);
    assert_eq!(reasons(&d), vec![ReasonCode::TooShort]);
    assert!(d.reasons[0].message.contains("at least 16"), "{}", d.reasons[0].message);
}

#[test]
fn crisis_add_on_units_and_family_and_group_codes() {
    let b = Bench::new();
    assert_eq!(reasons(&b.decide(&lasting("crisis-intervention", 29))), vec![ReasonCode::TooShort]);
    for (minutes, add_on) in [(30, 0), (74, 0), (75, 1), (104, 1), (105, 2)] {
        let d = b.decide(&lasting("crisis-intervention", minutes));
        let mut want = vec![("T1015".to_string(), 1), ("90839".to_string(), 1)];
        if add_on > 0 {
            want.push(("90840".to_string(), add_on));
        }
        assert_eq!(codes(&d), want, "{minutes} min");
    }
    assert_eq!(codes(&b.decide(&lasting("family-counseling", 26)))[1].0, "90847");
    let mut without = lasting("family-counseling", 50);
    without["service"]["student_present"] = json!(false);
    assert_eq!(codes(&b.decide(&without))[1].0, "90846");
    assert_eq!(reasons(&b.decide(&lasting("family-counseling", 25))), vec![ReasonCode::TooShort]);
    let g = b.decide(&lasting("group-counseling", 50));
    assert_eq!(codes(&g)[1].0, "90853");
    assert!(g.claim.as_ref().expect("claim").lines.iter().all(|l| l.modifiers.contains(&"HQ".to_string())));
    assert_eq!(codes(&b.decide(&lasting("intake-assessment", 60)))[1].0, "90791");
}

#[test]
fn telehealth_modifiers_and_place_of_service() {
    let b = Bench::new();
    for (modality, modifier) in [("video", "95"), ("audio-only", "93")] {
        let mut s = lasting("individual-counseling", 45);
        s["service"]["modality"] = json!(modality);
        let d = b.decide(&s);
        let c = d.claim.as_ref().expect("billable");
        assert_eq!(c.lines[0].modifiers, vec!["SE".to_string(), modifier.to_string()]);
        assert_eq!(c.lines[1].modifiers, vec![modifier.to_string()]);
        // Outside the FQHC's scope the same session goes to the fee schedule, POS 02.
        s["site"] = json!("site-other-es");
        s["lea"] = json!("lea-other");
        let d = b.decide(&s);
        let c = d.claim.as_ref().expect("billable under the fee schedule");
        assert_eq!(d.program.as_deref(), Some("cybhi-fee-schedule"));
        assert_eq!(c.place_of_service.as_deref(), Some("02"));
        assert_eq!(c.lines[0].modifiers, vec![modifier.to_string(), "HA".to_string()]);
    }
}

#[test]
fn fee_schedule_for_renderers_the_fqhc_cannot_bill() {
    let b = Bench::new();
    // A PPS-credentialed school counsellor: not an FQHC visit; the fee schedule bills H0004 per
    // 15 minutes (a unit counts from its 8th minute).
    let mut s = lasting("individual-counseling", 37);
    s["clinician"]["credential"] = json!("PPS-school-counselor");
    let d = b.decide(&s);
    assert_eq!(d.program.as_deref(), Some("cybhi-fee-schedule"));
    assert_eq!(d.considered[0].reasons[0].code, ReasonCode::CredentialNotBillable);
    let c = d.claim.as_ref().expect("billable");
    assert_eq!(codes(&d), vec![("H0004".to_string(), 2)]);
    assert_eq!(c.expected_cents.0, 2 * 2853);
    assert_eq!(c.place_of_service.as_deref(), Some("03"));
    assert_eq!(c.lines[0].modifiers, vec!["HA"]);
    s["service"]["end"] = json!("2026-11-02T09:38:00-08:00");
    assert_eq!(codes(&b.decide(&s)), vec![("H0004".to_string(), 3)]);
    // Wellness coach: 30-minute units from the 16th minute, at most 3 a day.
    for (minutes, units) in [(16, 1), (45, 1), (46, 2), (120, 3)] {
        let d = b.decide(&coach(lasting("individual-counseling", minutes)));
        assert_eq!(codes(&d), vec![("0592T".to_string(), units)], "{minutes} min");
        assert_eq!(d.claim.as_ref().expect("claim").supervising_npi.as_deref(), Some("1550123453"));
        assert_eq!(d.claim.as_ref().expect("claim").expected_cents.0, 4108 * i64::from(units));
    }
    assert_eq!(reasons(&b.decide(&coach(lasting("individual-counseling", 15)))), vec![ReasonCode::TooShort]);
}

#[test]
fn reasons_not_to_bill_are_named() {
    let b = Bench::new();
    let mut tier1 = lasting("individual-counseling", 45);
    tier1["service"]["tier"] = json!(1);
    let d = b.decide(&tier1);
    assert!(!d.billable && d.program.is_none());
    assert!(reasons(&d).iter().all(|r| *r == ReasonCode::TierNotBillable) && d.reasons.len() == 2, "{:?}", d.reasons);

    let mut no_cin = lasting("individual-counseling", 45);
    no_cin["student"].as_object_mut().expect("student").remove("medi_cal_cin");
    no_cin["diagnoses"] = json!([]);
    let d = b.decide(&no_cin);
    assert_eq!(d.program.as_deref(), Some("medi-cal-fqhc-pps"), "held under its funding path, not sent elsewhere");
    assert_eq!(reasons(&d), vec![ReasonCode::NoCoverage, ReasonCode::NoDiagnosis]);

    let mut no_address = lasting("individual-counseling", 45);
    no_address["student"].as_object_mut().expect("student").remove("address");
    assert_eq!(reasons(&b.decide(&no_address)), vec![ReasonCode::NoMemberAddress]);

    let s = lasting("individual-counseling", 45);
    let d = b.decide_with(&s, &Fake { consent: false, visits: vec![], claimed: None, used: None }, "2026-11-30");
    assert_eq!(reasons(&d), vec![ReasonCode::NoPaymentConsent]);

    // Medi-Cal: six months after the month of service (2026-11 -> 2027-05-31).
    let d = b.decide_with(&s, &Fake { consent: true, visits: vec![], claimed: None, used: None }, "2027-05-31");
    assert!(d.billable);
    assert_eq!(d.filing_days_left, Some(0));
    let d = b.decide_with(&s, &Fake { consent: true, visits: vec![], claimed: None, used: None }, "2027-06-01");
    assert_eq!(reasons(&d), vec![ReasonCode::TimelyFilingExpired]);

    // (The fake reports every other visit in every category; crisis, its own category, in
    // the store-backed tests.)
    let d = b.decide_with(&s, &Fake { consent: true, visits: vec!["other-session".into()], claimed: None, used: None }, "2026-11-30");
    assert_eq!(reasons(&d), vec![ReasonCode::VisitLimit]);
    assert!(d.reasons[0].message.contains("1 other session"), "no other session's id is named: {}", d.reasons[0].message);

    // An associate bills under a licensed supervisor; a school counsellor does not qualify.
    let mut assoc = lasting("individual-counseling", 45);
    assoc["clinician"]["credential"] = json!("AMFT");
    // (An LEP may supervise under the fee schedule but is no FQHC provider type.)
    assoc["clinician"]["supervisor"] = json!({ "npi": "1550123453", "given_name": "P", "family_name": "N", "credential": "LEP" });
    assert_eq!(reasons(&b.decide(&assoc)), vec![ReasonCode::SupervisorNotEligible]);
    assoc["clinician"]["supervisor"]["credential"] = json!("LMFT");
    let d = b.decide(&assoc);
    assert!(d.billable);
    assert_eq!(d.claim.as_ref().expect("claim").supervising_npi.as_deref(), Some("1550123453"));

    // Not a covered service anywhere.
    let d = b.decide(&lasting("check-in-check-out", 20));
    assert!(!d.billable && reasons(&d).iter().all(|r| *r == ReasonCode::ServiceNotCovered));
}

#[test]
fn one_funding_path_per_session() {
    let b = Bench::new();
    let s = lasting("individual-counseling", 45);
    // Claimed under the fee schedule before (say the site joined the FQHC's scope later): it
    // stays there.
    let d =
        b.decide_with(&s, &Fake { consent: true, visits: vec![], claimed: Some("cybhi-fee-schedule".into()), used: None }, "2026-11-30");
    assert_eq!(d.program.as_deref(), Some("cybhi-fee-schedule"));
    assert_eq!(d.considered[0].outcome, "not-considered");
    assert_eq!(codes(&d), vec![("90834".to_string(), 1)]);
}

// ---------------------------------------------------------------------------------------------
// The endpoints

async fn get_json(app: &TestApp, path: &str, token: &str) -> (u16, Value) {
    let res = app.get(path, token).await;
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn billing_endpoints(app: TestApp) {
    let s = session_with_id("BILL-HTTP-1");
    let res = app.post_json("/api/v1/sessions", &app.submitter_token, &s).await;
    assert_eq!(res.status().as_u16(), 201);
    let id = res.json::<Value>().await.expect("receipt")["id"].as_str().expect("id").to_owned();
    let path = format!("/api/v1/sessions/{id}/billing");

    // No payment consent yet: held under the FQHC's funding path with the reason named.
    let (status, d) = get_json(&app, &path, &app.admin_token).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["session_id"], json!(id));
    assert_eq!(d["session_version"], json!(1));
    assert_eq!(d["billable"], json!(false));
    assert_eq!(d["program"], json!("medi-cal-fqhc-pps"));
    assert_eq!(d["reasons"][0]["code"], json!("no-payment-consent"), "{d}");

    // The guardian consents to payment disclosures to the FQHC: billable.
    let mut form: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).expect("form")).expect("json");
    form["student"]["district_id"] = s["student"]["district_id"].clone();
    let res = app.post_json("/api/v1/consents", &app.submitter_token, &form).await;
    assert_eq!(res.status().as_u16(), 201);
    let (_, d) = get_json(&app, &path, &app.submitter_token).await;
    assert_eq!(d["billable"], json!(true), "{d}");
    assert_eq!(d["claim"]["lines"][0]["code"], json!("T1015"));
    assert_eq!(d["claim"]["lines"][1]["code"], json!("90834"));
    assert_eq!(d["claim"]["expected_cents"], json!(24567));
    assert_eq!(d["claim"]["biller"], json!("fqhc-demo"));
    assert!(d["claim"]["consent"].as_str().is_some_and(|c| c.contains("/_history/")));
    assert_eq!(d["date_of_service"], json!("2026-11-02"));

    // Other LEAs and partners see nothing.
    assert_eq!(app.get(&path, &app.other_submitter_token).await.status().as_u16(), 404);
    assert_eq!(app.get(&path, &app.partner_token).await.status().as_u16(), 403);
    assert_eq!(app.get("/api/v1/sessions/nope/billing", &app.admin_token).await.status().as_u16(), 404);

    // A draft is decided without being stored.
    let mut draft = session_with_id("BILL-DRAFT-1");
    draft["clinician"]["credential"] = json!("PPS-school-counselor");
    let res = app.post_json("/api/v1/billing/$evaluate", &app.submitter_token, &draft).await;
    assert_eq!(res.status().as_u16(), 200);
    let d: Value = res.json().await.expect("decision");
    assert_eq!(d["program"], json!("cybhi-fee-schedule"), "{d}");
    // The consent names the FQHC only: the LEA may not disclose for payment yet.
    assert_eq!(d["reasons"][0]["code"], json!("no-payment-consent"), "{d}");
    form["source_id"] = json!("CONSENT-LEA-PAYMENT");
    form["recipients"] = json!(["lea-demo"]);
    form["purposes"] = json!(["HPAYMT"]);
    let res = app.post_json("/api/v1/consents", &app.submitter_token, &form).await;
    assert_eq!(res.status().as_u16(), 201);
    let res = app.post_json("/api/v1/billing/$evaluate", &app.submitter_token, &draft).await;
    let d: Value = res.json().await.expect("decision");
    assert_eq!(d["billable"], json!(true), "{d}");
    assert_eq!(d["claim"]["lines"][0]["code"], json!("H0004"));
    assert_eq!(d["claim"]["lines"][0]["units"], json!(3));
    let (_, list) = get_json(&app, "/api/v1/sessions", &app.admin_token).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1), "the draft was not stored: {list}");

    // A draft that is not a valid session: 422 naming where.
    draft["service"]["tier"] = json!(7);
    let issues = outcome(app.post_json("/api/v1/billing/$evaluate", &app.submitter_token, &draft).await, 422).await;
    assert!(issues.iter().any(|i| i["expression"].to_string().contains("service")), "{issues:?}");
    // Another LEA's draft is refused for a submitter.
    let other = session_with_id("BILL-DRAFT-2");
    outcome(app.post_json("/api/v1/billing/$evaluate", &app.other_submitter_token, &other).await, 422).await;
}

on_both_backends!(billing_endpoints);

/// A county edits the billing files: every mistake stops start-up naming the file, the line and
/// the key; a new rate needs no code change.
#[test]
fn billing_files_are_checked_with_their_location() {
    let dir = copy_mappings();
    let settings = std::sync::Arc::new(test_settings("sqlite::memory:"));
    let validator = Validator::new(&repo_path("schemas"), settings.clone()).expect("schemas");
    let schema = validator.schemas().session_document();
    let pps = dir.path().join("billing/programs/fqhc-pps.toml");
    let fee = dir.path().join("billing/programs/cybhi-fee-schedule.toml");
    let original_pps = std::fs::read_to_string(&pps).expect("pps");
    let original_fee = std::fs::read_to_string(&fee).expect("fee");

    // A changed rate is just data.
    std::fs::write(&pps, original_pps.replace("fqhc-demo = \"245.67\"", "fqhc-demo = \"250.00\"")).expect("write");
    let rules = BillingRules::load(dir.path(), schema, &settings).expect("a new rate loads");
    let v = &rules.program("medi-cal-fqhc-pps").expect("pps").versions[0];
    assert_eq!(v.rates["fqhc-demo"].0, 25000);

    let broken = original_pps
        .replace("LCSW = \"licensed\"", "LCSWX = \"licensed\"")
        .replace("effective_from = \"2025-07-01\"", "effective_from = \"2025-13-01\"")
        .replace("payer = \"medi-cal-ffs\"", "payer = \"nobody\"");
    std::fs::write(&pps, broken).expect("write");
    std::fs::write(&fee, original_fee.replacen("  { code = \"90834\", per_unit = \"121.52\" },\n", "", 1)).expect("write");
    let err = BillingRules::load(dir.path(), schema, &settings).expect_err("broken files are refused").to_string();
    for want in [
        "fqhc-pps.toml:17: payer: unknown payer `nobody`",
        "fqhc-pps.toml:20: versions[0].effective_from: `2025-13-01` is not a date",
        "versions[0].renderers.LCSWX: unknown credential `LCSWX`",
        "cybhi-fee-schedule.toml",
        "can select 90834, which has no rate",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[test]
fn coach_code_frequency_limits() {
    let b = Bench::new();
    let s = coach(lasting("individual-counseling", 120));
    let with = |used| b.decide_with(&s, &Fake { consent: true, visits: vec![], claimed: None, used }, "2026-11-30");
    assert_eq!(codes(&with(None)), vec![("0592T".to_string(), 3)]);
    // Three units a day per provider: two already billed today leave one.
    assert_eq!(codes(&with(Some(("0592T", 2)))), vec![("0592T".to_string(), 1)]);
    assert_eq!(reasons(&with(Some(("0592T", 3)))), vec![ReasonCode::FrequencyLimit]);
    // Not the same day as an initial assessment.
    assert_eq!(reasons(&with(Some(("0591T", 1)))), vec![ReasonCode::FrequencyLimit]);
    // The initial assessment: two a year per student and provider.
    let intake = coach(lasting("intake-assessment", 40));
    let d = b.decide_with(&intake, &Fake { consent: true, visits: vec![], claimed: None, used: Some(("0591T", 2)) }, "2026-11-30");
    assert_eq!(reasons(&d), vec![ReasonCode::FrequencyLimit]);
}
