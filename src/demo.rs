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
    }
    Ok(lines)
}
