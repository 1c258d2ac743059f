//! No double billing, as a property: whatever sequence of sends (new, repeated, amended, made
//! unbillable), claim-worker passes, batches and payer acknowledgements happens, every session
//! has at most one active claim; two sessions of one student on one day hold at most one FQHC
//! visit; a session's claims never change program; and once a version is settled, its active
//! claim bills what the billing decision says (or is a void when it is no longer billable).

use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::helpers::{Backend, TestDb, repo_path, session_with_id, test_settings};
use wellness_gateway::intake::RawRecord;
use wellness_gateway::pipeline::{self, Pipeline, Submitter};
use wellness_gateway::store::{ClaimFilter, Store};

#[derive(Debug, Clone)]
enum Op {
    /// Send session `session` in shape `variant`.
    Send { session: usize, variant: usize },
    /// One claim-worker pass.
    Settle,
    /// Finance builds batches.
    Batch,
    /// The payer answers every claim it was sent with a 277CA: accepted with its claim number,
    /// or rejected.
    Acknowledge { accept: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3, 0usize..6).prop_map(|(session, variant)| Op::Send { session, variant }),
        3 => Just(Op::Settle),
        1 => Just(Op::Batch),
        1 => any::<bool>().prop_map(|accept| Op::Acknowledge { accept }),
    ]
}

/// Sessions 0 and 1: one student, one day (one visit between them). Session 2: another day.
fn session(k: usize, variant: usize) -> Value {
    let mut s = session_with_id(&format!("PROP-{k}"));
    let day = if k == 2 { "03" } else { "02" };
    let hour = 9 + k;
    s["service"]["start"] = json!(format!("2026-11-{day}T{hour:02}:00:00-08:00"));
    let minutes = match variant {
        1 => 60,
        3 => 20,
        _ => 45,
    };
    s["service"]["end"] = json!(format!("2026-11-{day}T{hour:02}:{minutes:02}:00-08:00").replace(":60:", ":59:"));
    if variant == 2 {
        s["service"]["tier"] = json!(1);
    }
    if variant == 4 {
        s["service"]["modality"] = json!("video");
    }
    if variant == 5 {
        // A crisis is a visit of its own the same day (visit category `crisis`).
        s["service"]["type"] = json!("crisis-intervention");
    }
    s
}

fn pipeline() -> Pipeline {
    static P: OnceLock<Pipeline> = OnceLock::new();
    P.get_or_init(|| {
        let mut settings = test_settings("sqlite::memory:");
        settings.billing.worker = false;
        Pipeline::from_settings(Arc::new(settings)).expect("pipeline")
    })
    .clone()
}

async fn check(store: &Store, p: &Pipeline, settled_now: bool) -> Result<(), TestCaseError> {
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).ok_or_else(|| TestCaseError::fail("date"))?;
    let all = store.claims(&ClaimFilter::default(), 10_000).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut visit_holders: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for k in 0..3 {
        let id = pipeline::session_id("lea-demo", &format!("PROP-{k}"));
        let mine: Vec<_> = all.iter().filter(|c| c.session_id == id).collect();
        let active: Vec<_> = mine.iter().filter(|c| c.active == 1).collect();
        prop_assert!(active.len() <= 1, "session {k}: {} active claims", active.len());
        let mut programs: Vec<&str> = mine.iter().filter(|c| c.status != "cancelled").map(|c| c.program.as_str()).collect();
        programs.dedup();
        prop_assert!(programs.len() <= 1, "session {k} claimed under {programs:?}");
        // The payer is sent at most one original per session; every replacement or void refers
        // to a claim the payer had.
        // (After a void went out, billing again takes a new original.)
        // (A claim the payer rejected was never taken: a new original follows it.)
        let sent = |c: &&&wellness_gateway::store::ClaimRow| !matches!(c.status.as_str(), "ready" | "cancelled" | "held" | "rejected");
        let originals_sent = mine.iter().filter(|c| c.frequency == "1").filter(sent).count();
        let voids_sent = mine.iter().filter(|c| c.frequency == "8").filter(sent).count();
        prop_assert!(originals_sent <= 1 + voids_sent, "session {k}: {originals_sent} originals went to the payer ({voids_sent} voids)");
        for c in mine.iter().filter(|c| c.frequency != "1" && c.status != "cancelled") {
            let prior = all.iter().find(|x| Some(&x.id) == c.replaces.as_ref());
            prop_assert!(
                prior.is_some_and(|p| matches!(p.status.as_str(), "replaced" | "voided")),
                "claim {} (frequency {}) refers to {:?}, which the payer never had",
                c.pcn,
                c.frequency,
                prior.map(|p| (&p.pcn, &p.status))
            );
        }
        if k < 2 {
            for c in active.iter().filter(|c| c.frequency != "8") {
                *visit_holders.entry(c.visit_category.clone()).or_default() += 1;
            }
        }
        if !settled_now {
            continue;
        }
        let Some(subject) = p.billing_stored(store, &id).await.map_err(|e| TestCaseError::fail(format!("{e}")))? else { continue };
        let d = wellness_gateway::billing::decide_subject(store, &p.consent, &p.billing, &subject, today)
            .await
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        match (d.claim, active.first()) {
            // A void on its way to the payer: billing again waits for its acknowledgement.
            (Some(_), Some(c)) if c.frequency == "8" && matches!(c.status.as_str(), "batched" | "submitted") => {}
            (Some(plan), Some(c)) => {
                prop_assert_eq!(serde_json::to_string(&plan).unwrap_or_default(), c.plan.clone(), "session {} bills something else", k);
                prop_assert!(c.frequency != "8");
            }
            (Some(_), None) => prop_assert!(false, "session {k} is billable and has no active claim"),
            (None, Some(c)) => prop_assert_eq!(c.frequency.as_str(), "8", "session {} is not billable but claim {} is active", k, c.pcn),
            (None, None) => {}
        }
    }
    prop_assert!(visit_holders.values().all(|n| *n <= 1), "two visits of one category for one student on one day: {visit_holders:?}");
    Ok(())
}

async fn run(backend: Backend, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let Some(db) = TestDb::new(backend).await else { return Ok(()) };
    let p = pipeline();
    let mut settings = test_settings(&db.url);
    settings.billing.worker = false;
    let store = Store::connect(&settings.database).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    store.migrate().await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    let who = Submitter { client_id: "prop".into(), lea: None, request_id: None };
    let mut form: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/consent.json")).unwrap_or_default())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    form["student"]["district_id"] = json!("S1002345");
    wellness_gateway::consent::records::record_form(&p, &store, None, &form, chrono::Utc::now())
        .await
        .map_err(|e| TestCaseError::fail(format!("{e}")))?;
    let today = chrono::NaiveDate::from_ymd_opt(2026, 11, 30).ok_or_else(|| TestCaseError::fail("date"))?;
    for op in ops {
        let mut settled_now = false;
        match op {
            Op::Send { session: k, variant } => {
                let rec = RawRecord::from_value(&session(k, variant));
                let prepared = p.prepare(&who, vec![rec], chrono::Utc::now());
                pipeline::commit(&store, &who, prepared, true, None).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Settle => {
                let f = wellness_gateway::claims::run_pass(&store, &p, "prop", today, 100)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(f.failed, 0);
                settled_now = f.stale == 0 && store.unbilled_sessions(10).await.map_err(|e| TestCaseError::fail(e.to_string()))?.is_empty();
            }
            Op::Batch => {
                wellness_gateway::claims::batch::build(&store, &p, "prop", 100).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            Op::Acknowledge { accept } => {
                let mut answers = Vec::new();
                for c in store.claims(&ClaimFilter::default(), 1000).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
                    if matches!(c.status.as_str(), "batched" | "submitted" | "replaced" | "voided") && c.payer_claim_number.is_none()
                        || c.status == "batched"
                    {
                        answers.push((c.pcn.clone(), if accept { "A2:20" } else { "A7:562" }, accept.then(|| format!("ICN-{}", c.pcn))));
                    }
                }
                if !answers.is_empty() {
                    let list: Vec<(&str, &str, Option<&str>)> = answers.iter().map(|(a, b, c)| (a.as_str(), *b, c.as_deref())).collect();
                    let text = crate::helpers::ack_277(&list);
                    wellness_gateway::claims::acks::ingest(&store, text.as_bytes(), "prop")
                        .await
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
            }
        }
        check(&store, &p, settled_now).await?;
    }
    Ok(())
}

/// `PROPTEST_CASES` (for a longer search), else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn runtime() -> Result<tokio::runtime::Runtime, TestCaseError> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(|e| TestCaseError::fail(e.to_string()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_double_billing_sqlite(ops in proptest::collection::vec(op(), 1..40)) {
        runtime()?.block_on(run(Backend::Sqlite, ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(16), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn no_double_billing_postgres(ops in proptest::collection::vec(op(), 1..40)) {
        runtime()?.block_on(run(Backend::Postgres, ops))?;
    }
}
