//! SMART Backend Services clients and the jti replay register.

use super::{ClientRow, Store, StoreError, now_micros, with_db};

/// A partner client registered with a JWKS.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SmartClientRow {
    /// Client id (UUID); the `iss` and `sub` of its assertions.
    pub id: String,
    /// `partner`.
    pub role: String,
    /// The FQHC it acts for.
    pub org_id: Option<String>,
    /// Set when the client was disabled.
    pub disabled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Inline JWKS (JSON), or
    pub jwks: Option<String>,
    /// the URL it is fetched from.
    pub jwks_url: Option<String>,
    /// Registered scopes, space-separated.
    pub scopes: String,
}

/// A client to register that authenticates with a JWKS.
#[derive(Debug, Clone, Copy)]
pub struct NewSmartClient<'a> {
    /// Client id.
    pub id: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Role (`partner`).
    pub role: &'a str,
    /// The FQHC it acts for.
    pub org_id: Option<&'a str>,
    /// Inline JWKS (JSON), or
    pub jwks: Option<&'a str>,
    /// the https URL it is fetched from.
    pub jwks_url: Option<&'a str>,
    /// Registered scopes, space-separated.
    pub scopes: &'a str,
}

impl Store {
    /// Registers a client that authenticates with a JWKS (inline or by URL) instead of a secret.
    pub async fn insert_smart_client(&self, c: NewSmartClient<'_>) -> Result<(), StoreError> {
        let NewSmartClient { id, name, role, org_id, jwks, jwks_url, scopes } = c;
        with_db!(self.db(), pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("INSERT INTO api_clients (id, name, role, org_id, secret_sha256, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(name)
                .bind(role)
                .bind(org_id)
                .bind(format!("jwks:{id}"))
                .bind(now_micros())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO smart_clients (client_id, jwks, jwks_url, scopes) VALUES ($1, $2, $3, $4)")
                .bind(id)
                .bind(jwks)
                .bind(jwks_url)
                .bind(scopes)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// A JWKS client by id.
    pub async fn smart_client(&self, id: &str) -> Result<Option<SmartClientRow>, StoreError> {
        let row = with_db!(self.db(), pool => {
            sqlx::query_as::<_, SmartClientRow>(
                "SELECT c.id, c.role, c.org_id, c.disabled_at, s.jwks, s.jwks_url, s.scopes \
                 FROM api_clients c JOIN smart_clients s ON s.client_id = c.id WHERE c.id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await?
        });
        Ok(row)
    }

    /// Any client by id.
    pub async fn client_by_id(&self, id: &str) -> Result<Option<ClientRow>, StoreError> {
        let row = with_db!(self.db(), pool => {
            sqlx::query_as::<_, ClientRow>("SELECT id, name, role, org_id, disabled_at FROM api_clients WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Records an assertion's jti until it expires. False when this client already used it
    /// (a replay), on any instance sharing the database.
    pub async fn record_jti(&self, client_id: &str, jti: &str, expires_us: i64) -> Result<bool, StoreError> {
        let inserted = with_db!(self.db(), pool => {
            sqlx::query("INSERT INTO smart_jti (client_id, jti, expires_us) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(client_id)
                .bind(jti)
                .bind(expires_us)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(inserted == 1)
    }

    /// Forgets jti values whose assertions expired before `before_us` (they can no longer be
    /// replayed: an expired assertion is refused anyway). Returns how many were removed.
    pub async fn purge_jti(&self, before_us: i64) -> Result<u64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query("DELETE FROM smart_jti WHERE expires_us < $1").bind(before_us).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }
}
