//! Consent directives (the decision's view) and their FHIR `Consent` versions, written together
//! in one transaction; and the session facts the consent decision reads.

use chrono::{DateTime, Utc};

use super::fhir::FhirWrite;
use super::{Db, Store, StoreError, with_db};
use std::collections::HashMap;

use crate::consent::{Compiled, Directive};
use crate::fhir::resource::PreparedResource;

/// What a consent write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentOutcome {
    /// First version.
    Created {
        /// Consent id.
        id: String,
        /// Version (the FHIR Consent's `versionId`).
        version: i64,
    },
    /// A new version of an existing consent.
    Amended {
        /// Consent id.
        id: String,
        /// New version.
        version: i64,
    },
    /// The same form again: nothing changed.
    Duplicate {
        /// Consent id.
        id: String,
        /// Current version.
        version: i64,
    },
}

/// A consent version to write.
pub struct ConsentWrite<'a> {
    /// The directive (its `version` is filled in by the store).
    pub directive: &'a Directive,
    /// The LEA's id of the form.
    pub source_id: &'a str,
    /// SHA-256 of the canonical form (`None` for a status change such as a revocation, which
    /// always writes a new version and keeps the form's hash).
    pub content_sha256: Option<&'a str>,
    /// Builds the FHIR Consent for the directive at its new version.
    pub fhir: &'a (dyn Fn(&Directive) -> PreparedResource + Sync),
    /// When.
    pub at: DateTime<Utc>,
}

/// A stored directive with its bookkeeping.
#[derive(Debug, Clone)]
pub struct StoredDirective {
    /// The directive.
    pub directive: Directive,
    /// The LEA's id of the form.
    pub source_id: String,
}

/// The facts of one session the consent decision reads.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionFacts {
    /// Session id (= its Encounter id).
    pub id: String,
    /// LEA.
    pub lea_id: String,
    /// School site.
    pub site_id: String,
    /// Start of the session (the date of service).
    pub service_start: DateTime<Utc>,
    /// The student's Patient id (`None` for sessions stored before consent facts were kept).
    pub patient_id: Option<String>,
    /// The Encounter's security labels (JSON array of `system|code`).
    pub security: Option<String>,
    /// The local date of service (`None` for rows written before it was kept).
    pub service_date: Option<String>,
    /// The day the student turns 18.
    pub adult_from: Option<String>,
}

impl SessionFacts {
    /// The date of service consent and partnerships are judged on: the local date, else the UTC
    /// date of the start.
    pub fn date_of_service(&self) -> chrono::NaiveDate {
        self.service_date.as_deref().and_then(|d| d.parse().ok()).unwrap_or_else(|| self.service_start.date_naive())
    }

    /// Whether the student is 18 or older on `day`.
    pub fn adult_on(&self, day: chrono::NaiveDate) -> bool {
        self.adult_from.as_deref().and_then(|d| d.parse::<chrono::NaiveDate>().ok()).is_some_and(|a| a <= day)
    }
}

fn parse_directive(json: &str) -> Result<Directive, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("a stored consent directive is unreadable: {e}")))
}

macro_rules! write_consent {
    ($tx:expr, $w:expr, $for_update:expr) => {{
        let w: &ConsentWrite<'_> = $w;
        let d = w.directive;
        let prev: Option<(i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT version, content_sha256 FROM consent_directives WHERE id = $1{}",
            $for_update
        )))
        .bind(&d.id)
        .fetch_optional(&mut **$tx)
        .await?;
        match (&prev, w.content_sha256) {
            (Some((version, sha)), Some(new)) if sha == new => ConsentOutcome::Duplicate { id: d.id.clone(), version: *version },
            _ => {
                let version = prev.as_ref().map(|(v, _)| v + 1).unwrap_or(1);
                let mut directive = d.clone();
                directive.version = version;
                let resource = (w.fhir)(&directive);
                let write = FhirWrite {
                    session_id: &directive.id,
                    session_version: version,
                    lea: &directive.lea,
                    amended: false,
                    received_at: w.at,
                    resources: std::borrow::Cow::Owned(vec![resource]),
                };
                $crate::store::fhir::apply_fhir!($tx, std::slice::from_ref(&write));
                let json = serde_json::to_string(&directive).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let sha = w.content_sha256.map(str::to_owned).or_else(|| prev.as_ref().map(|(_, s)| s.clone())).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO consent_directives (id, lea_id, source_id, patient_id, version, status, directive, content_sha256, updated_us) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status, directive = excluded.directive, \
                     patient_id = excluded.patient_id, content_sha256 = excluded.content_sha256, updated_us = excluded.updated_us",
                )
                .bind(&directive.id)
                .bind(&directive.lea)
                .bind(w.source_id)
                .bind(&directive.patient)
                .bind(version)
                .bind(directive.status.code())
                .bind(json)
                .bind(sha)
                .bind(w.at.timestamp_micros())
                .execute(&mut **$tx)
                .await?;
                if prev.is_some() {
                    ConsentOutcome::Amended { id: directive.id.clone(), version }
                } else {
                    ConsentOutcome::Created { id: directive.id.clone(), version }
                }
            }
        }
    }};
}

impl Store {
    /// Writes a consent version (directive + FHIR Consent) in one transaction; the same form
    /// again is a duplicate.
    pub async fn write_consent(&self, w: &ConsentWrite<'_>) -> Result<ConsentOutcome, StoreError> {
        match self.db() {
            Db::Sqlite(pool) => {
                // IMMEDIATE: take the write lock before reading the current version, so two
                // concurrent writers of one consent queue instead of both reading version N.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let out = write_consent!(&mut tx, w, "");
                tx.commit().await?;
                self.after_consent_write(&out, w).await?;
                Ok(out)
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // Lock the row (or, for a new consent, the key) so concurrent writers serialise.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))").bind(&w.directive.id).execute(&mut *tx).await?;
                let out = write_consent!(&mut tx, w, " FOR UPDATE");
                tx.commit().await?;
                self.after_consent_write(&out, w).await?;
                Ok(out)
            }
        }
    }

    /// A changed consent may make held sessions of its student billable: billing looks at them
    /// again (those without an active claim).
    async fn after_consent_write(&self, out: &ConsentOutcome, w: &ConsentWrite<'_>) -> Result<(), StoreError> {
        if !matches!(out, ConsentOutcome::Duplicate { .. }) {
            self.unsettle_unclaimed(&[w.directive.patient.as_str()]).await?;
        }
        Ok(())
    }

    /// One consent's current directive.
    pub async fn consent_directive(&self, id: &str) -> Result<Option<StoredDirective>, StoreError> {
        let row: Option<(String, String)> = with_db!(self.db(), pool => {
            sqlx::query_as("SELECT directive, source_id FROM consent_directives WHERE id = $1").bind(id).fetch_optional(pool).await?
        });
        row.map(|(json, source_id)| Ok(StoredDirective { directive: parse_directive(&json)?, source_id })).transpose()
    }

    /// Decision facts of these sessions, with the consents of their students (one query).
    pub async fn session_facts(&self, session_ids: &[&str]) -> Result<(Vec<SessionFacts>, Vec<Directive>), StoreError> {
        self.facts_where("id", session_ids).await
    }

    /// Decision facts of every session of these patients, with their consents (one query).
    pub async fn patient_session_facts(&self, patient_ids: &[&str]) -> Result<(Vec<SessionFacts>, Vec<Directive>), StoreError> {
        self.facts_where("patient_id", patient_ids).await
    }

    /// A resource's current version together with the decision facts of the session it is (an
    /// Encounter or DocumentReference has its session's id) and its student's consents, compiled.
    /// Other types come back without facts (the caller queries them).
    ///
    /// SQLite: one query reads the resource and the facts' generation; the facts come from the
    /// memo (`store::memo`) while nothing they were read from has changed, else from a second
    /// query joining them to the resource (and are kept). PostgreSQL: that joined query alone.
    pub async fn fhir_read_with_facts(&self, resource_type: &str, id: &str) -> Result<Option<ReadWithFacts>, StoreError> {
        match (self.db(), &self.memo) {
            (Db::Sqlite(pool), Some(memo)) => {
                let sql = "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, v.content, \
                     (SELECT generation FROM facts_generation WHERE id = 1) AS generation \
                     FROM fhir_resources r JOIN fhir_resource_versions v ON v.rid = r.rid AND v.version_id = r.version_id \
                     WHERE r.resource_type = $1 AND r.id = $2";
                let row: Option<ReadGenerationRow> = sqlx::query_as(sql).bind(resource_type).bind(id).fetch_optional(pool).await?;
                let Some((resource_type, id, version_id, last_updated_us, deleted, content, generation)) = row else { return Ok(None) };
                let resource = super::StoredResource { resource_type, id, version_id, last_updated_us, deleted, content };
                if !matches!(resource.resource_type.as_str(), "Encounter" | "DocumentReference") {
                    return Ok(Some((resource, Vec::new(), HashMap::new())));
                }
                let generation = generation.ok_or_else(|| StoreError::Corrupt("the facts generation row is missing".into()))?;
                if let Some((session, consents)) = memo.get(generation, &resource.id) {
                    let consents = session.patient_id.clone().map(|p| (p, consents.to_vec())).into_iter().collect();
                    return Ok(Some((resource, vec![session], consents)));
                }
                // Missed: the resource and its facts again in one statement (one snapshot), with
                // the generation they are current at.
                let Some(((resource, sessions, by_patient), generation)) =
                    self.fhir_read_joined(&resource.resource_type, &resource.id).await?
                else {
                    return Ok(None);
                };
                if let Some(generation) = generation {
                    memo.put(generation, &sessions, &by_patient);
                }
                Ok(Some((resource, sessions, by_patient)))
            }
            _ => Ok(self.fhir_read_joined(resource_type, id).await?.map(|(read, _)| read)),
        }
    }

    /// [`Store::fhir_read_with_facts`] in one query joining the facts to the resource, with (on
    /// SQLite) the facts generation of the same snapshot.
    async fn fhir_read_joined(&self, resource_type: &str, id: &str) -> Result<Option<(ReadWithFacts, Option<i64>)>, StoreError> {
        let generation = match self.db() {
            Db::Sqlite(_) => ", (SELECT generation FROM facts_generation WHERE id = 1) AS generation",
            Db::Postgres(_) => "",
        };
        let sql = format!(
            "SELECT r.resource_type, r.id, r.version_id, r.last_updated_us, r.deleted, v.content, \
             s.id AS session_id, s.lea_id, s.site_id, s.service_start, s.patient_id, s.security, s.service_date, s.adult_from, c.id AS consent_id, c.directive{generation} \
             FROM fhir_resources r JOIN fhir_resource_versions v ON v.rid = r.rid AND v.version_id = r.version_id \
             LEFT JOIN sessions s ON s.id = r.id AND r.resource_type IN ('Encounter', 'DocumentReference') AND s.current_version > 0 \
             LEFT JOIN consent_directives c ON c.patient_id = s.patient_id \
             WHERE r.resource_type = $1 AND r.id = $2"
        );
        let rows: Vec<ReadFactsRow> = with_db!(self.db(), pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql.clone())).bind(resource_type).bind(id).fetch_all(pool).await?
        });
        let mut rows = rows.into_iter();
        let Some(first) = rows.next() else { return Ok(None) };
        let generation = first.generation;
        let mut consents = Vec::new();
        let push = |r: &ReadFactsRow, consents: &mut Vec<Compiled>| -> Result<(), StoreError> {
            if let (Some(_), Some(json)) = (&r.consent_id, &r.directive) {
                consents.push(parse_directive(json)?.compile());
            }
            Ok(())
        };
        push(&first, &mut consents)?;
        for r in rows {
            push(&r, &mut consents)?;
        }
        let resource = super::StoredResource {
            resource_type: first.resource_type,
            id: first.id,
            version_id: first.version_id,
            last_updated_us: first.last_updated_us,
            deleted: first.deleted,
            content: first.content,
        };
        let mut sessions = Vec::new();
        let mut by_patient = HashMap::new();
        if let Some(p) = &first.patient_id {
            by_patient.insert(p.clone(), consents);
        }
        if let (Some(sid), Some(lea_id), Some(site_id), Some(service_start)) =
            (first.session_id, first.lea_id, first.site_id, first.service_start)
        {
            sessions.push(SessionFacts {
                id: sid,
                lea_id,
                site_id,
                service_start,
                patient_id: first.patient_id,
                security: first.security,
                service_date: first.service_date,
                adult_from: first.adult_from,
            });
        }
        Ok(Some(((resource, sessions, by_patient), generation)))
    }

    /// The sessions whose `column` is one of `keys`, and their students' consents (two queries:
    /// a student's consent is read once, not once per session of theirs).
    async fn facts_where(&self, column: &'static str, keys: &[&str]) -> Result<(Vec<SessionFacts>, Vec<Directive>), StoreError> {
        let mut sessions: Vec<SessionFacts> = Vec::new();
        for chunk in keys.chunks(500) {
            let sql = format!(
                "SELECT s.id, s.lea_id, s.site_id, s.service_start, s.patient_id, s.security, s.service_date, s.adult_from \
                 FROM sessions s WHERE s.current_version > 0 AND s.{column} IN ({})",
                super::fhir::placeholders(1, chunk.len(), matches!(self.db(), Db::Sqlite(_)))
            );
            let rows: Vec<SessionFacts> = match self.db() {
                // SQLite: one row holding them all as JSON. sqlx hands each row of a SQLite
                // result from the connection's thread to the caller separately, which cost more
                // than the query itself on a bulk export's pages.
                Db::Sqlite(pool) => {
                    let sql = format!(
                        "SELECT json_group_array(json_array(s.id, s.lea_id, s.site_id, s.service_start, s.patient_id, s.security, s.service_date, s.adult_from)) \
                         FROM sessions s WHERE s.current_version > 0 AND s.{column} IN ({})",
                        super::fhir::placeholders(1, chunk.len(), true)
                    );
                    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
                    for k in chunk {
                        q = q.bind(*k);
                    }
                    let json = q.fetch_one(pool).await?;
                    type Row = (String, String, String, String, Option<String>, Option<String>, Option<String>, Option<String>);
                    let rows: Vec<Row> =
                        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("session facts are unreadable: {e}")))?;
                    rows.into_iter()
                        .map(|(id, lea_id, site_id, start, patient_id, security, service_date, adult_from)| {
                            let service_start = chrono::DateTime::parse_from_rfc3339(&start)
                                .map_err(|e| StoreError::Corrupt(format!("a session's start is unreadable: {e}")))?
                                .with_timezone(&Utc);
                            Ok(SessionFacts { id, lea_id, site_id, service_start, patient_id, security, service_date, adult_from })
                        })
                        .collect::<Result<_, StoreError>>()?
                }
                Db::Postgres(pool) => {
                    let mut q = sqlx::query_as(sqlx::AssertSqlSafe(sql.clone()));
                    for k in chunk {
                        q = q.bind(*k);
                    }
                    q.fetch_all(pool).await?
                }
            };
            sessions.extend(rows);
        }
        let mut patients: Vec<&str> = sessions.iter().filter_map(|s| s.patient_id.as_deref()).collect();
        patients.sort_unstable();
        patients.dedup();
        let directives = self.patient_directives(&patients).await?;
        Ok((sessions, directives))
    }

    /// The consents of these students (by Patient id).
    pub async fn patient_directives(&self, patients: &[&str]) -> Result<Vec<Directive>, StoreError> {
        let mut directives = Vec::new();
        for chunk in patients.chunks(500) {
            let sql = format!(
                "SELECT directive FROM consent_directives WHERE patient_id IN ({})",
                super::fhir::placeholders(1, chunk.len(), matches!(self.db(), Db::Sqlite(_)))
            );
            match self.db() {
                Db::Sqlite(pool) => {
                    // The texts one after the other with their lengths (`json(directive)` in a
                    // JSON array made SQLite parse and print every directive again).
                    let sql = format!(
                        "SELECT json_group_array(length(CAST(directive AS BLOB))), group_concat(directive, '') \
                         FROM consent_directives WHERE patient_id IN ({})",
                        super::fhir::placeholders(1, chunk.len(), true)
                    );
                    let mut q = sqlx::query_as::<_, (String, Option<String>)>(sqlx::AssertSqlSafe(sql));
                    for p in chunk {
                        q = q.bind(*p);
                    }
                    let (lengths, texts) = q.fetch_one(pool).await?;
                    let lengths: Vec<usize> = serde_json::from_str(&lengths)
                        .map_err(|e| StoreError::Corrupt(format!("consent directive lengths are unreadable: {e}")))?;
                    for text in super::fhir::split_lengths(&lengths, texts.as_deref().unwrap_or_default())? {
                        directives.push(parse_directive(text)?);
                    }
                }
                Db::Postgres(pool) => {
                    let mut q = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql.clone()));
                    for p in chunk {
                        q = q.bind(*p);
                    }
                    for json in q.fetch_all(pool).await? {
                        directives.push(parse_directive(&json)?);
                    }
                }
            }
        }
        Ok(directives)
    }
}

/// A resource, the decision facts of the session it is (if any), and by student, every consent of
/// that session's student, compiled ([`Store::fhir_read_with_facts`]).
pub type ReadWithFacts = (super::StoredResource, Vec<SessionFacts>, HashMap<String, Vec<Compiled>>);

/// A resource's current version and the facts generation ([`Store::fhir_read_with_facts`], SQLite).
type ReadGenerationRow = (String, String, i64, i64, bool, String, Option<i64>);

#[derive(sqlx::FromRow)]
struct ReadFactsRow {
    resource_type: String,
    id: String,
    version_id: i64,
    last_updated_us: i64,
    deleted: bool,
    content: String,
    session_id: Option<String>,
    lea_id: Option<String>,
    site_id: Option<String>,
    service_start: Option<DateTime<Utc>>,
    patient_id: Option<String>,
    security: Option<String>,
    service_date: Option<String>,
    adult_from: Option<String>,
    consent_id: Option<String>,
    directive: Option<String>,
    /// SQLite: the facts generation (the column is absent on PostgreSQL).
    #[sqlx(default)]
    generation: Option<i64>,
}
