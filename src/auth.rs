//! API clients and the authenticated [`Principal`].
//!
//! A client's secret is a 256-bit random token shown once; only its SHA-256 is stored. (A slow
//! password hash is for low-entropy passwords; for random tokens a plain hash is the standard
//! practice and lets the lookup be a single indexed query.)

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
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

/// An authenticated API client.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Client id.
    pub client_id: String,
    /// Role.
    pub role: Role,
    /// Bound organisation (LEA for submitters, FQHC for partners).
    pub org: Option<String>,
}

impl Principal {
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

/// Registers a client after checking its organisation binding against configuration.
pub async fn register_client(store: &Store, settings: &Settings, name: &str, role: Role, org: Option<&str>) -> anyhow::Result<NewClient> {
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
    let client_id = uuid::Uuid::new_v4().to_string();
    let secret = new_secret()?;
    store.insert_client(&client_id, name, role.as_str(), org, &hash_secret(&secret)).await?;
    Ok(NewClient { client_id, secret })
}

async fn authenticate(state: web::Data<AppState>, header: Option<String>) -> Result<Principal, ApiError> {
    let header = header.ok_or_else(|| ApiError::Unauthenticated("send the client secret as 'Authorization: Bearer <secret>'".into()))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty() && t.len() <= 512)
        .ok_or_else(|| ApiError::Unauthenticated("the Authorization header must be 'Bearer <secret>'".into()))?;
    let hash = hash_secret(token);
    if state.settings.server.auth_cache_seconds > 0
        && let Some(p) = state.auth_cache.get(&hash)
    {
        tracing::Span::current().record("client_id", p.client_id.as_str());
        return Ok(p);
    }
    let row = state
        .store
        .client_by_secret_hash(&hash)
        .await?
        .filter(|r| r.disabled_at.is_none())
        .ok_or_else(|| ApiError::Unauthenticated("the bearer token is not valid".into()))?;
    let role = Role::parse(&row.role).ok_or_else(|| ApiError::Internal(anyhow::anyhow!("client {} has an unknown role", row.id)))?;
    tracing::Span::current().record("client_id", row.id.as_str());
    let principal = Principal { client_id: row.id, role, org: row.org_id };
    if state.settings.server.auth_cache_seconds > 0 {
        state.auth_cache.insert(hash, principal.clone());
    }
    Ok(principal)
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
