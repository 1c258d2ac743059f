//! In-process intake validation: parse JSON -> schema -> semantic rules -> canonical form + hashes
//! (`pipeline::prepare`), one thread. Target (issue 2): >= 50,000 sessions/s on one core.
//!
//! Also map + validate one session to its FHIR resources (issue 3: >= 20,000 sessions/s), and
//! one consent decision for a student with five consents (issue 4: >= 1,000,000 decisions/s).
//!
//! `cargo bench --bench validate`

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wellness_gateway::fhir::FhirSchema;
use wellness_gateway::intake::batch::split_ndjson;
use wellness_gateway::mapping::{Mapper, SessionVersion};
use wellness_gateway::pipeline::{self, Submitter};
use wellness_gateway::settings::Settings;
use wellness_gateway::validate::Validator;

/// The allocator the shipped binary uses (`src/main.rs`), so the figures are the product's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn ndjson(n: usize) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let example: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("schemas/examples/valid/session.json")).unwrap()).unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let mut s = example.clone();
        s["source_id"] = format!("BENCH-{i:07}").into();
        s["student"]["district_id"] = format!("S{i:07}").into();
        out.extend_from_slice(&serde_json::to_vec(&s).unwrap());
        out.push(b'\n');
    }
    out
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load(Some(&root.join("config/default.toml"))).expect("config loads");
    settings.rules.mappings_dir = root.join("mappings");
    let settings = Arc::new(settings);
    let validator = Validator::new(&root.join("schemas"), settings.clone()).expect("schemas compile");
    let who = Submitter { client_id: "bench".into(), lea: Some("lea-demo".into()), request_id: None };
    let body = ndjson(1000);
    let now = chrono::Utc::now();
    let pipe = pipeline::Pipeline::from_settings(settings.clone()).expect("pipeline compiles");

    let mut group = c.benchmark_group("intake");
    group.throughput(Throughput::Elements(1000));
    // Timed: splitting the NDJSON body and parsing each line, then validation (issue 2's
    // target).
    group.bench_function("split_parse_validate_1000_sessions", |b| {
        b.iter(|| {
            let records = split_ndjson(&body, 10_000).unwrap();
            records.iter().filter(|r| validator.validate(r.parsed.as_ref().unwrap(), now).is_ok()).count()
        })
    });
    // Timed: the whole CPU side of intake, also mapping each session to validated FHIR resources
    // with their search index rows (`pipeline::prepare`).
    group.bench_function("split_parse_validate_map_1000_sessions", |b| {
        b.iter(|| {
            let records = split_ndjson(&body, 10_000).unwrap();
            let prepared = pipe.prepare(&who, records, now);
            assert_eq!(prepared.rejected(), 0);
            prepared
        })
    });
    group.finish();

    // Issue 3 target: map + validate one session to its resources, >= 20,000 sessions/s on one core.
    let fhir = Arc::new(FhirSchema::load(&root.join("schemas")).expect("FHIR schema compiles"));
    let mapper = Mapper::load(&settings, validator.schemas().session_document(), fhir).expect("mappings compile");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("schemas/examples/valid/session.json")).unwrap()).unwrap();
    let valid = validator.validate(&record, now).expect("valid");
    let set = mapper.for_site("site-demo-hs");
    let version = SessionVersion { valid: &valid, record: &record, version: 1, content_sha256: "c", raw_sha256: "r", received_at: now };
    let mut group = c.benchmark_group("mapping");
    group.throughput(Throughput::Elements(1));
    group.bench_function("map_and_validate_one_session", |b| b.iter(|| mapper.map_session(&settings, &set, &version).expect("maps")));
    group.finish();
}

/// A student with five consents, the permitting one last (every other one is examined first:
/// revoked, expired, another partner, another purpose, one with a deny exception for SUD data).
fn consent(c: &mut Criterion) {
    use chrono::NaiveDate;
    use wellness_gateway::consent::model::Exception;
    use wellness_gateway::consent::{Ask, Categories, Category, Directive, Grantor, Partnerships, Period, Status, decide};
    use wellness_gateway::domain::PurposeOfUse;
    let settings = Settings::load(Some(Path::new("config/default.toml"))).expect("settings");
    let partnerships = Partnerships::from_settings(&settings);
    let day = |s: &str| s.parse::<NaiveDate>().unwrap();
    let base = Directive {
        id: "c".into(),
        version: 1,
        patient: "p".into(),
        lea: "lea-demo".into(),
        status: Status::Active,
        granted_by: Grantor::Guardian,
        recipients: vec!["fqhc-demo".into()],
        purposes: vec![PurposeOfUse::Treat],
        categories: vec![Category::GeneralCounselling, Category::MentalHealthDiagnosis],
        period: Period { start: Some(day("2026-08-01")), end: Some(day("2027-07-31")) },
        data_period: None,
        signed_on: day("2026-08-01"),
        document_sha256: "0".repeat(64),
        exceptions: vec![],
    };
    let variants: [fn(&mut Directive); 5] = [
        |d| d.status = Status::Inactive,
        |d| d.period.end = Some("2026-09-30".parse().unwrap()),
        |d| d.recipients = vec!["fqhc-other".into()],
        |d| d.exceptions = vec![Exception { categories: Some(vec![Category::SubstanceUse]), ..Default::default() }],
        |_| {},
    ];
    let consents: Vec<_> = variants
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut d = base.clone();
            d.id = format!("c{i}");
            if i == 3 {
                d.purposes = vec![PurposeOfUse::Payment];
            }
            f(&mut d);
            d.compile()
        })
        .collect();
    let facts = wellness_gateway::consent::Facts {
        site: "site-demo-hs",
        service_date: day("2026-11-02"),
        categories: Categories::NONE.with(Category::GeneralCounselling).with(Category::MentalHealthDiagnosis),
        minor_consented: false,
        psychotherapy_note: false,
        student_adult: false,
    };
    let ask = Ask { partner: "fqhc-demo", purpose: PurposeOfUse::Treat, today: day("2026-11-30") };
    assert!(decide(&ask, &facts, &consents, &partnerships).permitted());
    let mut group = c.benchmark_group("consent");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decide_5_consents", |b| {
        b.iter(|| decide(std::hint::black_box(&ask), std::hint::black_box(&facts), &consents, &partnerships).permitted())
    });
    group.finish();
}

criterion_group!(benches, bench, consent);
criterion_main!(benches);
