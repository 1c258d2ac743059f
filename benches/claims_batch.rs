//! Claims end to end (issue 6): 5,000 billable sessions of 5,000 students are stored and
//! consented (set-up, not timed), the claim worker settles them into claims (timed: claims/s),
//! then one 837I batch of all 5,000 is built and stored (timed; target < 1 s), on a SQLite file.
//! Also the pure 837 writer alone (target >= 50,000 claims/s).
//!
//! `cargo bench --bench claims_batch` (`CLAIMS=n` for another count)

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use wellness_gateway::claims;
use wellness_gateway::intake::RawRecord;
use wellness_gateway::pipeline::{self, Pipeline, Submitter};
use wellness_gateway::settings::Settings;
use wellness_gateway::store::Store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = std::env::var("CLAIMS").ok().and_then(|v| v.parse().ok()).unwrap_or(5_000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(n))
}

async fn run(n: usize) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir()?;
    let mut settings = Settings::load(Some(&root.join("config/default.toml")))?;
    settings.database.url = format!("sqlite://{}/bench.db", dir.path().display()).into();
    settings.billing.worker = false;
    settings.rules.schemas_dir = root.join("schemas");
    settings.rules.mappings_dir = root.join("mappings");
    let store = Store::connect(&settings.database).await?;
    store.migrate().await?;
    let p = Pipeline::from_settings(Arc::new(settings))?;
    let who = Submitter { client_id: "bench".into(), lea: None, request_id: None };
    let example: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("schemas/examples/valid/session.json"))?)?;
    let consent: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(root.join("schemas/examples/valid/consent.json"))?)?;
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let records = chunk
            .iter()
            .map(|i| {
                let mut s = example.clone();
                s["source_id"] = json!(format!("BENCH-{i:06}"));
                s["student"]["district_id"] = json!(format!("B{i:07}"));
                RawRecord::from_value(&s)
            })
            .collect();
        let prepared = p.prepare(&who, records, chrono::Utc::now());
        pipeline::commit(&store, &who, prepared, true, None).await?;
    }
    for i in 0..n {
        let mut c = consent.clone();
        c["source_id"] = json!(format!("BENCH-CONSENT-{i:06}"));
        c["student"]["district_id"] = json!(format!("B{i:07}"));
        wellness_gateway::consent::records::record_form(&p, &store, None, &c, chrono::Utc::now())
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    eprintln!("set-up: {n} sessions and consents stored in {:.1} s", t.elapsed().as_secs_f64());

    let today = chrono::Utc::now().date_naive();
    let t = Instant::now();
    let mut settled = 0;
    loop {
        let f = claims::run_pass(&store, &p, "bench", today, 1000).await?;
        anyhow::ensure!(f.failed == 0, "settlement failed");
        if f.settled == 0 {
            break;
        }
        settled += f.settled;
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!("claim worker: {settled} session versions settled in {secs:.2} s = {:.0} claims/s", settled as f64 / secs);

    // The writer alone: the typed model of all ready claims written as one interchange.
    let ready = claims::batch::ready(&store, n as i64).await?;
    let (key, group) = ready.groups.iter().next().ok_or_else(|| anyhow::anyhow!("no ready claims"))?;
    let model = claims::batch::interchange(&p, (&key.0, &key.1, &key.2), group, &ready.records, 1, 1, chrono::Utc::now().naive_utc())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let rounds = 10;
    let t = Instant::now();
    let mut bytes = 0;
    for _ in 0..rounds {
        bytes = wellness_gateway::x12::claim837::build_interchange(&model, &wellness_gateway::x12::Delimiters::readable())?.text.len();
    }
    let secs = t.elapsed().as_secs_f64() / rounds as f64;
    eprintln!(
        "837 writer: {} claims ({bytes} bytes) in {:.1} ms = {:.0} claims/s (target >= 50,000)",
        group.len(),
        secs * 1e3,
        group.len() as f64 / secs
    );

    let t = Instant::now();
    let batches = claims::batch::build(&store, &p, "bench", n as i64).await.map_err(|e| anyhow::anyhow!("{e}"))?.batches;
    let secs = t.elapsed().as_secs_f64();
    let claims_in: i64 = batches.iter().map(|b| b.claim_count).sum();
    eprintln!("batch: {claims_in} claims in {} batch(es) read, built and stored in {:.3} s (target < 1 s)", batches.len(), secs);
    Ok(())
}
