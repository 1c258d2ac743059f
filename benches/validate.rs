//! In-process intake validation: parse JSON -> schema -> semantic rules -> canonical form + hashes
//! (`pipeline::prepare`), one thread. Target (issue 2): >= 50,000 sessions/s on one core.
//!
//! Also map + validate one session to its FHIR resources (issue 3: >= 20,000 sessions/s).
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

criterion_group!(benches, bench);
criterion_main!(benches);
