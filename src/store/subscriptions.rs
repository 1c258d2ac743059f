//! Subscriptions, the change feed (`fhir_changes`, written with every Encounter version) and
//! the notification deliveries (see `crate::notify`).

use super::{Db, Store, StoreError, with_db};

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Id.
    pub id: String,
    /// The partner client that created it.
    pub client_id: String,
    /// Its FQHC.
    pub org_id: String,
    /// Purpose of use (v3 ActReason code).
    pub purpose: String,
    /// `Encounter?...`.
    pub criteria: String,
    /// rest-hook endpoint.
    pub endpoint: String,
    /// JSON array of `Name: value` headers.
    pub headers: String,
    /// `id-only` or `empty`.
    pub payload: String,
    /// requested | active | error | off.
    pub status: String,
    /// The last delivery error, while failing.
    pub error: Option<String>,
    /// The client's reason.
    pub reason: Option<String>,
    /// The last event number assigned.
    pub events: i64,
    /// Created, µs.
    pub created_us: i64,
    /// Last changed, µs.
    pub updated_us: i64,
}

/// One change of the feed.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangeRow {
    /// Position.
    pub seq: i64,
    /// Resource type.
    pub resource_type: String,
    /// Id.
    pub id: String,
    /// The version written.
    pub version_id: i64,
    /// When, µs.
    pub changed_us: i64,
}

/// One notification of one subscription.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Position (deliveries of a subscription are sent in this order).
    pub seq: i64,
    /// Subscription.
    pub subscription_id: String,
    /// The changed resource's type.
    pub resource_type: String,
    /// Its id.
    pub resource_id: String,
    /// Its version.
    pub version_id: i64,
    /// pending | delivered | withheld | dead.
    pub status: String,
    /// events-since-subscription-start of this notification, once assigned.
    pub event_number: Option<i64>,
    /// Attempts so far.
    pub attempts: i64,
    /// Not before, µs.
    pub next_attempt_us: i64,
    /// Queued (or re-driven), µs: retries stop `retry_hours` after this.
    pub created_us: i64,
    /// Delivered, µs.
    pub delivered_us: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

const SUB_COLUMNS: &str =
    "id, client_id, org_id, purpose, criteria, endpoint, headers, payload, status, error, reason, events, created_us, updated_us";
const DELIVERY_COLUMNS: &str = "seq, subscription_id, resource_type, resource_id, version_id, status, event_number, attempts, next_attempt_us, \
     created_us, delivered_us, last_error";

impl Store {
    /// Stores a new subscription.
    pub async fn subscription_insert(&self, s: &SubscriptionRow) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query(
                "INSERT INTO subscriptions (id, client_id, org_id, purpose, criteria, endpoint, headers, payload, status, error, reason, events, created_us, updated_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(&s.id)
            .bind(&s.client_id)
            .bind(&s.org_id)
            .bind(&s.purpose)
            .bind(&s.criteria)
            .bind(&s.endpoint)
            .bind(&s.headers)
            .bind(&s.payload)
            .bind(&s.status)
            .bind(&s.error)
            .bind(&s.reason)
            .bind(s.events)
            .bind(s.created_us)
            .bind(s.updated_us)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// One subscription.
    pub async fn subscription(&self, id: &str) -> Result<Option<SubscriptionRow>, StoreError> {
        let sql = format!("SELECT {SUB_COLUMNS} FROM subscriptions WHERE id = $1");
        let row = with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await? });
        Ok(row)
    }

    /// A client's subscriptions (`None`: every subscription that is not off).
    pub async fn subscriptions(&self, client_id: Option<&str>) -> Result<Vec<SubscriptionRow>, StoreError> {
        let sql = format!(
            "SELECT {SUB_COLUMNS} FROM subscriptions WHERE ($1 IS NULL AND status <> 'off' \
               AND NOT EXISTS (SELECT 1 FROM api_clients c WHERE c.id = subscriptions.client_id AND c.disabled_at IS NOT NULL)) \
             OR client_id = $1 ORDER BY created_us, id"
        );
        let rows = with_db!(self.db(), pool => { sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(client_id).fetch_all(pool).await? });
        Ok(rows)
    }

    /// Sets a subscription's status (and error); `false` when there is no such subscription of
    /// `client_id` (any client when `None`).
    pub async fn subscription_set_status(
        &self,
        id: &str,
        client_id: Option<&str>,
        status: &str,
        error: Option<&str>,
        now_us: i64,
    ) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query("UPDATE subscriptions SET status = $1, error = $2, updated_us = $3 WHERE id = $4 AND ($5 IS NULL OR client_id = $5)")
                .bind(status)
                .bind(error)
                .bind(now_us)
                .bind(id)
                .bind(client_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// A deliverer's view of a subscription's health (`active` after a success, `error` while
    /// failing); never revives one its client switched off.
    pub async fn subscription_health(&self, id: &str, status: &str, error: Option<&str>, now_us: i64) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query("UPDATE subscriptions SET status = $1, error = $2, updated_us = $3 WHERE id = $4 AND status <> 'off'")
                .bind(status)
                .bind(error)
                .bind(now_us)
                .bind(id)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Extends a deliverer's lease; `false` when it no longer holds the subscription.
    pub async fn subscription_renew(&self, id: &str, owner: &str, lease_until_us: i64) -> Result<bool, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query("UPDATE subscriptions SET lease_until_us = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(lease_until_us)
                .bind(id)
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// The oldest changes of the feed (at most `limit`).
    pub async fn changes(&self, limit: i64) -> Result<Vec<ChangeRow>, StoreError> {
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as("SELECT seq, resource_type, id, version_id, changed_us FROM fhir_changes ORDER BY seq LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// Removes the changes up to `seq` made before `before_us` (nothing subscribed then: they
    /// concern no one).
    pub async fn changes_discard(&self, seq: i64, before_us: i64) -> Result<u64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query("DELETE FROM fhir_changes WHERE seq <= $1 AND changed_us < $2").bind(seq).bind(before_us).execute(pool).await?.rows_affected()
        });
        Ok(n)
    }

    /// The newest change's position.
    pub async fn changes_head(&self) -> Result<Option<i64>, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT MAX(seq) FROM fhir_changes").fetch_one(pool).await?
        });
        Ok(n)
    }

    /// Queues deliveries and removes the changes they came from, in one transaction. On
    /// PostgreSQL the changes are locked first (`SKIP LOCKED`): when another instance is
    /// dispatching the same changes, nothing is written and `false` is returned.
    pub async fn dispatch_changes(&self, seqs: &[i64], deliveries: &[DeliveryRow]) -> Result<bool, StoreError> {
        if seqs.is_empty() {
            return Ok(true);
        }
        let list = super::fhir::placeholders(1, seqs.len(), false);
        let lock = match self.db() {
            Db::Sqlite(_) => format!("SELECT seq FROM fhir_changes WHERE seq IN ({list})"),
            Db::Postgres(_) => format!("SELECT seq FROM fhir_changes WHERE seq IN ({list}) FOR UPDATE SKIP LOCKED"),
        };
        let delete = format!("DELETE FROM fhir_changes WHERE seq IN ({list})");
        let begin = self.begin_write();
        with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(lock));
            for s in seqs {
                q = q.bind(*s);
            }
            if q.fetch_all(&mut *tx).await?.len() != seqs.len() {
                return Ok(false);
            }
            for d in deliveries {
                sqlx::query(
                    "INSERT INTO subscription_deliveries (subscription_id, resource_type, resource_id, version_id, status, attempts, next_attempt_us, created_us) \
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6)",
                )
                .bind(&d.subscription_id)
                .bind(&d.resource_type)
                .bind(&d.resource_id)
                .bind(d.version_id)
                .bind(d.next_attempt_us)
                .bind(d.created_us)
                .execute(&mut *tx)
                .await?;
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(delete));
            for s in seqs {
                q = q.bind(*s);
            }
            q.execute(&mut *tx).await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    /// Takes a subscription whose oldest pending delivery is due, for `owner` until `lease_until_us`
    /// (the one served longest ago first); its deliveries are then sent by this owner alone,
    /// in order.
    pub async fn subscription_claim(&self, owner: &str, now_us: i64, lease_until_us: i64) -> Result<Option<SubscriptionRow>, StoreError> {
        let lock = match self.db() {
            Db::Sqlite(_) => "",
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        };
        let sql = format!(
            "UPDATE subscriptions SET lease_owner = $1, lease_until_us = $2 WHERE id = ( \
               SELECT s.id FROM subscriptions s WHERE s.status <> 'off' AND (s.lease_until_us IS NULL OR s.lease_until_us < $3) \
               AND NOT EXISTS (SELECT 1 FROM api_clients c WHERE c.id = s.client_id AND c.disabled_at IS NOT NULL) \
               AND (SELECT d.next_attempt_us FROM subscription_deliveries d WHERE d.subscription_id = s.id AND d.status = 'pending' ORDER BY d.seq LIMIT 1) <= $3 \
               ORDER BY COALESCE(s.lease_until_us, 0), s.id LIMIT 1{lock}) \
             RETURNING {SUB_COLUMNS}"
        );
        let row = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(owner).bind(lease_until_us).bind(now_us).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Gives a subscription back (it counts as served now).
    pub async fn subscription_release(&self, id: &str, owner: &str, now_us: i64) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query("UPDATE subscriptions SET lease_owner = NULL, lease_until_us = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(now_us)
                .bind(id)
                .bind(owner)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// A subscription's pending deliveries, in order.
    pub async fn deliveries_pending(&self, subscription_id: &str, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM subscription_deliveries WHERE subscription_id = $1 AND status = 'pending' ORDER BY seq LIMIT $2"
        );
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(subscription_id).bind(limit).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Assigns the next event number of its subscription to a delivery (once).
    pub async fn delivery_number(&self, subscription_id: &str, seq: i64) -> Result<i64, StoreError> {
        let begin = self.begin_write();
        let n = with_db!(self.db(), pool => {
            let mut tx = pool.begin_with(begin).await?;
            let existing: Option<Option<i64>> = sqlx::query_scalar("SELECT event_number FROM subscription_deliveries WHERE seq = $1")
                .bind(seq)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(Some(n)) = existing {
                // Numbered already (by a deliverer whose lease ran out): the same number again.
                return Ok(n);
            }
            let n: i64 = sqlx::query_scalar("UPDATE subscriptions SET events = events + 1 WHERE id = $1 RETURNING events")
                .bind(subscription_id)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query("UPDATE subscription_deliveries SET event_number = $1 WHERE seq = $2 AND event_number IS NULL")
                .bind(n)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        });
        Ok(n)
    }

    /// Records the outcome of an attempt.
    pub async fn delivery_update(&self, d: &DeliveryRow) -> Result<(), StoreError> {
        with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE subscription_deliveries SET status = $1, attempts = $2, next_attempt_us = $3, delivered_us = $4, last_error = $5, created_us = $6 \
                 WHERE seq = $7",
            )
            .bind(&d.status)
            .bind(d.attempts)
            .bind(d.next_attempt_us)
            .bind(d.delivered_us)
            .bind(&d.last_error)
            .bind(d.created_us)
            .bind(d.seq)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Deliveries in a status (newest first), optionally of one subscription.
    pub async fn deliveries(&self, status: &str, subscription_id: Option<&str>, limit: i64) -> Result<Vec<DeliveryRow>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM subscription_deliveries WHERE status = $1 AND ($2 IS NULL OR subscription_id = $2) ORDER BY seq DESC LIMIT $3"
        );
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(status).bind(subscription_id).bind(limit).fetch_all(pool).await?
        });
        Ok(rows)
    }

    /// Puts a subscription's dead deliveries back in the queue (a fresh retry window from
    /// `now_us`); returns how many.
    pub async fn deliveries_redrive(&self, subscription_id: &str, now_us: i64) -> Result<u64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query(
                "UPDATE subscription_deliveries SET status = 'pending', attempts = 0, next_attempt_us = $1, created_us = $1, last_error = NULL \
                 WHERE subscription_id = $2 AND status = 'dead'",
            )
            .bind(now_us)
            .bind(subscription_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n)
    }
}
