//! Claims: what billing reads back (visits already claimed, the program a session is claimed
//! under) and the claim rows themselves.

use super::{Store, StoreError, with_db};

/// An active claim of the same student on the same day (the visit limit).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClaimedVisit {
    /// The session the claim covers.
    pub session_id: String,
    /// Billing organisation.
    pub biller: String,
    /// Program.
    pub program: String,
}

impl Store {
    /// Active claims of `patient_id` on `service_date` for sessions other than `except_session`.
    pub async fn claimed_visits(
        &self,
        patient_id: &str,
        service_date: &str,
        except_session: &str,
    ) -> Result<Vec<ClaimedVisit>, StoreError> {
        let sql = "SELECT session_id, biller, program FROM claims \
                   WHERE active = 1 AND patient_id = $1 AND service_date = $2 AND session_id <> $3 AND frequency <> '8' \
                   ORDER BY created_us";
        Ok(with_db!(self.db(), pool => {
            sqlx::query_as(sql).bind(patient_id).bind(service_date).bind(except_session).fetch_all(pool).await?
        }))
    }

    /// The program of the session's latest claim that was not cancelled before it was sent: a
    /// session claimed under one program is never claimed under another.
    pub async fn claimed_program(&self, session_id: &str) -> Result<Option<String>, StoreError> {
        let sql = "SELECT program FROM claims WHERE session_id = $1 AND status <> 'cancelled' ORDER BY created_us DESC LIMIT 1";
        Ok(with_db!(self.db(), pool => {
            sqlx::query_scalar(sql).bind(session_id).fetch_optional(pool).await?
        }))
    }
}
