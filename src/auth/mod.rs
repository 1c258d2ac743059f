//! API clients and the authenticated [`Principal`].
//!
//! Two ways in:
//! - submitters, finance and admins send a secret: a 256-bit random token shown once; only its
//!   SHA-256 is stored. (A slow password hash is for low-entropy passwords; for random tokens a
//!   plain hash is the standard practice and lets the lookup be a single indexed query.)
//! - FQHC partners use SMART Backend Services ([`smart`]): they trade a JWT signed with their own
//!   key for a short-lived access token limited to the scopes they were granted ([`scope`]).

pub mod scope;
pub mod smart;

use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use sha2::{Digest, Sha256};

use self::scope::{Interaction, Scopes};
use crate::domain::PurposeOfUse;
use crate::error::ApiError;
use crate::fhir::IssueCode;
use crate::settings::{OrgKind, Settings};
use crate::startup::AppState;
use crate::store::Store;

/// What a client may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// A county office or district: submits and reads its own LEA's sessions.
    Submitter,
    /// An FQHC partner: reads consented records (consent issue).
    Partner,
    /// Finance staff: claims and remittances.
    Finance,
    /// Operators: everything.
    Admin,
}

impl Role {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submitter => "submitter",
            Role::Partner => "partner",
            Role::Finance => "finance",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "submitter" => Some(Role::Submitter),
            "partner" => Some(Role::Partner),
            "finance" => Some(Role::Finance),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The kind of organisation a client of this role must be bound to, if any.
    pub fn required_org_kind(self) -> Option<OrgKind> {
        match self {
            Role::Submitter => Some(OrgKind::Lea),
            Role::Partner => Some(OrgKind::Fqhc),
            Role::Finance | Role::Admin => None,
        }
    }
}

/// How a principal authenticated, and what that limits.
#[derive(Debug, Clone)]
pub enum Grant {
    /// A client secret: the role alone decides.
    Secret,
    /// A SMART access token: limited to its scopes, possibly bound to one purpose of use.
    Smart {
        /// Granted scopes.
        scopes: Arc<Scopes>,
        /// Purpose bound at issue, if the token request named one.
        purpose: Option<PurposeOfUse>,
        /// Expiry, seconds since the epoch (a cached principal is not used past it).
        expires_at: u64,
        /// The access token's id (for the audit trail).
        token_id: String,
    },
}

/// An authenticated API client.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Client id.
    pub client_id: String,
    /// Role.
    pub role: Role,
    /// Bound organisation (LEA for submitters, FQHC for partners).
    pub org: Option<String>,
    /// How it authenticated.
    pub grant: Grant,
}

/// Header in which a partner names the purpose of a request when its token does not fix one.
pub const PURPOSE_HEADER: &str = "X-Purpose-Of-Use";

impl Principal {
    /// 403 unless this principal's scopes allow `interaction` on `resource_type` (clients that
    /// authenticated with a secret are limited by their role only).
    pub fn require_scope(&self, resource_type: &str, interaction: Interaction) -> Result<(), ApiError> {
        match &self.grant {
            Grant::Secret => Ok(()),
            Grant::Smart { scopes, .. } if scopes.allows(resource_type, interaction) => Ok(()),
            Grant::Smart { scopes, .. } => Err(ApiError::Forbidden(format!(
                "the access token's scopes ({scopes}) do not allow {} of {resource_type}",
                match interaction {
                    Interaction::Read => "reads",
                    Interaction::Search => "searches",
                }
            ))),
        }
    }

    /// The purpose of use of this request: the one bound in the token, else the
    /// [`PURPOSE_HEADER`] header, else treatment. A header that contradicts the token is a 400.
    pub fn purpose(&self, header: Option<&str>) -> Result<PurposeOfUse, ApiError> {
        let from_header = header
            .map(|h| PurposeOfUse::parse(h.trim()).map_err(|e| ApiError::bad_request(IssueCode::Value, PURPOSE_HEADER, e)))
            .transpose()?;
        let bound = match &self.grant {
            Grant::Smart { purpose, .. } => *purpose,
            Grant::Secret => None,
        };
        match (bound, from_header) {
            (Some(b), Some(h)) if b != h => Err(ApiError::bad_request(
                IssueCode::Value,
                PURPOSE_HEADER,
                format!("the access token was issued for purpose {b}; this request names {h}"),
            )),
            (Some(p), _) | (None, Some(p)) => Ok(p),
            (None, None) => Ok(PurposeOfUse::Treat),
        }
    }

    /// Claims, batches and remittances: finance and admins only.
    pub fn finance_scope(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin | Role::Finance => Ok(()),
            _ => Err(ApiError::Forbidden(format!("a {} client may not read or file claims", self.role.as_str()))),
        }
    }

    /// Billing decisions: finance and admins see every LEA (`None`), submitters their own LEA;
    /// partners none.
    pub fn billing_scope(&self) -> Result<Option<&str>, ApiError> {
        match self.role {
            Role::Admin | Role::Finance => Ok(None),
            Role::Submitter => self.intake_scope(),
            Role::Partner => Err(ApiError::Forbidden("a partner client may not read billing decisions".into())),
        }
    }

    /// Submitters are limited to their LEA; admins see every LEA (`None`); other roles may not
    /// touch intake at all.
    pub fn intake_scope(&self) -> Result<Option<&str>, ApiError> {
        match self.role {
            Role::Admin => Ok(None),
            Role::Submitter => {
                self.org.as_deref().map(Some).ok_or_else(|| ApiError::Forbidden("this submitter client is not bound to an LEA".into()))
            }
            _ => Err(ApiError::Forbidden(format!("a {} client may not submit or read sessions", self.role.as_str()))),
        }
    }
}

/// SHA-256 of a secret, hex.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A new random secret: `wg_` + 64 hex characters (256 bits).
pub fn new_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness available: {e}"))?;
    Ok(format!("wg_{}", hex::encode(bytes)))
}

/// A registered client and its one-time secret.
#[derive(Debug)]
pub struct NewClient {
    /// Client id.
    pub client_id: String,
    /// The secret; shown once.
    pub secret: String,
}

/// How a new client will authenticate.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// `--jwks`: a JWKS file or an https URL (SMART Backend Services; partners).
    pub jwks: Option<String>,
    /// `--scope`: registered scopes of a JWKS client (default `system/*.read`).
    pub scope: Option<String>,
}

/// A registered client: the secret to hand over, or none for a JWKS client.
#[derive(Debug)]
pub enum Registered {
    /// A secret client and its one-time secret.
    Secret(NewClient),
    /// A JWKS (SMART backend) client: only its id.
    Jwks {
        /// Client id (the `iss`/`sub` of its assertions).
        client_id: String,
        /// Registered scopes.
        scopes: String,
    },
}

/// Registers a client after checking its organisation binding against configuration. FQHC
/// partners must register a JWKS (they authenticate with SMART Backend Services); other roles
/// get a secret.
pub async fn register(
    store: &Store,
    settings: &Settings,
    name: &str,
    role: Role,
    org: Option<&str>,
    creds: Credentials,
) -> anyhow::Result<Registered> {
    check_binding(settings, name, role, org)?;
    match (role, creds.jwks) {
        (Role::Partner, None) => {
            anyhow::bail!("a partner client authenticates with SMART Backend Services: pass --jwks with its JWKS file or https URL")
        }
        (Role::Partner, Some(source)) => {
            let scopes = creds.scope.unwrap_or_else(|| smart::DEFAULT_PARTNER_SCOPES.to_string());
            let parsed = Scopes::parse_registered(&scopes).map_err(|e| anyhow::anyhow!("--scope: {e}"))?;
            let (jwks, url) = if source.starts_with("https://") || source.starts_with("http://") {
                smart::check_jwks_url(&source, settings.auth.allow_http_jwks).map_err(|e| anyhow::anyhow!("--jwks: {e}"))?;
                (None, Some(source))
            } else {
                let bytes = std::fs::read(&source).map_err(|e| anyhow::anyhow!("--jwks {source}: {e}"))?;
                let set = smart::parse_jwks(&bytes).map_err(|e| anyhow::anyhow!("--jwks {source}: {e}"))?;
                let raw: serde_json::Value = serde_json::from_slice(&bytes)?;
                let private = raw["keys"].as_array().is_some_and(|keys| keys.iter().any(|k| k.get("d").is_some() || k.get("k").is_some()));
                if private {
                    anyhow::bail!("--jwks {source}: the JWKS holds a private or symmetric key (`d` or `k`); register the public keys only");
                }
                (Some(serde_json::to_string(&set)?), None)
            };
            let client_id = uuid::Uuid::new_v4().to_string();
            let scopes = parsed.to_string();
            store
                .insert_smart_client(crate::store::NewSmartClient {
                    id: &client_id,
                    name,
                    role: role.as_str(),
                    org_id: org,
                    jwks: jwks.as_deref(),
                    jwks_url: url.as_deref(),
                    scopes: &scopes,
                })
                .await?;
            Ok(Registered::Jwks { client_id, scopes })
        }
        (_, Some(_)) => anyhow::bail!("--jwks is for partner clients; a {} client gets a secret", role.as_str()),
        (_, None) => Ok(Registered::Secret(register_client(store, settings, name, role, org).await?)),
    }
}

/// Registers a secret client after checking its organisation binding against configuration.
pub async fn register_client(store: &Store, settings: &Settings, name: &str, role: Role, org: Option<&str>) -> anyhow::Result<NewClient> {
    check_binding(settings, name, role, org)?;
    let client_id = uuid::Uuid::new_v4().to_string();
    let secret = new_secret()?;
    store.insert_client(&client_id, name, role.as_str(), org, &hash_secret(&secret)).await?;
    Ok(NewClient { client_id, secret })
}

fn check_binding(settings: &Settings, name: &str, role: Role, org: Option<&str>) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        anyhow::bail!("--name must not be empty");
    }
    match (role.required_org_kind(), org) {
        (Some(kind), None) => {
            anyhow::bail!("a {} client must be bound to an organisation of kind {}: pass --org", role.as_str(), kind.as_str())
        }
        (Some(kind), Some(id)) => match settings.organization(id) {
            Some(o) if o.kind == kind => {}
            Some(o) => anyhow::bail!("--org {id} is a {}, but a {} client needs a {}", o.kind.as_str(), role.as_str(), kind.as_str()),
            None => anyhow::bail!("--org {id} is not a configured organisation"),
        },
        (None, Some(id)) if settings.organization(id).is_none() => anyhow::bail!("--org {id} is not a configured organisation"),
        (None, _) => {}
    }
    Ok(())
}

async fn authenticate(state: web::Data<AppState>, header: Option<String>) -> Result<Principal, ApiError> {
    let header = header.ok_or_else(|| ApiError::Unauthenticated("send the client secret as 'Authorization: Bearer <secret>'".into()))?;
    // The scheme is case-insensitive (RFC 7235); access tokens carry their scopes, so a token
    // granted many types is long (smart-fetch asks for 21).
    let token = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .filter(|t| !t.is_empty() && t.len() <= 8192)
        .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be 'Bearer <secret>'".into()))?;
    let hash = hash_secret(token);
    if let Some(p) = state.auth_cache.get(&hash)
        && !p.expired()
    {
        tracing::Span::current().record("client_id", p.client_id.as_str());
        return Ok(p);
    }
    // A JWT (three dot-separated parts) is a SMART access token; anything else a secret.
    if token.bytes().filter(|b| *b == b'.').count() == 2 {
        let principal = smart_principal(&state, token).await?;
        tracing::Span::current().record("client_id", principal.client_id.as_str());
        if state.settings.server.auth_cache_seconds > 0 {
            state.auth_cache.insert(hash, principal.clone());
        }
        return Ok(principal);
    }
    let row = state
        .store
        .client_by_secret_hash(&hash)
        .await?
        .filter(|r| r.disabled_at.is_none())
        .ok_or_else(|| ApiError::Unauthenticated("the bearer token is not valid".into()))?;
    let role = Role::parse(&row.role).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("client {} has an unknown role", row.id)))?;
    if role == Role::Partner {
        return Err(ApiError::Unauthenticated(
            "partner clients authenticate with SMART Backend Services: get an access token at /auth/token".into(),
        ));
    }
    tracing::Span::current().record("client_id", row.id.as_str());
    let principal = Principal { client_id: row.id, role, org: row.org_id, grant: Grant::Secret };
    if state.settings.server.auth_cache_seconds > 0 {
        state.auth_cache.insert(hash, principal.clone());
    }
    Ok(principal)
}

async fn smart_principal(state: &AppState, token: &str) -> Result<Principal, ApiError> {
    let claims = state.smart.verify_access_token(token).map_err(ApiError::Unauthenticated)?;
    // The client may have been disabled since the token was issued.
    let row = state
        .store
        .client_by_id(&claims.sub)
        .await?
        .filter(|r| r.disabled_at.is_none())
        .ok_or_else(|| ApiError::Unauthenticated("the client of this access token is disabled".into()))?;
    let role = Role::parse(&row.role).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("client {} has an unknown role", row.id)))?;
    let scopes = Scopes::parse_registered(&claims.scope)
        .map_err(|e| ApiError::Unauthenticated(format!("the access token's scope is unreadable: {e}")))?;
    let purpose = claims
        .purpose
        .as_deref()
        .map(PurposeOfUse::parse)
        .transpose()
        .map_err(|e| ApiError::Unauthenticated(format!("the access token's purpose is unreadable: {e}")))?;
    Ok(Principal {
        client_id: row.id,
        role,
        org: row.org_id,
        grant: Grant::Smart { scopes: Arc::new(scopes), purpose, expires_at: claims.exp, token_id: claims.jti },
    })
}

impl Principal {
    fn expired(&self) -> bool {
        matches!(&self.grant, Grant::Smart { expires_at, .. } if *expires_at <= jsonwebtoken::get_current_timestamp())
    }
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Principal, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let header = req.headers().get(actix_web::http::header::AUTHORIZATION).map(|v| v.to_str().unwrap_or_default().to_owned());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("application state missing")))?;
            authenticate(state, header).await
        })
    }
}
