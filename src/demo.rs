//! `serve --demo`: fixed, documented development tokens and a few synthetic sessions, so a new
//! user can try every endpoint in the README within minutes. Refused off loopback: the demo
//! tokens are public.

use crate::auth::hash_secret;
use crate::intake::batch::split_json_array;
use crate::pipeline::{self, Pipeline, Submitter};
use crate::settings::Settings;
use crate::store::Store;

/// (client id, role, organisation, token) of every demo client.
pub const DEMO_CLIENTS: &[(&str, &str, Option<&str>, &str)] = &[
    ("demo-submitter-lea-demo", "submitter", Some("lea-demo"), "demo-submitter-lea-demo-token"),
    ("demo-submitter-lea-other", "submitter", Some("lea-other"), "demo-submitter-lea-other-token"),
    ("demo-finance", "finance", None, "demo-finance-token"),
    ("demo-admin", "admin", None, "demo-admin-token"),
];

/// Synthetic sessions (no real person) seeded for `lea-demo`.
const DEMO_SESSIONS: &str = include_str!("../schemas/examples/valid/demo-sessions.json");

/// A synthetic consent form for the third demo student.
const DEMO_CONSENT: &str = r#"{
  "source_id": "DEMO-CONSENT-0003", "lea": "lea-demo", "student": { "district_id": "D900003" },
  "granted_by": "guardian", "recipients": ["fqhc-demo"], "purposes": ["TREAT", "HPAYMT"],
  "categories": ["general-counselling", "mental-health-diagnosis"],
  "period": { "start": "2026-08-01", "end": "2027-07-31" }, "signed_on": "2026-08-20",
  "document_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}"#;

/// Seeds demo clients and sessions (idempotent) and returns the lines to print.
pub async fn seed(settings: &Settings, store: &Store, pipeline: &Pipeline) -> anyhow::Result<Vec<String>> {
    let host_ok = settings.server.host == "localhost" || settings.server.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !host_ok {
        anyhow::bail!("--demo uses public, well-known tokens and is refused on {}: bind to 127.0.0.1", settings.server.host);
    }
    let mut lines = vec!["Demo clients (development only; tokens are public):".to_string()];
    for (id, role, org, token) in DEMO_CLIENTS {
        if let Some(org) = org
            && settings.organization(org).is_none()
        {
            continue;
        }
        store.ensure_client(id, id, role, *org, &hash_secret(token)).await?;
        lines.push(format!("  {role:<9} {:<10} Authorization: Bearer {token}", org.unwrap_or("-")));
    }
    if settings.organization("lea-demo").is_some() && settings.site("site-demo-hs").is_some() {
        let records = split_json_array(DEMO_SESSIONS.as_bytes(), usize::MAX).map_err(|e| anyhow::anyhow!("demo sessions: {e}"))?;
        let who = Submitter { client_id: "demo-seed".into(), lea: Some("lea-demo".into()), request_id: None };
        let prepared = pipeline.prepare(&who, records, chrono::Utc::now());
        let receipt = pipeline::commit(store, &who, prepared, false, None).await?;
        lines.push(format!(
            "Demo sessions for lea-demo: {} created, {} already present, {} rejected",
            receipt.created + receipt.amended,
            receipt.duplicate,
            receipt.rejected
        ));
        // The guardian of the third demo student consents to treatment and payment disclosures
        // to the demo FQHC, so that session becomes a claim (the others show why they do not).
        if settings.organization("fqhc-demo").is_some() {
            let form: serde_json::Value = serde_json::from_str(DEMO_CONSENT)?;
            crate::consent::records::record_form(pipeline, store, None, &form, chrono::Utc::now())
                .await
                .map_err(|e| anyhow::anyhow!("demo consent: {e}"))?;
            lines.push("Demo consent: student D900003 (guardian) -> fqhc-demo for TREAT, HPAYMT".into());
        }
    }
    Ok(lines)
}
