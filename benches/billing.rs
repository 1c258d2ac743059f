//! Billing (issue 6): the billing decision with code selection for a varied set of sessions
//! (target >= 200,000 sessions/s on one core), one thread, store reads stubbed by a fixed
//! context (the decision itself is pure).
//!
//! `cargo bench --bench billing`

use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wellness_gateway::billing::{BillingRules, Context, decide::decide};
use wellness_gateway::settings::Settings;
use wellness_gateway::validate::{ValidSession, Validator};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixed;

impl Context for Fixed {
    fn fqhc_for_site(&self, site: &str, _date: NaiveDate) -> Option<String> {
        (site != "site-other-es").then(|| "fqhc-demo".to_string())
    }
    fn payment_consent(&self, _biller: &str, _by_name_only: bool) -> Result<String, String> {
        Ok("consent/_history/1".into())
    }
    fn visits_same_day(&self, _biller: &str, _category: &str) -> Vec<String> {
        Vec::new()
    }
    fn claimed_program(&self) -> Option<String> {
        None
    }
    fn claimed_units(&self, _code: &str, _provider: Option<&str>, _student_year: bool) -> u32 {
        0
    }
}

/// 1,000 sessions across services, durations, credentials, modalities and sites.
fn sessions(validator: &Validator) -> Vec<ValidSession> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("schemas/examples/valid/session.json")).expect("example")).expect("json");
    let kinds =
        ["individual-counseling", "intake-assessment", "crisis-intervention", "family-counseling", "case-management", "psychoeducation"];
    let creds = ["LCSW", "LMFT", "PPS-school-counselor", "AMFT"];
    let modalities = ["in-person", "video", "audio-only"];
    let start = chrono::DateTime::parse_from_rfc3339("2026-11-02T09:00:00-08:00").expect("start");
    (0..1000)
        .map(|i| {
            let mut s = example.clone();
            s["source_id"] = format!("B-{i}").into();
            s["service"]["type"] = kinds[i % kinds.len()].into();
            s["service"]["modality"] = modalities[i % 3].into();
            s["clinician"]["credential"] = creds[i % creds.len()].into();
            if creds[i % creds.len()] == "AMFT" {
                s["clinician"]["supervisor"] =
                    serde_json::json!({ "npi": "1550123453", "given_name": "P", "family_name": "N", "credential": "LMFT" });
            }
            if i % 5 == 0 {
                s["site"] = "site-other-es".into();
                s["lea"] = "lea-other".into();
            }
            if kinds[i % kinds.len()] == "family-counseling" {
                s["service"]["participants"] = serde_json::json!([{ "relationship": "mother" }]);
            }
            s["service"]["start"] = start.to_rfc3339().into();
            s["service"]["end"] = (start + chrono::Duration::minutes(10 + (i as i64 * 7) % 110)).to_rfc3339().into();
            validator.validate(&s, chrono::Utc::now()).expect("valid bench session")
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let settings = Arc::new(Settings::load(Some(&root.join("config/default.toml"))).expect("settings"));
    let validator = Validator::new(&root.join("schemas"), settings.clone()).expect("schemas");
    let rules = BillingRules::load(&root.join("mappings"), validator.schemas().session_document(), &settings).expect("rules");
    let list = sessions(&validator);
    let today = NaiveDate::from_ymd_opt(2026, 11, 30).expect("date");
    let billable = list.iter().filter(|s| decide(&rules, s, &Fixed, today).billable).count();
    eprintln!("{billable} of {} bench sessions billable", list.len());
    let mut g = c.benchmark_group("billing");
    g.throughput(Throughput::Elements(list.len() as u64));
    g.bench_function("decide_1000_sessions", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for s in &list {
                n += usize::from(decide(&rules, s, &Fixed, today).billable);
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
