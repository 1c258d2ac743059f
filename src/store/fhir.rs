//! FHIR resources: versioned writes inside the intake transaction, read, vread, history and
//! keyset-paged search over the `fhir_search` index.
//!
//! Writes are set-based: the resources of every session version in a job are compared with the
//! stored ones in a few `IN (...)` reads, and only changed resources get a new version, written
//! with multi-row inserts. Unchanged content (same SHA-256) writes nothing but the LEA link.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

use super::{Store, StoreError, with_db};
use crate::fhir::resource::PreparedResource;
use crate::fhir::search::{Criterion, Cursor, DateCmp, Prefix, SearchRequest, Sort, TokenValue};

/// Maps a session version again for another version number (the mapping reads it).
pub type Remap = Arc<dyn Fn(i64) -> Result<Vec<PreparedResource>, String> + Send + Sync>;

/// The FHIR resources of one session version, mapped before the write assuming a version
/// number; if the write finds another version number, `remap` maps again.
#[derive(Clone)]
pub struct SessionResources {
    /// The version the resources were mapped for.
    pub assumed_version: i64,
    /// The resources.
    pub resources: Vec<PreparedResource>,
    /// Maps for another version.
    pub remap: Remap,
}

impl std::fmt::Debug for SessionResources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionResources")
            .field("assumed_version", &self.assumed_version)
            .field("resources", &self.resources.len())
            .finish()
    }
}

/// Resources of one stored session version, for the write.
pub(crate) struct FhirWrite<'a> {
    pub(crate) session_id: &'a str,
    pub(crate) session_version: i64,
    pub(crate) lea: &'a str,
    pub(crate) amended: bool,
    /// Receipt of the session version: the resources' `meta.lastUpdated`.
    pub(crate) received_at: DateTime<Utc>,
    pub(crate) resources: std::borrow::Cow<'a, [PreparedResource]>,
}

/// A value bound into dynamically built SQL.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
    OptInt(Option<i64>),
    Bool(bool),
    Time(DateTime<Utc>),
    Bytes(Vec<u8>),
}

/// Binds every value of `$binds` onto `$q` (either backend).
macro_rules! bind_all {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                $crate::store::fhir::Bind::Text(s) => q.bind(s.as_str()),
                $crate::store::fhir::Bind::OptText(s) => q.bind(s.as_deref()),
                $crate::store::fhir::Bind::Int(i) => q.bind(*i),
                $crate::store::fhir::Bind::OptInt(i) => q.bind(*i),
                $crate::store::fhir::Bind::Bool(b) => q.bind(*b),
                $crate::store::fhir::Bind::Time(t) => q.bind(*t),
                $crate::store::fhir::Bind::Bytes(b) => q.bind(b.as_slice()),
            };
        }
        q
    }};
}
pub(crate) use bind_all;

/// As [`bind_all!`] for owned values, which are moved into the statement's arguments: sqlx-sqlite
/// copies a borrowed `&str` or `&[u8]` into an argument of its own, so binding a write's rows by
/// reference copied every resource text once more than needed (SQLite copies it again on bind).
macro_rules! bind_owned {
    ($q:expr, $binds:expr) => {{
        let mut q = $q;
        for b in $binds {
            q = match b {
                $crate::store::fhir::Bind::Text(s) => q.bind(s),
                $crate::store::fhir::Bind::OptText(s) => q.bind(s),
                $crate::store::fhir::Bind::Int(i) => q.bind(i),
                $crate::store::fhir::Bind::OptInt(i) => q.bind(i),
                $crate::store::fhir::Bind::Bool(b) => q.bind(b),
                $crate::store::fhir::Bind::Time(t) => q.bind(t),
                $crate::store::fhir::Bind::Bytes(b) => q.bind(b),
            };
        }
        q
    }};
}
pub(crate) use bind_owned;

/// The verb of a multi-row write: on SQLite `INSERT OR ROLLBACK`. With the default conflict
/// action (ABORT) SQLite must be able to undo one statement inside the transaction, so every
/// multi-row insert after the transaction's first copied each page it touched into a statement
/// journal (16 KiB per page; the search-value index touches pages all over): 20% of the intake
/// writer's time. ROLLBACK needs no statement journal, since a violation ends the whole
/// transaction, which SQLite then rolls back itself; a connection that ran one is therefore
/// closed after any failed write (see [`super::sqlite_write`]), because sqlx still counts it as
/// inside the transaction. Foreign-key checks still abort the statement as before.
pub(crate) fn insert_verb(positional: bool) -> &'static str {
    if positional { "INSERT OR ROLLBACK INTO" } else { "INSERT INTO" }
}

/// Most bound values per statement (SQLite allows 32,766, PostgreSQL 65,535).
pub(crate) const MAX_BINDS: usize = 8_000;

/// Whether a dynamically built statement with `binds` bound values is kept prepared in the
/// connection's statement cache. Small statements repeat (a single-session request writes the
/// same shapes every time) and are worth preparing once; large multi-row ones vary in row count
/// and a cache of them grew the import's memory by hundreds of MB.
pub(crate) fn cache_statement(binds: usize) -> bool {
    binds <= 256
}

/// Rows (keys) per statement of the writer's `IN (...)` lookups and deletes.
pub(crate) const IN_CHUNK: usize = 500;

/// Whether a statement over one chunk of rows is kept prepared: small ones (see
/// [`cache_statement`]) and, on SQLite, full chunks, whose text is the same for every full chunk
/// of that statement (one large prepared statement per call site on the writer's connection; a
/// batch's rows fill many full chunks and parsing each chunk's SQL text again cost ~6% of
/// intake). Remainder chunks vary and are not kept. PostgreSQL keeps them unnamed: every pool
/// connection would hold a server-side copy of each. `sqlite`: the transaction's backend is SQLite
/// (see [`positional`]).
pub(crate) fn cache_chunk(rows: usize, full: usize, binds_per_row: usize, sqlite: bool) -> bool {
    (sqlite && rows == full) || cache_statement(rows * binds_per_row)
}

/// How a backend numbers bound parameters in dynamically built SQL.
///
/// SQLite gets anonymous `?`: sqlx binds `$N` parameters on SQLite by looking each name up with
/// `sqlite3_bind_parameter_name`, a linear scan, so a statement with n `$N` parameters costs
/// O(n^2) (measured: 59% of intake time with 8,000-parameter inserts). PostgreSQL needs `$N`.
pub(crate) trait Placeholders {
    /// `true`: `?`; `false`: `$N`.
    const POSITIONAL: bool;
}

impl Placeholders for sqlx::Sqlite {
    const POSITIONAL: bool = true;
}

impl Placeholders for sqlx::Postgres {
    const POSITIONAL: bool = false;
}

/// Whether SQL for this transaction's backend uses `?` placeholders.
pub(crate) fn positional<DB: sqlx::Database + Placeholders>(_: &sqlx::Transaction<'_, DB>) -> bool {
    DB::POSITIONAL
}

/// `($1, $2, ...), (...)` (or `(?, ?, ...)`) for `rows` rows of `cols` columns.
pub(crate) fn values_sql(rows: usize, cols: usize, positional: bool) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            if positional {
                s.push('?');
            } else {
                s.push('$');
                s.push_str(&(r * cols + c + 1).to_string());
            }
        }
        s.push(')');
    }
    s
}

/// `$first, ..., $(first+n-1)` (or `?, ...`).
pub(crate) fn placeholders(first: usize, n: usize, positional: bool) -> String {
    (first..first + n).map(|i| if positional { "?".to_string() } else { format!("${i}") }).collect::<Vec<_>>().join(", ")
}

/// Runs `INSERT INTO $table ($cols) VALUES ... $tail` (`INSERT OR ROLLBACK` on SQLite, see
/// [`insert_verb`]) over `$rows` (each a `Vec<Bind>`, moved into the statements) in chunks.
macro_rules! insert_rows {
    ($tx:expr, $table_cols:expr, $ncols:expr, $rows:expr, $tail:expr) => {{
        let rows: Vec<Vec<$crate::store::fhir::Bind>> = $rows;
        let positional = $crate::store::fhir::positional(&*$tx);
        let per = ($crate::store::fhir::MAX_BINDS / $ncols).max(1);
        let mut left = rows.len();
        let mut rows = rows.into_iter();
        while left > 0 {
            let n = left.min(per);
            left -= n;
            let sql = format!(
                "{} {} VALUES {} {}",
                $crate::store::fhir::insert_verb(positional),
                $table_cols,
                $crate::store::fhir::values_sql(n, $ncols, positional),
                $tail
            );
            let cache = $crate::store::fhir::cache_chunk(n, per, $ncols, positional);
            let q =
                $crate::store::fhir::bind_owned!(sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(cache), rows.by_ref().take(n).flatten());
            q.execute(&mut **$tx).await?;
        }
    }};
}
pub(crate) use insert_rows;

/// The current state of a stored resource during a write.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub(crate) rid: Option<i64>,
    pub(crate) version_id: i64,
    pub(crate) sha: String,
    pub(crate) deleted: bool,
}

type Key = (String, String);

/// A resource version to insert, keyed by `(type, id)` until the resource's `rid` is known.
pub(crate) struct VersionRow {
    key: Key,
    version_id: i64,
    deleted: bool,
    session_id: String,
    session_version: i64,
    last_updated_us: i64,
    content: String,
}

/// Everything a job's FHIR write does, computed in memory from the stored state.
#[derive(Default)]
pub(crate) struct FhirPlan<'a> {
    /// New versions.
    pub(crate) versions: Vec<VersionRow>,
    /// Upserts of `fhir_resources` (type, id, version, last updated, sha, deleted).
    pub(crate) currents: Vec<Vec<Bind>>,
    /// Stored resources whose index rows are replaced.
    pub(crate) reindex: Vec<i64>,
    /// Index rows of changed resources: key, sequence number, entry.
    pub(crate) index: Vec<(Key, i64, &'a crate::fhir::search::IndexEntry)>,
    /// Resource -> LEA links.
    pub(crate) links: BTreeSet<(Key, &'a str)>,
    /// Amended sessions whose owned resources are listed again.
    pub(crate) owned_sessions: Vec<String>,
    /// Session -> owned resource.
    pub(crate) owned: Vec<(String, Key)>,
}

impl FhirPlan<'_> {
    /// The change-feed rows (`fhir_changes`, the subscriptions' outbox): one per new Encounter
    /// version.
    pub(crate) fn changes(&self) -> Vec<Vec<Bind>> {
        self.versions
            .iter()
            .filter(|v| v.key.0 == "Encounter")
            .map(|v| vec![Bind::Text(v.key.0.clone()), Bind::Text(v.key.1.clone()), Bind::Int(v.version_id), Bind::Int(v.last_updated_us)])
            .collect()
    }

    /// The version rows to insert once every resource's `rid` is known (their contents move out).
    pub(crate) fn version_rows(&mut self, rids: &HashMap<Key, i64>) -> Vec<Vec<Bind>> {
        let rid = |k: &Key| Bind::Int(rids.get(k).copied().unwrap_or_default());
        self.versions
            .iter_mut()
            .map(|v| {
                vec![
                    rid(&v.key),
                    Bind::Int(v.version_id),
                    Bind::Int(v.last_updated_us),
                    Bind::Bool(v.deleted),
                    Bind::Text(v.session_id.clone()),
                    Bind::Int(v.session_version),
                    Bind::Text(std::mem::take(&mut v.content)),
                ]
            })
            .collect()
    }

    /// The other rows to insert once every resource's `rid` is known: index, links, owned.
    pub(crate) fn rows(&self, rids: &HashMap<Key, i64>) -> [Vec<Vec<Bind>>; 3] {
        let rid = |k: &Key| Bind::Int(rids.get(k).copied().unwrap_or_default());
        let index = self
            .index
            .iter()
            .map(|(k, seq, e)| {
                vec![
                    rid(k),
                    Bind::Text(e.param.clone()),
                    Bind::Int(*seq),
                    Bind::Text(k.0.clone()),
                    Bind::OptText(e.system.clone()),
                    Bind::OptText(e.value.clone()),
                    Bind::OptInt(e.lo),
                    Bind::OptInt(e.hi),
                ]
            })
            .collect();
        let links = self.links.iter().map(|(k, lea)| vec![rid(k), Bind::Text((*lea).to_string())]).collect();
        let owned = self.owned.iter().map(|(s, k)| vec![Bind::Text(s.clone()), rid(k)]).collect();
        [index, links, owned]
    }
}

/// Plans the write of `writes` (in order) given the stored state `state` and each amended
/// session's previously owned resources `prev_owned`.
pub(crate) fn plan<'a>(
    writes: &'a [FhirWrite<'a>],
    mut state: HashMap<Key, Current>,
    prev_owned: &HashMap<String, Vec<Key>>,
) -> FhirPlan<'a> {
    let mut plan = FhirPlan::default();
    // Final state of every changed key: Some(resource) or None when deleted, and its time.
    let mut finals: BTreeMap<Key, (Option<&PreparedResource>, i64)> = BTreeMap::new();
    let mut lu_text = (i64::MIN, String::new());
    for w in writes {
        let lu = w.received_at.timestamp_micros();
        if lu_text.0 != lu {
            lu_text = (lu, w.received_at.to_rfc3339_opts(SecondsFormat::Micros, true));
        }
        let mut owned_now: BTreeSet<Key> = BTreeSet::new();
        for res in w.resources.iter() {
            let key = (res.resource_type.clone(), res.id.clone());
            plan.links.insert((key.clone(), w.lea));
            if res.owned {
                owned_now.insert(key.clone());
            }
            let cur = state.entry(key.clone()).or_insert(Current { rid: None, version_id: 0, sha: String::new(), deleted: false });
            if cur.version_id > 0 && !cur.deleted && cur.sha == res.content_sha256 {
                continue;
            }
            cur.version_id += 1;
            cur.sha.clone_from(&res.content_sha256);
            cur.deleted = false;
            plan.versions.push(VersionRow {
                key: key.clone(),
                version_id: cur.version_id,
                deleted: false,
                session_id: w.session_id.to_string(),
                session_version: w.session_version,
                last_updated_us: lu,
                content: res.versioned_json(cur.version_id, &lu_text.1),
            });
            finals.insert(key, (Some(res), lu));
        }
        if w.amended {
            for key in prev_owned.get(w.session_id).map(Vec::as_slice).unwrap_or_default() {
                if owned_now.contains(key) {
                    continue;
                }
                let Some(cur) = state.get_mut(key) else { continue };
                if cur.deleted {
                    continue;
                }
                cur.version_id += 1;
                cur.deleted = true;
                plan.versions.push(VersionRow {
                    key: key.clone(),
                    version_id: cur.version_id,
                    deleted: true,
                    session_id: w.session_id.to_string(),
                    session_version: w.session_version,
                    last_updated_us: lu,
                    content: String::new(),
                });
                finals.insert(key.clone(), (None, lu));
            }
            plan.owned_sessions.push(w.session_id.to_string());
        }
        for key in owned_now {
            plan.owned.push((w.session_id.to_string(), key));
        }
    }
    for (key, (res, lu)) in finals {
        let Some(cur) = state.get(&key) else { continue };
        plan.currents.push(vec![
            Bind::Text(key.0.clone()),
            Bind::Text(key.1.clone()),
            Bind::Int(cur.version_id),
            Bind::Int(lu),
            Bind::Text(cur.sha.clone()),
            Bind::Bool(cur.deleted),
        ]);
        if let Some(rid) = cur.rid {
            plan.reindex.push(rid);
        }
        if let Some(res) = res {
            for (seq, e) in res.index.iter().enumerate() {
                plan.index.push((key.clone(), i64::try_from(seq).unwrap_or(i64::MAX), e));
            }
        }
    }
    plan
}

/// Writes the FHIR resources of `$writes` (a `&[FhirWrite]`, in order) inside the open
/// transaction `$tx`; `?` propagates database errors.
macro_rules! apply_fhir {
    ($tx:expr, $writes:expr) => {{
        use $crate::store::fhir::{Current, placeholders};
        let pos = $crate::store::fhir::positional(&*$tx);
        let writes: &[$crate::store::fhir::FhirWrite<'_>] = $writes;
        if !writes.is_empty() {
            // 1. The stored state of every resource the job touches.
            let mut by_type: std::collections::BTreeMap<&str, std::collections::BTreeSet<&str>> = Default::default();
            for w in writes {
                for r in w.resources.iter() {
                    by_type.entry(r.resource_type.as_str()).or_default().insert(r.id.as_str());
                }
            }
            let mut amended: Vec<&str> = writes.iter().filter(|w| w.amended).map(|w| w.session_id).collect();
            amended.sort_unstable();
            amended.dedup();
            let mut prev_owned: std::collections::HashMap<String, Vec<(String, String)>> = Default::default();
            for chunk in amended.chunks($crate::store::fhir::IN_CHUNK) {
                let sql = format!(
                    "SELECT s.session_id, r.resource_type, r.id FROM fhir_session_resources s JOIN fhir_resources r ON r.rid = s.rid \
                     WHERE s.session_id IN ({})",
                    placeholders(1, chunk.len(), pos)
                );
                let mut q = sqlx::query_as::<_, (String, String, String)>(sqlx::AssertSqlSafe(sql))
                    .persistent($crate::store::fhir::cache_chunk(chunk.len(), $crate::store::fhir::IN_CHUNK, 1, pos));
                for s in chunk {
                    q = q.bind(*s);
                }
                for (s, ty, id) in q.fetch_all(&mut **$tx).await? {
                    prev_owned.entry(s).or_default().push((ty, id));
                }
            }
            let mut wanted: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
            for (ty, ids) in &by_type {
                wanted.entry(ty.to_string()).or_default().extend(ids.iter().map(|s| s.to_string()));
            }
            for keys in prev_owned.values() {
                for (ty, id) in keys {
                    wanted.entry(ty.clone()).or_default().insert(id.clone());
                }
            }
            let mut state: std::collections::HashMap<(String, String), Current> = Default::default();
            for (ty, ids) in &wanted {
                let ids: Vec<&String> = ids.iter().collect();
                for chunk in ids.chunks($crate::store::fhir::IN_CHUNK) {
                    let sql = format!(
                        "SELECT rid, id, version_id, content_sha256, deleted FROM fhir_resources WHERE resource_type = {} AND id IN ({})",
                        placeholders(1, 1, pos),
                        placeholders(2, chunk.len(), pos)
                    );
                    let mut q = sqlx::query_as::<_, (i64, String, i64, String, bool)>(sqlx::AssertSqlSafe(sql))
                        .persistent($crate::store::fhir::cache_chunk(chunk.len(), $crate::store::fhir::IN_CHUNK, 1, pos))
                        .bind(ty.as_str());
                    for id in chunk {
                        q = q.bind(id.as_str());
                    }
                    for (rid, id, version_id, sha, deleted) in q.fetch_all(&mut **$tx).await? {
                        state.insert((ty.clone(), id), Current { rid: Some(rid), version_id, sha, deleted });
                    }
                }
            }
            let mut rids: std::collections::HashMap<(String, String), i64> =
                state.iter().filter_map(|(k, c)| c.rid.map(|r| (k.clone(), r))).collect();
            // 2. What changes, in memory.
            let mut plan = $crate::store::fhir::plan(writes, state, &prev_owned);
            // 3. Set-based writes: the current pointers first, which allocates new resources' rids.
            let per = $crate::store::fhir::MAX_BINDS / 6;
            for chunk in plan.currents.chunks(per) {
                let sql = format!(
                    "{} fhir_resources (resource_type, id, version_id, last_updated_us, content_sha256, deleted) VALUES {} \
                     ON CONFLICT (resource_type, id) DO UPDATE SET version_id = excluded.version_id, \
                     last_updated_us = excluded.last_updated_us, content_sha256 = excluded.content_sha256, deleted = excluded.deleted \
                     RETURNING rid, resource_type, id",
                    $crate::store::fhir::insert_verb(pos),
                    $crate::store::fhir::values_sql(chunk.len(), 6, pos)
                );
                let q = $crate::store::fhir::bind_all!(
                    sqlx::query_as::<_, (i64, String, String)>(sqlx::AssertSqlSafe(sql)).persistent($crate::store::fhir::cache_chunk(
                        chunk.len(),
                        per,
                        6,
                        pos
                    )),
                    chunk.iter().flatten()
                );
                for (rid, ty, id) in q.fetch_all(&mut **$tx).await? {
                    rids.insert((ty, id), rid);
                }
            }
            let changes = plan.changes();
            $crate::store::fhir::insert_rows!($tx, "fhir_changes (resource_type, id, version_id, changed_us)", 4, changes, "");
            let versions = plan.version_rows(&rids);
            // The other rows are built while the database writes the versions (the writer's
            // own work otherwise waits for each statement, and each statement for it).
            let (written, [index, links, owned]) = tokio::join!(
                async {
                    $crate::store::fhir::insert_rows!(
                        $tx,
                        "fhir_resource_versions (rid, version_id, last_updated_us, deleted, session_id, session_version, content)",
                        7,
                        versions,
                        ""
                    );
                    Ok::<(), $crate::store::StoreError>(())
                },
                async { plan.rows(&rids) }
            );
            written?;
            for chunk in plan.reindex.chunks($crate::store::fhir::IN_CHUNK) {
                let sql = format!("DELETE FROM fhir_search WHERE rid IN ({})", placeholders(1, chunk.len(), pos));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent($crate::store::fhir::cache_chunk(
                    chunk.len(),
                    $crate::store::fhir::IN_CHUNK,
                    1,
                    pos,
                ));
                for rid in chunk {
                    q = q.bind(*rid);
                }
                q.execute(&mut **$tx).await?;
            }
            $crate::store::fhir::insert_rows!(
                $tx,
                "fhir_search (rid, param, seq, resource_type, system, value, lo_us, hi_us)",
                8,
                index,
                ""
            );
            $crate::store::fhir::insert_rows!($tx, "fhir_resource_leas (rid, lea_id)", 2, links, "ON CONFLICT DO NOTHING");
            for chunk in plan.owned_sessions.chunks($crate::store::fhir::IN_CHUNK) {
                let sql = format!("DELETE FROM fhir_session_resources WHERE session_id IN ({})", placeholders(1, chunk.len(), pos));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent($crate::store::fhir::cache_chunk(
                    chunk.len(),
                    $crate::store::fhir::IN_CHUNK,
                    1,
                    pos,
                ));
                for s in chunk {
                    q = q.bind(s.as_str());
                }
                q.execute(&mut **$tx).await?;
            }
            $crate::store::fhir::insert_rows!($tx, "fhir_session_resources (session_id, rid)", 2, owned, "ON CONFLICT DO NOTHING");
        }
    }};
}
pub(crate) use apply_fhir;

/// One stored resource version.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredResource {
    /// Resource type.
    pub resource_type: String,
    /// Id.
    pub id: String,
    /// Version.
    pub version_id: i64,
    /// When this version was written (µs since the epoch).
    pub last_updated_us: i64,
    /// A deletion (no content).
    pub deleted: bool,
    /// The JSON (empty for a deletion).
    pub content: String,
}

/// A resource with its storage key ([`Store::fhir_scan`] on PostgreSQL).
#[derive(sqlx::FromRow)]
struct ScanRow {
    rid: i64,
    #[sqlx(flatten)]
    resource: StoredResource,
}

impl StoredResource {
    /// `meta.lastUpdated` as a time.
    pub fn last_updated(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.last_updated_us).unwrap_or_default()
    }
}

/// One page of search results.
#[derive(Debug, Clone)]
pub struct SearchPage {
    /// Matches, in order.
    pub matches: Vec<StoredResource>,
    /// Where the next page starts, when there is one.
    pub next: Option<Cursor>,
}

/// Who is reading: `None` reads everything (admin); `Some(lea)` only resources that LEA's
/// sessions produced.
pub type ReadScope<'a> = Option<&'a str>;

const SELECT_RESOURCE: &str = "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, v.content \
     FROM fhir_resources r JOIN fhir_resource_versions v ON v.rid = r.rid AND v.version_id = r.version_id";

/// The resources of a page read as one row on SQLite ([`Store::fhir_search`]): `keys` is a JSON
/// array of `[type, id, version, lastUpdated µs, deleted, content bytes]`, `contents` the contents
/// one after the other.
fn split_page(keys: &str, contents: &str) -> Result<Vec<StoredResource>, StoreError> {
    let keys: Vec<(String, String, i64, i64, i64, usize)> =
        serde_json::from_str(keys).map_err(|e| StoreError::Corrupt(format!("a page of resources is unreadable: {e}")))?;
    let lengths: Vec<usize> = keys.iter().map(|k| k.5).collect();
    let texts = split_lengths(&lengths, contents)?;
    Ok(keys
        .into_iter()
        .zip(texts)
        .map(|((resource_type, id, version_id, last_updated_us, deleted, _), content)| StoredResource {
            resource_type,
            id,
            version_id,
            last_updated_us,
            deleted: deleted != 0,
            content: content.to_string(),
        })
        .collect())
}

/// Texts concatenated by SQLite's `group_concat(x, '')`, cut at their lengths in bytes (from
/// `length(CAST(x AS BLOB))` in the same row). A cut off a character boundary, or bytes left
/// over, is an error.
pub(crate) fn split_lengths<'a>(lengths: &[usize], mut rest: &'a str) -> Result<Vec<&'a str>, StoreError> {
    let mut out = Vec::with_capacity(lengths.len());
    for (i, &len) in lengths.iter().enumerate() {
        let (Some(text), Some(after)) = (rest.get(..len), rest.get(len..)) else {
            return Err(StoreError::Corrupt(format!("text {i} of a concatenated result does not end where its length says")));
        };
        out.push(text);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(StoreError::Corrupt("a concatenated result holds more text than its lengths account for".into()));
    }
    Ok(out)
}

const IN_SCOPE: &str = "EXISTS (SELECT 1 FROM fhir_resource_leas l WHERE l.rid = r.rid AND l.lea_id = ";

/// Builds the WHERE clause and binds of a search.
struct SqlBuilder {
    sql: String,
    binds: Vec<Bind>,
}

impl SqlBuilder {
    fn bind(&mut self, b: Bind) -> String {
        self.binds.push(b);
        format!("${}", self.binds.len())
    }

    fn date_cond(&mut self, lo_col: &str, hi_col: &str, c: &DateCmp) -> String {
        let (lo, hi) = (c.lo, c.hi);
        match c.prefix {
            Prefix::Eq => format!("({lo_col} >= {} AND {hi_col} <= {})", self.bind(Bind::Int(lo)), self.bind(Bind::Int(hi))),
            Prefix::Ne => format!("NOT ({lo_col} >= {} AND {hi_col} <= {})", self.bind(Bind::Int(lo)), self.bind(Bind::Int(hi))),
            Prefix::Gt => format!("{hi_col} > {}", self.bind(Bind::Int(hi))),
            Prefix::Lt => format!("{lo_col} < {}", self.bind(Bind::Int(lo))),
            Prefix::Ge => format!("{hi_col} >= {}", self.bind(Bind::Int(lo))),
            Prefix::Le => format!("{lo_col} <= {}", self.bind(Bind::Int(hi))),
            Prefix::Sa => format!("{lo_col} > {}", self.bind(Bind::Int(hi))),
            Prefix::Eb => format!("{hi_col} < {}", self.bind(Bind::Int(lo))),
        }
    }

    fn token_cond(&mut self, t: &TokenValue) -> String {
        let mut parts = Vec::new();
        if let Some(code) = &t.code {
            parts.push(format!("s.value = {}", self.bind(Bind::Text(code.clone()))));
        }
        match &t.system {
            None => {}
            Some(None) => parts.push("s.system IS NULL".into()),
            Some(Some(sys)) => parts.push(format!("s.system = {}", self.bind(Bind::Text(sys.clone())))),
        }
        format!("({})", parts.join(" AND "))
    }

    /// The index condition of a criterion on `fhir_search s` (without type/id correlation).
    fn index_cond(&mut self, c: &Criterion) -> Option<(String, String)> {
        let (param, alts): (&str, Vec<String>) = match c {
            Criterion::Ids(_) | Criterion::LastUpdated(_) => return None,
            Criterion::Token(p, vals) => (p, vals.iter().map(|t| self.token_cond(t)).collect()),
            Criterion::Reference(p, vals) => (p, vals.iter().map(|v| format!("s.value = {}", self.bind(Bind::Text(v.clone())))).collect()),
            Criterion::String(p, vals) => (
                p,
                vals.iter()
                    .map(|v| {
                        let lo = self.bind(Bind::Text(v.clone()));
                        let hi = self.bind(Bind::Text(format!("{v}\u{10FFFF}")));
                        format!("(s.value >= {lo} AND s.value < {hi})")
                    })
                    .collect(),
            ),
            Criterion::Date(p, cmps) => {
                let alts: Vec<String> = cmps.iter().map(|d| self.date_cond("s.lo_us", "s.hi_us", d)).collect();
                let p = self.bind(Bind::Text(p.to_string()));
                return Some((format!("s.param = {p}"), format!("({})", alts.join(" OR "))));
            }
        };
        // Values are never NULL on these rows; saying so lets the database use the partial
        // value index (which leaves out the value-less date rows).
        let p = self.bind(Bind::Text(param.to_string()));
        Some((format!("s.param = {p} AND s.value IS NOT NULL"), format!("({})", alts.join(" OR "))))
    }

    /// A criterion as a condition on `fhir_resources r`. `drive` writes it as `r.rid IN (...)`
    /// so the database starts from the index; otherwise a correlated EXISTS.
    fn criterion(&mut self, c: &Criterion, drive: Option<&str>) -> String {
        match c {
            Criterion::Ids(ids) => {
                let list: Vec<String> = ids.iter().map(|i| self.bind(Bind::Text(i.clone()))).collect();
                match drive {
                    Some(ty) => format!("(r.resource_type = {} AND r.id IN ({}))", self.bind(Bind::Text(ty.to_string())), list.join(", ")),
                    None => format!("r.id IN ({})", list.join(", ")),
                }
            }
            Criterion::LastUpdated(cmps) => {
                let alts: Vec<String> = cmps.iter().map(|d| self.date_cond("r.last_updated_us", "r.last_updated_us", d)).collect();
                format!("({})", alts.join(" OR "))
            }
            _ => {
                let Some((param, alts)) = self.index_cond(c) else { return "1 = 1".into() };
                if let Some(ty) = drive {
                    let ty = self.bind(Bind::Text(ty.to_string()));
                    format!("r.rid IN (SELECT s.rid FROM fhir_search s WHERE s.resource_type = {ty} AND {param} AND {alts})")
                } else {
                    format!("EXISTS (SELECT 1 FROM fhir_search s WHERE s.rid = r.rid AND {param} AND {alts})")
                }
            }
        }
    }
}

/// Whether a criterion narrows a search enough to drive it from the index.
fn selective(c: &Criterion) -> bool {
    match c {
        Criterion::Ids(_) | Criterion::Reference(..) | Criterion::String(..) => true,
        Criterion::Token(p, _) => p != "status",
        Criterion::LastUpdated(_) | Criterion::Date(..) => false,
    }
}

fn where_clause(req: &SearchRequest, scope: ReadScope<'_>, with_cursor: bool) -> SqlBuilder {
    let mut b = SqlBuilder { sql: String::new(), binds: Vec::new() };
    let driver = req.criteria.iter().position(selective);
    let mut conds = vec!["NOT r.deleted".to_string()];
    // With a driving index criterion the type is already fixed by it; naming it again here
    // tempted SQLite to walk every resource of the type in id order instead of looking the
    // matches up by rid.
    if driver.is_none() {
        let ty = b.bind(Bind::Text(req.resource_type.clone()));
        conds.insert(0, format!("r.resource_type = {ty}"));
    }
    for (i, c) in req.criteria.iter().enumerate() {
        let cond = b.criterion(c, (Some(i) == driver).then_some(req.resource_type.as_str()));
        conds.push(cond);
    }
    if let Some(lea) = scope {
        let p = b.bind(Bind::Text(lea.to_string()));
        conds.push(format!("{IN_SCOPE}{p})"));
    }
    if with_cursor && let Some(c) = &req.cursor {
        let cond = match (req.sort, c.last_updated) {
            (Sort::LastUpdated, Some(t)) => {
                let (t, id) = (b.bind(Bind::Int(t)), b.bind(Bind::Text(c.id.clone())));
                format!("(r.last_updated_us > {t} OR (r.last_updated_us = {t} AND r.id > {id}))")
            }
            (Sort::LastUpdatedDesc, Some(t)) => {
                let (t, id) = (b.bind(Bind::Int(t)), b.bind(Bind::Text(c.id.clone())));
                format!("(r.last_updated_us < {t} OR (r.last_updated_us = {t} AND r.id < {id}))")
            }
            _ => format!("r.id > {}", b.bind(Bind::Text(c.id.clone()))),
        };
        conds.push(cond);
    }
    b.sql = conds.join(" AND ");
    b
}

impl Store {
    /// The current version of a resource (deleted ones too: the caller answers 410).
    pub async fn fhir_read(&self, resource_type: &str, id: &str, scope: ReadScope<'_>) -> Result<Option<StoredResource>, StoreError> {
        let sql = format!("{SELECT_RESOURCE} WHERE r.resource_type = $1 AND r.id = $2 AND ($3 IS NULL OR {IN_SCOPE}$3))");
        let row = with_db!(self.db(), pool => {
            sqlx::query_as::<_, StoredResource>(sqlx::AssertSqlSafe(sql)).bind(resource_type).bind(id).bind(scope).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// One version of a resource.
    pub async fn fhir_vread(
        &self,
        resource_type: &str,
        id: &str,
        version_id: i64,
        scope: ReadScope<'_>,
    ) -> Result<Option<StoredResource>, StoreError> {
        let sql = format!(
            "SELECT r.resource_type, r.id, v.version_id, v.last_updated_us, v.deleted, v.content FROM fhir_resource_versions v \
             JOIN fhir_resources r ON r.rid = v.rid \
             WHERE r.resource_type = $1 AND r.id = $2 AND v.version_id = $3 AND ($4 IS NULL OR {IN_SCOPE}$4))"
        );
        let row = with_db!(self.db(), pool => {
            sqlx::query_as::<_, StoredResource>(sqlx::AssertSqlSafe(sql)).bind(resource_type).bind(id).bind(version_id).bind(scope).fetch_optional(pool).await?
        });
        Ok(row)
    }

    /// Versions of a resource, newest first, below `before` (exclusive) when given.
    pub async fn fhir_history(
        &self,
        resource_type: &str,
        id: &str,
        before: Option<i64>,
        limit: i64,
        scope: ReadScope<'_>,
    ) -> Result<Vec<StoredResource>, StoreError> {
        let sql = format!(
            "SELECT r.resource_type, r.id, v.version_id, v.last_updated_us, v.deleted, v.content FROM fhir_resource_versions v \
             JOIN fhir_resources r ON r.rid = v.rid \
             WHERE r.resource_type = $1 AND r.id = $2 AND ($3 IS NULL OR v.version_id < $3) AND ($4 IS NULL OR {IN_SCOPE}$4)) \
             ORDER BY v.version_id DESC LIMIT $5"
        );
        let rows = with_db!(self.db(), pool => {
            sqlx::query_as::<_, StoredResource>(sqlx::AssertSqlSafe(sql))
                .bind(resource_type)
                .bind(id)
                .bind(before)
                .bind(scope)
                .bind(limit)
                .fetch_all(pool)
                .await?
        });
        Ok(rows)
    }

    /// One page of a search.
    pub async fn fhir_search(&self, req: &SearchRequest, scope: ReadScope<'_>) -> Result<SearchPage, StoreError> {
        let mut b = where_clause(req, scope, true);
        let order = match req.sort {
            Sort::Id => "r.id",
            Sort::LastUpdated => "r.last_updated_us, r.id",
            Sort::LastUpdatedDesc => "r.last_updated_us DESC, r.id DESC",
        };
        let limit = b.bind(Bind::Int(i64::try_from(req.count).unwrap_or(i64::MAX).saturating_add(1)));
        let sql = format!("{SELECT_RESOURCE} WHERE {} ORDER BY {order} LIMIT {limit}", b.sql);
        let mut rows = match self.db() {
            // SQLite: the page as one row (sqlx hands each row of a SQLite result from the
            // connection's thread to the caller separately, copying it twice on the way, which
            // cost as much as the query on a bulk export): the resources' keys as a JSON array
            // with each content's length in bytes, and the contents one after the other.
            super::Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT json_group_array(json_array(p.resource_type, p.id, p.version_id, p.last_updated_us, p.deleted, \
                     length(CAST(p.content AS BLOB)))), group_concat(p.content, '') FROM ({sql}) p"
                );
                let (keys, contents): (String, Option<String>) =
                    bind_all!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), b.binds.iter()).fetch_one(pool).await?;
                let mut rows = split_page(&keys, contents.as_deref().unwrap_or_default())?;
                // (An aggregate's input order is not promised: the page is put in order again,
                // by the same byte-wise comparison as the query's.)
                match req.sort {
                    Sort::Id => rows.sort_by(|a, b| a.id.cmp(&b.id)),
                    Sort::LastUpdated => rows.sort_by(|a, b| (a.last_updated_us, &a.id).cmp(&(b.last_updated_us, &b.id))),
                    Sort::LastUpdatedDesc => rows.sort_by(|a, b| (b.last_updated_us, &b.id).cmp(&(a.last_updated_us, &a.id))),
                }
                rows
            }
            super::Db::Postgres(pool) => {
                bind_all!(sqlx::query_as::<_, StoredResource>(sqlx::AssertSqlSafe(sql)), b.binds.iter()).fetch_all(pool).await?
            }
        };
        let next = if rows.len() > req.count {
            rows.truncate(req.count);
            rows.last().map(|r| Cursor { last_updated: (req.sort != Sort::Id).then_some(r.last_updated_us), id: r.id.clone() })
        } else {
            None
        };
        Ok(SearchPage { matches: rows, next })
    }

    /// One page of a bulk export's pass in storage order: the current, non-deleted resources of
    /// `types` with a storage key (rid) above `after` and `_lastUpdated` at or before `until_us`,
    /// in rid order, each with its rid; and whether more follow. Rids are allocated in write
    /// order, so the tables are read front to back once (instead of once per type in
    /// `_lastUpdated` order) and a session's resources lie close together.
    pub async fn fhir_scan(
        &self,
        types: &[String],
        after: i64,
        until_us: i64,
        count: usize,
    ) -> Result<(Vec<(i64, StoredResource)>, bool), StoreError> {
        let limit = i64::try_from(count).unwrap_or(i64::MAX).saturating_add(1);
        let mut rows = match self.db() {
            super::Db::Sqlite(pool) => {
                // `+` keeps SQLite on the rid range: the type or time index would visit the rows
                // in another order and sort them. The page is read as a search page is (see
                // `fhir_search`), with the rids as a second array: the aggregates of one query
                // take the rows in the same order.
                let sql = format!(
                    "SELECT json_group_array(p.rid), json_group_array(json_array(p.resource_type, p.id, p.version_id, p.last_updated_us, p.deleted, \
                     length(CAST(p.content AS BLOB)))), group_concat(p.content, '') FROM (\
                     SELECT r.rid, r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, v.content \
                     FROM fhir_resources r JOIN fhir_resource_versions v ON v.rid = r.rid AND v.version_id = r.version_id \
                     WHERE r.rid > $1 AND +r.last_updated_us <= $2 AND NOT r.deleted AND +r.resource_type IN ({}) \
                     ORDER BY r.rid LIMIT $3) p",
                    placeholders(4, types.len(), false)
                );
                let mut q =
                    sqlx::query_as::<_, (String, String, Option<String>)>(sqlx::AssertSqlSafe(sql)).bind(after).bind(until_us).bind(limit);
                for t in types {
                    q = q.bind(t.as_str());
                }
                let (rids, keys, contents) = q.fetch_one(pool).await?;
                let rids: Vec<i64> =
                    serde_json::from_str(&rids).map_err(|e| StoreError::Corrupt(format!("a page of resources is unreadable: {e}")))?;
                let resources = split_page(&keys, contents.as_deref().unwrap_or_default())?;
                if rids.len() != resources.len() {
                    return Err(StoreError::Corrupt("a page of resources has more keys than resources, or fewer".into()));
                }
                let mut rows: Vec<(i64, StoredResource)> = rids.into_iter().zip(resources).collect();
                // (An aggregate's input order is not promised.)
                rows.sort_by_key(|(rid, _)| *rid);
                rows
            }
            super::Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT r.rid, r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, v.content \
                     FROM fhir_resources r JOIN fhir_resource_versions v ON v.rid = r.rid AND v.version_id = r.version_id \
                     WHERE r.rid > $1 AND r.last_updated_us <= $2 AND NOT r.deleted AND r.resource_type IN ({}) \
                     ORDER BY r.rid LIMIT $3",
                    placeholders(4, types.len(), false)
                );
                let mut q = sqlx::query_as::<_, ScanRow>(sqlx::AssertSqlSafe(sql)).bind(after).bind(until_us).bind(limit);
                for t in types {
                    q = q.bind(t.as_str());
                }
                q.fetch_all(pool).await?.into_iter().map(|r| (r.rid, r.resource)).collect()
            }
        };
        let more = rows.len() > count;
        rows.truncate(count);
        Ok((rows, more))
    }

    /// Number of matches of a search (`_summary=count`).
    pub async fn fhir_count(&self, req: &SearchRequest, scope: ReadScope<'_>) -> Result<i64, StoreError> {
        let b = where_clause(req, scope, false);
        let sql = format!("SELECT COUNT(*) FROM fhir_resources r WHERE {}", b.sql);
        let n = with_db!(self.db(), pool => {
            bind_all!(sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)), b.binds.iter()).fetch_one(pool).await?
        });
        Ok(n)
    }

    /// The `Type/id` values of reference parameter `param` on resources `ids` of `resource_type`.
    pub async fn fhir_references(&self, resource_type: &str, param: &str, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let sql = format!(
                "SELECT DISTINCT s.value FROM fhir_search s JOIN fhir_resources r ON r.rid = s.rid \
                 WHERE r.resource_type = $1 AND s.param = $2 AND r.id IN ({}) AND s.value IS NOT NULL",
                placeholders(3, chunk.len(), false)
            );
            let rows: Vec<String> = with_db!(self.db(), pool => {
                let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql)).bind(resource_type).bind(param);
                for id in chunk {
                    q = q.bind(id.as_str());
                }
                q.fetch_all(pool).await?
            });
            out.extend(rows);
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Current, non-deleted resources by `Type/id` (for `_include`), in scope.
    pub async fn fhir_read_many(&self, refs: &[String], scope: ReadScope<'_>) -> Result<Vec<StoredResource>, StoreError> {
        let mut by_type: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for r in refs {
            if let Some((ty, id)) = r.split_once('/') {
                by_type.entry(ty).or_default().push(id);
            }
        }
        let mut out = Vec::new();
        for (ty, ids) in by_type {
            for chunk in ids.chunks(100) {
                let scope_at = chunk.len() + 2;
                let sql = format!(
                    "{SELECT_RESOURCE} WHERE r.resource_type = $1 AND NOT r.deleted AND r.id IN ({}) AND (${scope_at} IS NULL OR {IN_SCOPE}${scope_at})) ORDER BY r.id",
                    placeholders(2, chunk.len(), false)
                );
                let rows = with_db!(self.db(), pool => {
                    let mut q = sqlx::query_as::<_, StoredResource>(sqlx::AssertSqlSafe(sql)).bind(ty);
                    for id in chunk {
                        q = q.bind(*id);
                    }
                    q.bind(scope).fetch_all(pool).await?
                });
                out.extend(rows);
            }
        }
        Ok(out)
    }

    /// Number of stored resources of a type (current, not deleted).
    pub async fn fhir_count_type(&self, resource_type: &str) -> Result<i64, StoreError> {
        let n = with_db!(self.db(), pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM fhir_resources WHERE resource_type = $1 AND NOT deleted")
                .bind(resource_type)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{split_lengths, split_page};

    #[test]
    fn concatenated_texts_are_cut_at_their_byte_lengths() {
        // Multi-byte characters: lengths are bytes, as SQLite's length(CAST(x AS BLOB)).
        let texts = ["{\"a\":\"é\"}", "", "{\"b\":\"€✓\"}"];
        let joined = texts.concat();
        let lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
        assert_eq!(split_lengths(&lengths, &joined).expect("cut"), texts);
        assert!(split_lengths(&[5], "{\"a\":\"é\"}").is_err(), "bytes left over");
        assert!(split_lengths(&[20], "{\"a\":1}").is_err(), "too short");
        assert!(split_lengths(&[7], "{\"a\":\"é\"}").is_err(), "inside a character");
        assert!(split_lengths(&[], "").expect("empty").is_empty());
    }

    #[test]
    fn a_page_read_as_one_row_gives_back_each_resource() {
        let a = r#"{"resourceType":"Patient","id":"p1"}"#;
        let b = r#"{"resourceType":"Patient","id":"p2","name":[{"family":"Ñúñez"}]}"#;
        let keys = format!(r#"[["Patient","p1",1,10,0,{}],["Patient","p2",3,11,1,{}]]"#, a.len(), b.len());
        let page = split_page(&keys, &format!("{a}{b}")).expect("page");
        assert_eq!(page.len(), 2);
        assert_eq!((page[0].id.as_str(), page[0].content.as_str(), page[0].deleted), ("p1", a, false));
        assert_eq!((page[1].version_id, page[1].last_updated_us, page[1].deleted, page[1].content.as_str()), (3, 11, true, b));
        assert!(split_page("not json", "").is_err());
        assert!(split_page(&keys, a).is_err(), "content missing");
    }
}
