//! A FHIR resource ready to be stored: its content without version metadata, the SHA-256 that
//! decides whether it changed, and its search index rows.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::search::{IndexEntry, SearchRegistry};

/// A resource as the mapping produced it, prepared for storage.
#[derive(Debug, Clone)]
pub struct PreparedResource {
    /// `resourceType`.
    pub resource_type: String,
    /// `id`.
    pub id: String,
    /// SHA-256 of the resource serialised with sorted keys and fixed stand-ins for the version
    /// metadata: same hash, same resource, no new version.
    pub content_sha256: String,
    /// Search index rows.
    pub index: Vec<IndexEntry>,
    /// Owned by one session (Encounter, Condition): deleted when a later version of that session
    /// no longer produces it. Shared resources (Patient, Practitioner, ...) are never deleted so.
    pub owned: bool,
    /// The stored JSON around the version metadata: `head` + `"versionId":..,"lastUpdated":..` +
    /// `tail`, serialised once here (in parallel, before the single-writer transaction).
    json: (String, String),
}

/// Stand-ins serialised in place of the version metadata, then cut out (a control character,
/// which serde_json escapes, so the marker cannot come from content).
const MARK_VERSION: &str = "\u{1}v";
const MARK_UPDATED: &str = "\u{1}t";
const MARKER: &str = r#""versionId":"\u0001v","lastUpdated":"\u0001t""#;

/// Resource types a session version owns.
pub const SESSION_OWNED_TYPES: &[&str] = &["Encounter", "Condition", "DocumentReference"];

impl PreparedResource {
    /// Prepares a mapped resource (`meta.versionId` / `meta.lastUpdated` are dropped if present).
    pub fn new(mut content: Value, registry: &SearchRegistry) -> Self {
        if let Some(meta) = content.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                content.as_object_mut().map(|o| o.remove("meta"));
            }
        }
        let resource_type = content["resourceType"].as_str().unwrap_or_default().to_string();
        let id = content["id"].as_str().unwrap_or_default().to_string();
        let index = registry.index(&content);
        let owned = SESSION_OWNED_TYPES.contains(&resource_type.as_str());
        let marked =
            serde_json::to_string(&Versioned { content: &content, version: MARK_VERSION, last_updated: MARK_UPDATED }).unwrap_or_default();
        // Keys are sorted (see `canonical_json`), so the marked serialisation is canonical too.
        let content_sha256 = crate::intake::sha256_hex(marked.as_bytes());
        let json = match marked.find(MARKER) {
            Some(at) => (marked[..at].to_string(), marked[at + MARKER.len()..].to_string()),
            // Not an object: stored as it is, without version metadata.
            None => (marked, String::new()),
        };
        Self { resource_type, id, content_sha256, index, owned, json }
    }

    /// The stored JSON: the content with `meta.versionId` and `meta.lastUpdated` set.
    pub fn versioned_json(&self, version_id: i64, last_updated: &str) -> String {
        let (head, tail) = &self.json;
        if tail.is_empty() {
            return head.clone();
        }
        let mut out = String::with_capacity(head.len() + tail.len() + last_updated.len() + 48);
        out.push_str(head);
        out.push_str("\"versionId\":\"");
        out.push_str(&version_id.to_string());
        out.push_str("\",\"lastUpdated\":\"");
        out.push_str(last_updated);
        out.push('"');
        out.push_str(tail);
        out
    }
}

/// Serialises a resource with `meta.versionId` / `meta.lastUpdated` added.
struct Versioned<'a> {
    content: &'a Value,
    version: &'a str,
    last_updated: &'a str,
}

struct MetaWith<'a> {
    meta: Option<&'a serde_json::Map<String, Value>>,
    version: &'a str,
    last_updated: &'a str,
}

impl Serialize for MetaWith<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in self.meta.into_iter().flatten() {
            if k != "versionId" && k != "lastUpdated" {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("versionId", self.version)?;
        m.serialize_entry("lastUpdated", self.last_updated)?;
        m.end()
    }
}

impl Serialize for Versioned<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(obj) = self.content.as_object() else { return self.content.serialize(s) };
        let mut m = s.serialize_map(None)?;
        let mut has_meta = false;
        for (k, v) in obj {
            if k == "meta" {
                has_meta = true;
                m.serialize_entry(k, &MetaWith { meta: v.as_object(), version: self.version, last_updated: self.last_updated })?;
            } else {
                m.serialize_entry(k, v)?;
            }
        }
        if !has_meta {
            m.serialize_entry("meta", &MetaWith { meta: None, version: self.version, last_updated: self.last_updated })?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored_with_another_version(r: &PreparedResource) -> Value {
        serde_json::from_str(&r.versioned_json(7, "2030-01-01T00:00:00Z")).unwrap()
    }

    #[test]
    fn versioned_json_sets_meta_and_keeps_the_rest() {
        let registry = SearchRegistry::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let with_meta = serde_json::json!({"resourceType": "Patient", "id": "p1", "gender": "female",
            "meta": {"security": [{"code": "R"}], "versionId": "9", "lastUpdated": "2000-01-01T00:00:00Z"}});
        let r = PreparedResource::new(with_meta, &registry);
        let out: Value = serde_json::from_str(&r.versioned_json(3, "2026-11-23T10:00:00.000001Z")).unwrap();
        assert_eq!(
            out["meta"],
            serde_json::json!({"security": [{"code": "R"}], "versionId": "3", "lastUpdated": "2026-11-23T10:00:00.000001Z"})
        );
        assert_eq!(out["gender"], "female");
        let bare = PreparedResource::new(serde_json::json!({"resourceType": "Patient", "id": "p2"}), &registry);
        let out: Value = serde_json::from_str(&bare.versioned_json(1, "t")).unwrap();
        assert_eq!(out["meta"], serde_json::json!({"versionId": "1", "lastUpdated": "t"}));
        // The hash ignores version metadata.
        assert_eq!(r.content_sha256, PreparedResource::new(stored_with_another_version(&r), &registry).content_sha256);
    }
}
