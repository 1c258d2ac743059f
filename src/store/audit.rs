//! The audit trail: append-only, hash-chained AuditEvents.
//!
//! Each event's stored JSON names the hash of the event before it (an extension), and its own
//! hash is the SHA-256 of that JSON, so editing or removing an event breaks the chain at that
//! point ([`Store::audit_chain`] feeds `wellness-gateway audit verify`). Appends are serialised:
//! the batch transaction takes a lock first (PostgreSQL: a transaction advisory lock, so several
//! instances extend one chain; SQLite: `BEGIN IMMEDIATE`, the database write lock) and reads the
//! chain's head inside it.

use sha2::{Digest, Sha256};

use super::{Db, Store, StoreError, with_db};

/// The `prev` of the first event.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// Extension carrying the previous event's hash inside each AuditEvent.
pub const PREVIOUS_HASH_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:audit-previous-hash";
/// Advisory lock key of the chain (PostgreSQL).
const CHAIN_LOCK: i64 = 0x5767_6175_6469_7400;

/// An event to append: its AuditEvent JSON (without the chain extension) and index rows.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    /// AuditEvent id.
    pub id: String,
    /// Recorded time, µs since the epoch.
    pub recorded_us: i64,
    /// The client.
    pub client_id: String,
    /// The AuditEvent's JSON text, an object whose last member is a non-empty `extension`
    /// array: appending adds the chain extension to that array, in the text.
    pub event: String,
    /// (patient id, disclosed) of the students the event is about.
    pub patients: Vec<(String, bool)>,
}

/// A stored event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChainRow {
    /// Position in the chain (1, 2, ...).
    pub seq: i64,
    /// AuditEvent id.
    pub id: String,
    /// The stored JSON.
    pub event: String,
    /// Hash of the event before.
    pub prev_hash: String,
    /// SHA-256 of `event`.
    pub hash: String,
}

/// SHA-256 (hex) of an event's stored JSON.
pub fn event_hash(event: &str) -> String {
    hex::encode(Sha256::digest(event.as_bytes()))
}

/// Adds the chain extension (`prev`, a hex hash) as the last element of the event's closing
/// `extension` array: `…,"extension":[{…}]}` becomes `…,"extension":[{…},{"url":…}]}`.
/// Text whose last member is anything else is refused: after the last `,"extension":[` only
/// flat extension objects may follow (no member holding an array or object; escaped string
/// content cannot end a member name, so it cannot fake one), and they must close the text.
pub(crate) fn with_previous_hash(mut event: String, prev: &str) -> Result<String, StoreError> {
    const MARK: &str = r#","extension":["#;
    let last_member_is_extension = event.ends_with("}]}")
        && event.rfind(MARK).is_some_and(|at| {
            let tail = &event[at + MARK.len()..];
            !tail.contains(r#"":["#) && !tail.contains(r#"":{"#)
        });
    if !last_member_is_extension {
        return Err(StoreError::Corrupt("an AuditEvent to append does not end with its extension array (a bug)".into()));
    }
    event.truncate(event.len() - 2);
    event.push_str(r#",{"url":""#);
    event.push_str(PREVIOUS_HASH_EXTENSION);
    event.push_str(r#"","valueString":""#);
    event.push_str(prev);
    event.push_str(r#""}]}"#);
    Ok(event)
}

/// An event with its place in the chain, ready to insert: `event` names `prev_hash` in its
/// chain extension and `hash` is its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEvent {
    /// Position in the chain (1, 2, ...).
    pub seq: i64,
    /// AuditEvent id.
    pub id: String,
    /// Recorded time, µs since the epoch.
    pub recorded_us: i64,
    /// The client.
    pub client_id: String,
    /// Hash of the event before.
    pub prev_hash: String,
    /// SHA-256 of `event`.
    pub hash: String,
    /// (patient id, disclosed) of the students the event is about.
    pub patients: Vec<(String, bool)>,
    /// The stored JSON.
    pub event: String,
}

/// Gives an event the next place in the chain after `head` (position and hash of the last
/// event), and moves `head` on to it.
pub fn chain_event(e: PendingEvent, head: &mut (i64, String)) -> Result<ChainedEvent, StoreError> {
    let PendingEvent { id, recorded_us, client_id, event, patients } = e;
    let json = with_previous_hash(event, &head.1)?;
    let hash = event_hash(&json);
    let seq = head.0 + 1;
    let prev_hash = std::mem::replace(&mut head.1, hash.clone());
    head.0 = seq;
    Ok(ChainedEvent { seq, id, recorded_us, client_id, prev_hash, hash, patients, event: json })
}

/// The chain's last position and hash.
const HEAD_SQL: &str = "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1";

/// The last event's position and hash (`(0, GENESIS_HASH)` for an empty chain), read in `$tx`.
macro_rules! chain_head {
    ($tx:expr) => {{
        let head: Option<(i64, String)> = sqlx::query_as(HEAD_SQL).fetch_optional(&mut **$tx).await?;
        head.unwrap_or((0, GENESIS_HASH.to_string()))
    }};
}

/// Inserts chained events (two multi-row inserts).
macro_rules! insert_chained {
    ($tx:expr, $events:expr) => {{
        use $crate::store::fhir::Bind;
        let mut rows: Vec<Vec<Bind>> = Vec::new();
        let mut patient_rows: Vec<Vec<Bind>> = Vec::new();
        for e in $events {
            let ChainedEvent { seq, id, recorded_us, client_id, prev_hash, hash, patients, event } = e;
            rows.push(vec![
                Bind::Int(seq),
                Bind::Text(id),
                Bind::Int(recorded_us),
                Bind::Text(client_id),
                Bind::Text(event),
                Bind::Text(prev_hash),
                Bind::Text(hash),
            ]);
            for (patient, disclosed) in patients {
                patient_rows.push(vec![Bind::Text(patient), Bind::Int(seq), Bind::Bool(disclosed)]);
            }
        }
        $crate::store::fhir::insert_rows!($tx, "audit_events (seq, id, recorded_us, client_id, event, prev_hash, hash)", 7, rows, "");
        $crate::store::fhir::insert_rows!(
            $tx,
            "audit_event_patients (patient_id, seq, disclosed)",
            3,
            patient_rows,
            "ON CONFLICT DO NOTHING"
        );
    }};
}

macro_rules! append {
    ($tx:expr, $events:expr) => {{
        let mut head = chain_head!($tx);
        let chained = $events.into_iter().map(|e| chain_event(e, &mut head)).collect::<Result<Vec<_>, StoreError>>()?;
        insert_chained!($tx, chained);
    }};
}

impl Store {
    /// Appends events to the chain in one transaction (all or none), with two multi-row inserts.
    pub async fn append_audit(&self, events: Vec<PendingEvent>) -> Result<(), StoreError> {
        match self.db() {
            Db::Sqlite(pool) => {
                super::sqlite_write(pool, async |tx| {
                    append!(tx, events);
                    Ok(())
                })
                .await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(CHAIN_LOCK).execute(&mut *tx).await?;
                append!(&mut tx, events);
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Inserts events already chained elsewhere (the SQLite audit journal, `audit::journal`),
    /// in one transaction. Events at or before the stored head are skipped (loaded before a
    /// crash that kept them in the journal); the first new one must follow the head, or
    /// nothing is written and the chain is reported broken.
    pub async fn load_audit(&self, events: Vec<ChainedEvent>) -> Result<(), StoreError> {
        match self.db() {
            Db::Sqlite(pool) => {
                super::sqlite_write(pool, async |tx| {
                    let head = chain_head!(tx);
                    // Events loaded before must be the stored ones (the last of them is checked:
                    // the chain links it to all before it).
                    if let Some(seen) = events.iter().rfind(|e| e.seq <= head.0) {
                        let stored: Option<String> = sqlx::query_scalar("SELECT hash FROM audit_events WHERE seq = $1")
                            .bind(seen.seq)
                            .fetch_optional(&mut **tx)
                            .await?;
                        if stored.as_deref() != Some(seen.hash.as_str()) {
                            return Err(StoreError::Corrupt(format!(
                                "the audit journal's event {} is not the stored event at that position",
                                seen.seq
                            )));
                        }
                    }
                    let fresh: Vec<ChainedEvent> = events.into_iter().filter(|e| e.seq > head.0).collect();
                    if let Some(first) = fresh.first()
                        && (first.seq != head.0 + 1 || first.prev_hash != head.1)
                    {
                        return Err(StoreError::Corrupt(format!(
                            "the audit journal's event {} does not follow the stored chain's last event {}",
                            first.seq, head.0
                        )));
                    }
                    insert_chained!(tx, fresh);
                    Ok(())
                })
                .await
            }
            Db::Postgres(_) => Err(StoreError::Corrupt("the audit journal is used with SQLite only (a bug)".into())),
        }
    }

    /// The stored chain's last position and hash (`(0, GENESIS_HASH)` when empty).
    pub async fn audit_head(&self) -> Result<(i64, String), StoreError> {
        let head: Option<(i64, String)> = with_db!(self.db(), pool => {
            sqlx::query_as(HEAD_SQL).fetch_optional(pool).await?
        });
        Ok(head.unwrap_or((0, GENESIS_HASH.to_string())))
    }

    /// The SQLite database file, when the store is a SQLite file (not in memory).
    pub fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self.db() {
            Db::Sqlite(pool) => {
                let options = pool.connect_options();
                let name = options.get_filename();
                let text = name.to_string_lossy();
                (!text.is_empty() && text != ":memory:" && !text.starts_with("file:")).then(|| name.to_path_buf())
            }
            Db::Postgres(_) => None,
        }
    }

    /// Up to `limit` events after position `after`, in chain order.
    pub async fn audit_chain(&self, after: i64, limit: i64) -> Result<Vec<ChainRow>, StoreError> {
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as::<_, ChainRow>("SELECT seq, id, event, prev_hash, hash FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// One event by id.
    pub async fn audit_event(&self, id: &str) -> Result<Option<ChainRow>, StoreError> {
        let row = with_db!(self.db(), pool => {
            sqlx::query_as::<_, ChainRow>("SELECT seq, id, event, prev_hash, hash FROM audit_events WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await?
        });
        Ok(row)
    }

    /// Events newest first, before position `before`, optionally only those about `patient`
    /// (and, with `disclosed_only`, only those that disclosed something of the patient).
    pub async fn audit_events(
        &self,
        patient: Option<&str>,
        disclosed_only: bool,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ChainRow>, StoreError> {
        let before = before.unwrap_or(i64::MAX);
        let rows = with_db!(self.db(), pool => {
            match patient {
                Some(p) => sqlx::query_as::<_, ChainRow>(
                    "SELECT e.seq, e.id, e.event, e.prev_hash, e.hash FROM audit_event_patients p JOIN audit_events e ON e.seq = p.seq \
                     WHERE p.patient_id = $1 AND p.seq < $2 AND (p.disclosed OR NOT $3) ORDER BY p.seq DESC LIMIT $4",
                )
                .bind(p)
                .bind(before)
                .bind(disclosed_only)
                .bind(limit)
                .fetch_all(pool)
                .await?,
                None => sqlx::query_as::<_, ChainRow>(
                    "SELECT seq, id, event, prev_hash, hash FROM audit_events WHERE seq < $1 ORDER BY seq DESC LIMIT $2",
                )
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await?,
            }
        });
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_previous_hash_becomes_the_last_extension_of_the_text() -> Result<(), String> {
        let event = r#"{"resourceType":"AuditEvent","id":"a","extension":[{"url":"urn:x","valueString":"fqhc-demo"}]}"#;
        let json = with_previous_hash(event.to_string(), GENESIS_HASH).map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_str(&json).map_err(|e| e.to_string())?;
        let ext = v["extension"].as_array().ok_or("no extension array")?;
        assert_eq!(ext.len(), 2, "{json}");
        assert_eq!(ext[0]["valueString"], "fqhc-demo");
        assert_eq!(ext[1]["url"], PREVIOUS_HASH_EXTENSION);
        assert_eq!(ext[1]["valueString"], GENESIS_HASH);
        Ok(())
    }

    #[test]
    fn text_that_does_not_end_with_its_extension_array_is_refused() {
        for event in [
            "",
            "{}",
            r#"{"extension":[],"id":"a"}"#,
            r#"{"entity":[{"a":1}]}"#,
            r#"{"id":"a","extension":[{"url":"x"}],"entity":[{"a":1}]}"#,
            r#"{"id":"a","extension":[{"url":"x"}],"source":{"observer":[{"a":1}]}}"#,
        ] {
            assert!(matches!(with_previous_hash(event.to_string(), GENESIS_HASH), Err(StoreError::Corrupt(_))), "{event}");
        }
    }
}
