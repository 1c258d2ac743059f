//! SMART Backend Services (SMART App Launch 2.x, "Backend Services"): an FQHC's system asks for
//! an access token with the OAuth 2.0 client-credentials grant, authenticating with a JWT it
//! signed with a private key whose public half is in its registered JWKS (RFC 7523
//! `private_key_jwt`).
//!
//! The assertion must be signed with RS384 or ES384 by a key of the client's JWKS (inline, or
//! fetched from its `jwks_url` with reqwest over rustls and cached), name the client as `iss`
//! and `sub`, name this token endpoint as `aud`, expire within `auth.assertion_max_seconds`, and
//! carry a `jti` the client never used before (kept in the database until the assertion
//! expires, so a replay is refused on every instance). The access token is a short-lived JWT
//! signed by the gateway (HS256 with `auth.token_signing_key`) carrying the client, its FQHC,
//! the granted scopes and, if the request named one, the purpose of use.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::scope::Scopes;
use crate::domain::PurposeOfUse;
use crate::settings::AuthSettings;
use crate::store::{SmartClientRow, Store, StoreError};

/// `client_assertion_type` of RFC 7523.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// `iss` and `aud` of the gateway's own access tokens.
const ISSUER: &str = "wellness-gateway";
/// Largest JWKS document fetched from a URL.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Largest client assertion accepted.
const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// The form fields of a token request (`application/x-www-form-urlencoded`).
#[derive(Debug, Default, Deserialize)]
pub struct TokenRequest {
    /// Must be `client_credentials`.
    pub grant_type: Option<String>,
    /// Requested scopes, space-separated.
    pub scope: Option<String>,
    /// Must be [`JWT_BEARER`].
    pub client_assertion_type: Option<String>,
    /// The signed JWT.
    pub client_assertion: Option<String>,
    /// Optional (a gateway extension): binds the token to one purpose of use, `TREAT`,
    /// `HPAYMT` or `HOPERAT`. Without it, requests name their purpose in `X-Purpose-Of-Use`.
    pub purpose_of_use: Option<String>,
}

/// A refused token request, as RFC 6749 section 5.2 names the cases.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    /// Missing or malformed parameter.
    #[error("invalid_request: {0}")]
    InvalidRequest(String),
    /// The client could not be authenticated (unknown, disabled, bad signature, wrong aud,
    /// expired, reused jti, unknown kid).
    #[error("invalid_client: {0}")]
    InvalidClient(String),
    /// The requested scope grants nothing this client may have.
    #[error("invalid_scope: {0}")]
    InvalidScope(String),
    /// Not `client_credentials`.
    #[error("unsupported_grant_type: {0}")]
    UnsupportedGrantType(String),
    /// Storage failed; nothing was issued.
    #[error("server_error")]
    Server(#[from] StoreError),
}

impl OAuthError {
    /// The RFC 6749 `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            OAuthError::InvalidRequest(_) => "invalid_request",
            OAuthError::InvalidClient(_) => "invalid_client",
            OAuthError::InvalidScope(_) => "invalid_scope",
            OAuthError::UnsupportedGrantType(_) => "unsupported_grant_type",
            OAuthError::Server(_) => "server_error",
        }
    }

    /// The `error_description` (never echoes the assertion).
    pub fn description(&self) -> String {
        match self {
            OAuthError::InvalidRequest(m)
            | OAuthError::InvalidClient(m)
            | OAuthError::InvalidScope(m)
            | OAuthError::UnsupportedGrantType(m) => m.clone(),
            OAuthError::Server(_) => "the token could not be issued; retry later".into(),
        }
    }
}

/// A successful token response (RFC 6749 section 5.1).
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The access token.
    pub access_token: String,
    /// `bearer`.
    pub token_type: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The granted scopes (may be fewer than requested).
    pub scope: String,
}

/// Claims of the gateway's access tokens.
#[derive(Debug, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Always `wellness-gateway`.
    pub iss: String,
    /// Always `wellness-gateway`.
    pub aud: String,
    /// The client id.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issue time.
    pub iat: u64,
    /// Token id (for the audit trail).
    pub jti: String,
    /// Granted scopes.
    pub scope: String,
    /// The FQHC the client acts for.
    pub org: Option<String>,
    /// Purpose of use bound at issue, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    exp: u64,
    #[serde(default)]
    jti: Option<String>,
}

/// Issues and verifies tokens. One per process, shared by the handlers.
pub struct SmartAuth {
    settings: AuthSettings,
    encoding: EncodingKey,
    decoding: DecodingKey,
    access_validation: Validation,
    http: reqwest::Client,
    /// JWKS by URL (fetched) or by `client:<id>` (inline, parsed once).
    jwks_cache: moka::sync::Cache<String, Arc<JwkSet>>,
    /// URLs refetched recently because of an unknown kid.
    refetched: moka::sync::Cache<String, ()>,
}

impl std::fmt::Debug for SmartAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartAuth").finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl SmartAuth {
    /// Builds the token service. Without `auth.token_signing_key` a random key is used (tokens
    /// die with the process), with a warning.
    pub fn new(settings: &AuthSettings) -> anyhow::Result<SmartAuth> {
        let key: Vec<u8> = match &settings.token_signing_key {
            Some(k) => k.expose_secret().as_bytes().to_vec(),
            None => {
                tracing::warn!(
                    "auth.token_signing_key is not set: access tokens are signed with a random per-process key, so they end with a restart and other instances refuse them"
                );
                let mut k = vec![0u8; 32];
                getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
                k
            }
        };
        let mut access_validation = Validation::new(Algorithm::HS256);
        access_validation.set_issuer(&[ISSUER]);
        access_validation.set_audience(&[ISSUER]);
        access_validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        access_validation.leeway = 0;
        // reqwest is built without a default crypto provider; the process uses aws-lc-rs, as the
        // TLS listener and jsonwebtoken do (a second install is a no-op).
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = crate::outbound::client(Duration::from_secs(5), "JWKS")?;
        Ok(SmartAuth {
            settings: settings.clone(),
            encoding: EncodingKey::from_secret(&key),
            decoding: DecodingKey::from_secret(&key),
            access_validation,
            http,
            jwks_cache: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(settings.jwks_cache_seconds))
                .build(),
            refetched: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(settings.jwks_refetch_seconds.max(1)))
                .build(),
        })
    }

    /// The `aud` values a client assertion may name: the configured token URL, or the one the
    /// request was addressed to.
    fn audiences(&self, request_token_url: &str) -> Vec<String> {
        let mut v = vec![request_token_url.to_string()];
        if let Some(u) = &self.settings.token_url {
            v.push(u.clone());
        }
        v
    }

    /// Handles a token request: authenticates the client by its assertion and issues an access
    /// token for the scopes it may have.
    pub async fn issue(&self, store: &Store, req: TokenRequest, request_token_url: &str) -> Result<TokenResponse, OAuthError> {
        match req.grant_type.as_deref() {
            Some("client_credentials") => {}
            Some(other) => {
                return Err(OAuthError::UnsupportedGrantType(format!("grant_type `{other}` is not supported; use client_credentials")));
            }
            None => return Err(OAuthError::InvalidRequest("grant_type is required (client_credentials)".into())),
        }
        if req.client_assertion_type.as_deref() != Some(JWT_BEARER) {
            return Err(OAuthError::InvalidRequest(format!("client_assertion_type must be {JWT_BEARER}")));
        }
        let assertion = req
            .client_assertion
            .as_deref()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| OAuthError::InvalidRequest("client_assertion is required".into()))?;
        if assertion.len() > MAX_ASSERTION_BYTES {
            return Err(OAuthError::InvalidRequest(format!("client_assertion is longer than {MAX_ASSERTION_BYTES} bytes")));
        }
        let requested_scope = req
            .scope
            .as_deref()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| OAuthError::InvalidRequest("scope is required (for example system/*.read or system/Encounter.rs)".into()))?;

        let header =
            jsonwebtoken::decode_header(assertion).map_err(|e| OAuthError::InvalidClient(format!("client_assertion is not a JWT: {e}")))?;
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(OAuthError::InvalidClient(format!(
                "client_assertion alg {:?} is not accepted; sign with RS384 or ES384",
                header.alg
            )));
        }
        let kid = header.kid.as_deref().ok_or_else(|| OAuthError::InvalidClient("the client_assertion header has no kid".into()))?;
        // Who claims to be signing: read before the signature is checked, only to find the key.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<AssertionClaims>(assertion)
            .map_err(|e| OAuthError::InvalidClient(format!("client_assertion claims are malformed: {e}")))?;
        let client_id = unverified.claims.iss;
        let client = store
            .smart_client(&client_id)
            .await?
            .filter(|c| c.disabled_at.is_none())
            .ok_or_else(|| OAuthError::InvalidClient("unknown or disabled client (iss)".into()))?;
        let jwk = self.key_for(&client, kid, header.alg).await?;
        let key =
            DecodingKey::from_jwk(&jwk).map_err(|e| OAuthError::InvalidClient(format!("the registered key {kid} is unusable: {e}")))?;

        let mut validation = Validation::new(header.alg);
        validation.set_audience(&self.audiences(request_token_url));
        validation.set_issuer(&[client_id.as_str()]);
        validation.sub = Some(client_id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = self.settings.leeway_seconds;
        let claims = jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation)
            .map_err(|e| OAuthError::InvalidClient(format!("client_assertion rejected: {e}")))?
            .claims;
        let now = now_secs();
        if claims.exp > now + self.settings.assertion_max_seconds + self.settings.leeway_seconds {
            return Err(OAuthError::InvalidClient(format!(
                "client_assertion exp is more than {} seconds in the future",
                self.settings.assertion_max_seconds
            )));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 255)
            .ok_or_else(|| OAuthError::InvalidClient("client_assertion needs a jti of 1 to 255 characters".into()))?;

        let purpose = match req.purpose_of_use.as_deref() {
            None | Some("") => None,
            Some(p) => Some(PurposeOfUse::parse(p).map_err(OAuthError::InvalidRequest)?),
        };
        let registered = Scopes::parse_registered(&client.scopes)
            .map_err(|e| StoreError::Corrupt(format!("client {client_id} has unreadable registered scopes: {e}")))?;
        let granted = Scopes::grant(requested_scope, &registered, crate::fhir::search::SERVED_TYPES).map_err(OAuthError::InvalidScope)?;
        if granted.is_empty() {
            return Err(OAuthError::InvalidScope(format!(
                "none of the requested scopes is allowed for this client; it is registered for `{}`",
                client.scopes
            )));
        }
        // Last, so a refused request does not burn the jti.
        let expires_us = i64::try_from(claims.exp.saturating_add(self.settings.leeway_seconds)).unwrap_or(i64::MAX / 1_000_000) * 1_000_000;
        if !store.record_jti(&client_id, &jti, expires_us).await? {
            return Err(OAuthError::InvalidClient("this client_assertion jti was already used".into()));
        }
        let access = AccessClaims {
            iss: ISSUER.into(),
            aud: ISSUER.into(),
            sub: client_id.clone(),
            exp: now + self.settings.access_token_seconds,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: granted.to_string(),
            org: client.org_id.clone(),
            purpose: purpose.map(|p| p.code().to_string()),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &access, &self.encoding)
            .map_err(|e| StoreError::Corrupt(format!("signing an access token failed: {e}")))?;
        tracing::info!(client_id = %client_id, scope = %access.scope, "access token issued");
        Ok(TokenResponse {
            access_token: token,
            token_type: "bearer".into(),
            expires_in: self.settings.access_token_seconds,
            scope: access.scope,
        })
    }

    /// Verifies an access token this gateway issued (signature, issuer, audience, expiry).
    pub fn verify_access_token(&self, token: &str) -> Result<AccessClaims, String> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.access_validation)
            .map(|d| d.claims)
            .map_err(|e| format!("the access token is not valid: {e}"))
    }

    /// The key `kid` of the client's JWKS, refetching a URL JWKS once when the kid is unknown
    /// (key rotation), at most once per `auth.jwks_refetch_seconds`.
    async fn key_for(&self, client: &SmartClientRow, kid: &str, alg: Algorithm) -> Result<Jwk, OAuthError> {
        let mut set = self.jwks(client, false).await?;
        if set.find(kid).is_none()
            && let Some(url) = &client.jwks_url
            && !self.refetched.contains_key(url)
        {
            self.refetched.insert(url.clone(), ());
            set = self.jwks(client, true).await?;
        }
        let jwk = set.find(kid).ok_or_else(|| OAuthError::InvalidClient(format!("no key with kid {kid:?} in the client's JWKS")))?;
        check_key_matches(jwk, alg).map_err(OAuthError::InvalidClient)?;
        Ok(jwk.clone())
    }

    async fn jwks(&self, client: &SmartClientRow, refresh: bool) -> Result<Arc<JwkSet>, OAuthError> {
        let cache_key = match &client.jwks_url {
            Some(url) => url.clone(),
            None => format!("client:{}", client.id),
        };
        if !refresh && let Some(set) = self.jwks_cache.get(&cache_key) {
            return Ok(set);
        }
        let set = match (&client.jwks, &client.jwks_url) {
            (Some(inline), _) => parse_jwks(inline.as_bytes())
                .map_err(|e| StoreError::Corrupt(format!("client {} has an unreadable registered JWKS: {e}", client.id)))?,
            (None, Some(url)) => self.fetch_jwks(url).await.map_err(|e| {
                tracing::warn!(client_id = %client.id, error = %e, "JWKS fetch failed");
                OAuthError::InvalidClient(format!("the client's JWKS could not be fetched from its jwks_url: {e}"))
            })?,
            (None, None) => return Err(StoreError::Corrupt(format!("client {} has no JWKS", client.id)).into()),
        };
        let set = Arc::new(set);
        self.jwks_cache.insert(cache_key, set.clone());
        Ok(set)
    }

    async fn fetch_jwks(&self, url: &str) -> Result<JwkSet, String> {
        check_jwks_url(url, self.settings.allow_http_jwks)?;
        let mut res = self.http.get(url).header("accept", "application/json").send().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("HTTP {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_JWKS_BYTES {
                return Err(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"));
            }
        }
        parse_jwks(&body)
    }
}

/// The key's type and curve must fit the algorithm, and its own `alg`, when given, must equal it.
fn check_key_matches(jwk: &Jwk, alg: Algorithm) -> Result<(), String> {
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
        _ => false,
    };
    if !fits {
        return Err(format!("the key with this kid cannot verify {alg:?}"));
    }
    if let Some(key_alg) = jwk.common.key_algorithm
        && format!("{key_alg:?}") != format!("{alg:?}")
    {
        return Err(format!("the key with this kid is registered for {key_alg:?}, not {alg:?}"));
    }
    Ok(())
}

/// Parses a JWKS and checks that it holds at least one key the gateway can use (RSA, or EC
/// P-384, with a kid).
pub fn parse_jwks(bytes: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS (JSON Web Key Set): {e}"))?;
    let usable = set.keys.iter().any(|k| {
        k.common.key_id.is_some()
            && match &k.algorithm {
                AlgorithmParameters::RSA(_) => true,
                AlgorithmParameters::EllipticCurve(ec) => ec.curve == EllipticCurve::P384,
                _ => false,
            }
    });
    if !usable {
        return Err("the JWKS holds no key with a kid that can verify RS384 or ES384 (RSA, or EC on P-384)".into());
    }
    Ok(set)
}

/// A JWKS URL must be https (or http when allowed for development) and carry no credentials.
pub fn check_jwks_url(url: &str, allow_http: bool) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        other => return Err(format!("a JWKS URL must use https, not {other} (auth.allow_http_jwks allows http for development)")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a JWKS URL must not carry credentials".into());
    }
    Ok(())
}

/// Scopes a partner is registered with unless `--scope` says otherwise.
pub const DEFAULT_PARTNER_SCOPES: &str = "system/*.read";

/// The `/.well-known/smart-configuration` document.
pub fn smart_configuration(token_url: &str) -> serde_json::Value {
    serde_json::json!({
        "token_endpoint": token_url,
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.read", "system/*.rs", "system/Patient.rs", "system/Encounter.rs", "system/Condition.rs",
            "system/Coverage.rs", "system/Provenance.rs", "system/Practitioner.rs", "system/PractitionerRole.rs",
            "system/Organization.rs", "system/Location.rs"],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    })
}
