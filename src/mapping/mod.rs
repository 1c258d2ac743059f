//! Stage 3, map: a validated session version becomes FHIR R4 resources through the declarative
//! files under `mappings/` (see `mappings/README.md`).
//!
//! - [`spec`]: the serde shape of the files;
//! - [`compile`]: load, layer (defaults, then the site's FQHC, then its LEA overrides), check
//!   against the session schema and the official FHIR schema, with file and line in every error;
//! - [`engine`]: apply a compiled set to one session version (pure);
//! - [`Mapper`]: the compiled sets per site, plus validation of every produced resource against
//!   the official R4 schema and the US Core rules that matter here.

pub mod compile;
pub mod engine;
pub mod spec;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde_json::{Value, json};

pub use compile::{MappingError, MappingErrors, MappingSet, SessionFields};
pub use engine::{MapInput, MissingEntry};

use crate::fhir::FhirSchema;
use crate::fhir::schema::Violation;
use crate::settings::Settings;
use crate::validate::ValidSession;

/// Why a session version could not be mapped.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MapError {
    /// A value with no table entry: the submitter's record is refused (422).
    #[error("`{}` has a value with no entry in table `{}` ({})", .0.field, .0.table, .0.file)]
    Missing(MissingEntry),
    /// The mapping produced an invalid resource: a mapping defect (500-class), nothing stored.
    #[error("mapping produced an invalid {resource_type}/{id}: {}", violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        /// Resource type.
        resource_type: String,
        /// Resource id.
        id: String,
        /// What is wrong, by path.
        violations: Vec<Violation>,
    },
    /// The session's LEA or site is missing from the configuration.
    #[error("{0}")]
    Unconfigured(String),
}

/// One stored (or about to be stored) session version, as the mapping reads it.
#[derive(Debug, Clone, Copy)]
pub struct SessionVersion<'a> {
    /// The validated session.
    pub valid: &'a ValidSession,
    /// Its canonical JSON.
    pub record: &'a Value,
    /// Version number.
    pub version: i64,
    /// SHA-256 of the canonical record.
    pub content_sha256: &'a str,
    /// SHA-256 of the submitted bytes.
    pub raw_sha256: &'a str,
    /// When it was received.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

/// The validated FHIR resources of one session version.
#[derive(Debug, Clone)]
pub struct MappedSession {
    /// Resources in dependency order, each valid against the official R4 schema.
    pub resources: Vec<Value>,
    /// The layers used (`default`, then override organisations).
    pub layers: Vec<String>,
}

impl MappedSession {
    /// A FHIR transaction Bundle with a conditional-free `PUT` per resource (ids are
    /// deterministic, so replaying the Bundle is idempotent).
    pub fn transaction_bundle(&self) -> Value {
        let entry: Vec<Value> = self
            .resources
            .iter()
            .map(|r| {
                let url = format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default());
                json!({ "fullUrl": format!("urn:wellness-gateway:{url}"), "resource": r, "request": { "method": "PUT", "url": url } })
            })
            .collect();
        json!({ "resourceType": "Bundle", "type": "transaction", "entry": entry })
    }
}

/// Resource types whose content repeats from session to session: made from configuration alone
/// (the LEA and FQHC Organization, the site's Location) or from the clinician alone
/// (Practitioner, PractitionerRole). Their schema verdict is remembered (see [`Verified`]).
/// Per-session resources (Encounter, Condition, Provenance, ...) are always validated afresh.
const REPEATING_TYPES: &[&str] = &["Organization", "Location", "Practitioner", "PractitionerRole"];

/// How many resources [`Verified`] remembers; when full, it starts over.
const VERIFIED_CAPACITY: usize = 4096;

/// Resources of [`REPEATING_TYPES`] that passed the official schema, by type and id. A remembered
/// verdict is reused only for identical content: same structure, same strings, same numbers
/// bit for bit, i.e. the same serialized bytes. Any difference is validated afresh.
#[derive(Debug, Default)]
struct Verified {
    resources: RwLock<HashMap<u64, Value>>,
}

impl Verified {
    /// Checks `r` against the official schema, or finds that exactly this content passed before.
    fn check(&self, fhir: &FhirSchema, r: &Value) -> Result<(), Vec<Violation>> {
        let ty = r.get("resourceType").and_then(Value::as_str).unwrap_or_default();
        if !REPEATING_TYPES.contains(&ty) {
            return fhir.validate(r);
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        ty.hash(&mut h);
        r.get("id").and_then(Value::as_str).unwrap_or_default().hash(&mut h);
        let key = h.finish();
        // A poisoned lock only costs the shortcut.
        if self.resources.read().is_ok_and(|m| m.get(&key).is_some_and(|known| identical(known, r))) {
            return Ok(());
        }
        fhir.validate(r)?;
        if let Ok(mut m) = self.resources.write() {
            if m.len() >= VERIFIED_CAPACITY && !m.contains_key(&key) {
                m.clear();
            }
            m.insert(key, r.clone());
        }
        Ok(())
    }
}

/// Whether two values serialize to the same bytes: equal, with floats compared bit for bit
/// (`0.0` and `-0.0` are equal numbers but not the same text).
fn identical(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|((kx, vx), (ky, vy))| kx == ky && identical(vx, vy))
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(vx, vy)| identical(vx, vy)),
        (Value::Number(x), Value::Number(y)) => match (x.is_f64(), y.is_f64()) {
            (true, true) => x.as_f64().map(f64::to_bits) == y.as_f64().map(f64::to_bits),
            _ => x == y,
        },
        _ => a == b,
    }
}

/// Compiled mappings for every configured site, and the validator of what they produce.
pub struct Mapper {
    root: PathBuf,
    fields: SessionFields,
    fhir: Arc<FhirSchema>,
    default: Arc<MappingSet>,
    by_site: HashMap<String, Arc<MappingSet>>,
    verified: Verified,
}

impl std::fmt::Debug for Mapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapper").field("root", &self.root).field("sites", &self.by_site.len()).finish()
    }
}

impl Mapper {
    /// Loads `settings.rules.mappings_dir`, compiling the defaults and the layering of every
    /// configured site. An override folder for an organisation that is not configured is an error.
    pub fn load(settings: &Settings, session_schema: &Value, fhir: Arc<FhirSchema>) -> anyhow::Result<Self> {
        let root = settings.rules.mappings_dir.clone();
        anyhow::ensure!(root.is_dir(), "mappings folder {} not found (rules.mappings_dir)", root.display());
        let fields = SessionFields::from_schema(session_schema);
        let default = Arc::new(compile::compile(&root, &[], &fields, &fhir)?);
        let overrides: Vec<String> = match std::fs::read_dir(root.join("overrides")) {
            Ok(dir) => dir.flatten().filter(|e| e.path().is_dir()).map(|e| e.file_name().to_string_lossy().into_owned()).collect(),
            Err(_) => Vec::new(),
        };
        for org in &overrides {
            anyhow::ensure!(
                settings.organization(org).is_some(),
                "{}: `{org}` is not a configured organisation",
                root.join("overrides").join(org).display()
            );
        }
        let mut cache: HashMap<Vec<String>, Arc<MappingSet>> = HashMap::new();
        let mut by_site = HashMap::new();
        for site in &settings.sites {
            let mut layers = Vec::new();
            if let Some(f) = settings.fqhc_for_site(&site.id).filter(|f| overrides.contains(&f.id)) {
                layers.push(f.id.clone());
            }
            if overrides.contains(&site.lea) {
                layers.push(site.lea.clone());
            }
            let set = match cache.get(&layers) {
                Some(s) => s.clone(),
                None if layers.is_empty() => default.clone(),
                None => {
                    let s = Arc::new(
                        compile::compile(&root, &layers, &fields, &fhir).with_context(|| format!("mappings for site {}", site.id))?,
                    );
                    cache.insert(layers.clone(), s.clone());
                    s
                }
            };
            by_site.insert(site.id.clone(), set);
        }
        Ok(Self { root, fields, fhir, default, by_site, verified: Verified::default() })
    }

    /// Compiles the official FHIR schema from `rules.schemas_dir` and the mappings from
    /// `rules.mappings_dir`: what `serve`, `map` and `check` load at start-up.
    pub fn from_settings(settings: &Settings, validator: &crate::validate::Validator) -> anyhow::Result<Self> {
        let fhir = Arc::new(FhirSchema::load(&settings.rules.schemas_dir)?);
        Self::load(settings, validator.schemas().session_document(), fhir)
    }

    /// The compiled set for a site (defaults when the site is unknown).
    pub fn for_site(&self, site: &str) -> Arc<MappingSet> {
        self.by_site.get(site).cloned().unwrap_or_else(|| self.default.clone())
    }

    /// Defaults plus one organisation's overrides (for `wellness-gateway map --org`).
    pub fn for_org(&self, org: &str) -> Result<MappingSet, MappingErrors> {
        compile::compile(&self.root, &[org.to_string()], &self.fields, &self.fhir)
    }

    /// Maps one session version and validates every resource against the official schema
    /// (resources that repeat across sessions may reuse the verdict for identical content).
    pub fn map(&self, set: &MappingSet, input: &MapInput<'_>) -> Result<MappedSession, MapError> {
        let produced = engine::produce(set, input).map_err(MapError::Missing)?;
        for r in &produced.resources {
            let mut violations = match self.verified.check(&self.fhir, r) {
                Ok(()) => Vec::new(),
                Err(v) => v,
            };
            violations.extend(us_core_violations(r));
            if !violations.is_empty() {
                return Err(MapError::Invalid {
                    resource_type: r["resourceType"].as_str().unwrap_or_default().to_string(),
                    id: r["id"].as_str().unwrap_or_default().to_string(),
                    violations,
                });
            }
        }
        Ok(MappedSession { resources: produced.resources, layers: set.layers.clone() })
    }

    /// Maps a validated session using the configured LEA, site and partner FQHC.
    pub fn map_session(&self, settings: &Settings, set: &MappingSet, s: &SessionVersion<'_>) -> Result<MappedSession, MapError> {
        let raw = &s.valid.raw;
        let (Some(lea), Some(site)) = (settings.organization(&raw.lea), settings.site(&raw.site)) else {
            return Err(MapError::Unconfigured(format!("LEA `{}` or site `{}` is not configured", raw.lea, raw.site)));
        };
        let session_id = crate::pipeline::session_id(&raw.lea, &raw.source_id);
        let input = MapInput {
            record: s.record,
            session_id: &session_id,
            version: s.version,
            content_sha256: s.content_sha256,
            raw_sha256: s.raw_sha256,
            received_at: s.received_at,
            minutes: s.valid.minutes_face_to_face,
            lea,
            site,
            fqhc: settings.fqhc_for_site(&site.id),
        };
        self.map(set, &input)
    }

    /// The official schema.
    pub fn fhir(&self) -> &Arc<FhirSchema> {
        &self.fhir
    }

    /// The mappings folder.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// The US Core must-haves the gateway relies on: Patient identifier, name, gender; Encounter
/// status, class, type, subject, period.
pub fn us_core_violations(r: &Value) -> Vec<Violation> {
    let required: &[&str] = match r["resourceType"].as_str() {
        Some("Patient") => &["identifier", "name", "gender"],
        Some("Encounter") => &["status", "class", "type", "subject", "period"],
        Some("Condition") => &["category", "code", "subject"],
        _ => &[],
    };
    required
        .iter()
        .filter(|k| r.get(**k).is_none_or(|v| v.is_null() || v.as_array().is_some_and(Vec::is_empty)))
        .map(|k| Violation { pointer: format!("/{k}"), message: format!("US Core requires `{k}`") })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::LazyLock;

    static FHIR: LazyLock<FhirSchema> =
        LazyLock::new(|| FhirSchema::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("schema compiles"));

    fn remembered(v: &Verified) -> Vec<Value> {
        v.resources.read().unwrap().values().cloned().collect()
    }

    #[test]
    fn a_remembered_verdict_is_reused_only_for_identical_content() {
        let verified = Verified::default();
        let org = json!({ "resourceType": "Organization", "id": "lea-demo", "active": true, "name": "Demo County" });
        assert_eq!(verified.check(&FHIR, &org), Ok(()));
        assert_eq!(remembered(&verified), std::slice::from_ref(&org));
        assert_eq!(verified.check(&FHIR, &org), Ok(()));

        // Same type and id, other content: checked afresh and refused, with its path.
        let mut bad = org.clone();
        bad["active"] = json!("yes");
        let errors = verified.check(&FHIR, &bad).unwrap_err();
        assert!(errors.iter().any(|v| v.pointer == "/active"), "{errors:?}");
        assert_eq!(remembered(&verified), std::slice::from_ref(&org), "an invalid resource is not remembered");

        // Valid new content for the same id replaces the old.
        let mut renamed = org.clone();
        renamed["name"] = json!("Demo County Office of Education");
        assert_eq!(verified.check(&FHIR, &renamed), Ok(()));
        assert_eq!(remembered(&verified), [renamed]);

        // Per-session resources are always validated and never remembered.
        let enc = json!({ "resourceType": "Encounter", "id": "e1", "status": "finished", "class": { "code": "AMB" } });
        assert_eq!(verified.check(&FHIR, &enc), Ok(()));
        assert_eq!(remembered(&verified).len(), 1);
        let mut bad = enc.clone();
        bad["status"] = json!("done");
        assert!(verified.check(&FHIR, &bad).is_err());
    }

    #[test]
    fn identical_means_the_same_serialized_bytes() {
        let a = json!({ "a": [1, "x", null, { "b": true }], "c": 2.5 });
        assert!(identical(&a, &a.clone()));
        assert!(!identical(&json!(1), &json!(1.0)));
        assert!(!identical(&json!(0.0), &json!(-0.0)));
        assert!(!identical(&json!({ "a": 1 }), &json!({ "a": 1, "b": 2 })));
        assert!(!identical(&json!(["x"]), &json!(["x", "x"])));
        assert!(!identical(&json!("1"), &json!(1)));
    }
}
