//! The submission outbox: queued X12 batches are POSTed to their payer's clearinghouse
//! (`billing.clearinghouses`) with reqwest over rustls, retried with exponential backoff for
//! `billing.submit_retry_seconds`, then marked `failed` for an admin to re-drive. A batch is
//! leased by one submitter at a time (several instances may run one); a retry sends the same
//! bytes with the same ISA control number, so the clearinghouse can drop a duplicate.

use std::sync::Arc;
use std::time::Duration;

use crate::settings::Settings;
use crate::store::{BatchRow, Store};

/// How long a submitter holds a batch without finishing: long enough for a request that runs
/// to its timeout, so another instance never sends the same batch while one is still sending.
fn lease_us(settings: &Settings) -> i64 {
    let timeout = i64::try_from(settings.billing.timeout_seconds).unwrap_or(30);
    (2 * timeout + 30).max(120) * 1_000_000
}

/// Sends queued batches.
#[derive(Clone)]
pub struct Submitter {
    store: Store,
    settings: Arc<Settings>,
    http: reqwest::Client,
    owner: Arc<str>,
}

impl Submitter {
    /// A submitter over `store`.
    pub fn new(store: Store, settings: Arc<Settings>) -> anyhow::Result<Submitter> {
        let http = crate::outbound::client(Duration::from_secs(settings.billing.timeout_seconds.max(1)), "clearinghouse")?;
        let owner: Arc<str> = Arc::from(format!("submitter:{}", uuid::Uuid::new_v4().simple()));
        Ok(Submitter { store, settings, http, owner })
    }

    /// Sends every due batch once; the number sent successfully.
    pub async fn run_pass(&self) -> usize {
        let mut sent = 0;
        loop {
            let now = crate::store::now_us();
            let batch = match self.store.lease_due_batch(&self.owner, now, lease_us(&self.settings)).await {
                Ok(Some(b)) => b,
                Ok(None) => return sent,
                Err(e) => {
                    tracing::warn!(error = %e, "submitter could not read the outbox");
                    return sent;
                }
            };
            if self.send(&batch).await {
                sent += 1;
            }
        }
    }

    async fn send(&self, b: &BatchRow) -> bool {
        let b_settings = &self.settings.billing;
        let now = crate::store::now_us();
        let result = match b_settings.clearinghouses.iter().find(|c| c.payer == b.payer) {
            None => Err(format!("no clearinghouse is configured for payer {}", b.payer)),
            Some(c) => {
                let mut req = self
                    .http
                    .post(&c.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/edi-x12")
                    .header("X-Interchange-Control-Number", format!("{:09}", b.isa_control))
                    .body(b.x12.clone());
                if let Some(t) = &c.token {
                    req = req.bearer_auth(secrecy::ExposeSecret::expose_secret(t));
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("the clearinghouse answered {}", r.status())),
                    Err(e) => Err(format!("the clearinghouse could not be reached: {}", without_url(&e))),
                }
            }
        };
        let actor = format!("submitter:{}", b.payer);
        match result {
            Ok(()) => match self.store.batch_submitted(&b.id, &self.owner, &actor, now).await {
                Ok(true) => {
                    tracing::info!(batch = %b.id, payer = %b.payer, claims = b.claim_count, attempts = b.attempts + 1, "batch submitted");
                    true
                }
                Ok(false) => false,
                Err(e) => {
                    tracing::warn!(batch = %b.id, error = %e, "batch sent but its status could not be saved; it will be sent again");
                    false
                }
            },
            Err(error) => {
                let attempts = b.attempts + 1;
                let started = b.queued_us.unwrap_or(b.created_us);
                let window = i64::try_from(b_settings.submit_retry_seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
                let next =
                    now + crate::notify::exponential_backoff_us(b_settings.backoff_initial_ms, b_settings.backoff_max_seconds, attempts);
                let failed = next - started > window;
                if failed {
                    tracing::error!(batch = %b.id, payer = %b.payer, attempts, %error, "batch submission failed; retries exhausted");
                } else {
                    tracing::warn!(batch = %b.id, payer = %b.payer, attempts, %error, "batch submission failed; will retry");
                }
                if let Err(e) = self.store.batch_attempt_failed(&b.id, &self.owner, &error, next, failed).await {
                    tracing::warn!(batch = %b.id, error = %e, "could not record a failed submission");
                }
                false
            }
        }
    }

    /// Runs until the task is dropped, looking at the outbox every `poll`.
    pub async fn run(self, poll: Duration) {
        loop {
            self.run_pass().await;
            tokio::time::sleep(poll).await;
        }
    }
}

/// A reqwest error's text without the URL (it may carry a token in its query).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(u) = e.url() {
        text = text.replace(u.as_str(), "<clearinghouse>");
    }
    text
}
