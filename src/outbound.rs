//! HTTP to parties outside the product — partners' JWKS URLs and subscription endpoints, payers'
//! clearinghouses: one way to build the client (reqwest over rustls, a timeout, no redirects, so
//! a request never lands somewhere the configuration did not name).

use std::time::Duration;

/// A client for `purpose` (named in the error) with this timeout.
pub fn client(timeout: Duration, purpose: &str) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| anyhow::anyhow!("building the {purpose} HTTP client: {e}"))
}
