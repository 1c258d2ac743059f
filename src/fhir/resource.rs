//! A FHIR resource ready to be stored: its content without version metadata, the SHA-256 that
//! decides whether it changed, and its search index rows.

use serde_json::Value;

use super::search::{IndexEntry, SearchRegistry};

/// A resource as the mapping produced it, prepared for storage.
#[derive(Debug, Clone)]
pub struct PreparedResource {
    /// `resourceType`.
    pub resource_type: String,
    /// `id`.
    pub id: String,
    /// The resource without `meta.versionId` / `meta.lastUpdated` (the store sets them).
    pub content: Value,
    /// SHA-256 of `content` serialised with sorted keys: same hash, same resource, no new version.
    pub content_sha256: String,
    /// Search index rows.
    pub index: Vec<IndexEntry>,
    /// Owned by one session (Encounter, Condition): deleted when a later version of that session
    /// no longer produces it. Shared resources (Patient, Practitioner, ...) are never deleted so.
    pub owned: bool,
}

/// Resource types a session version owns.
pub const SESSION_OWNED_TYPES: &[&str] = &["Encounter", "Condition"];

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
        let content_sha256 = crate::intake::sha256_hex(&crate::intake::canonical_json(&content));
        let index = registry.index(&content);
        let owned = SESSION_OWNED_TYPES.contains(&resource_type.as_str());
        Self { resource_type, id, content, content_sha256, index, owned }
    }

    /// The stored JSON: the content with `meta.versionId` and `meta.lastUpdated` set.
    pub fn versioned_json(&self, version_id: i64, last_updated: &str) -> String {
        let mut v = self.content.clone();
        if let Some(o) = v.as_object_mut() {
            let meta = o.entry("meta").or_insert_with(|| Value::Object(Default::default()));
            if let Some(m) = meta.as_object_mut() {
                m.insert("versionId".into(), Value::String(version_id.to_string()));
                m.insert("lastUpdated".into(), Value::String(last_updated.to_string()));
            }
        }
        serde_json::to_string(&v).unwrap_or_default()
    }
}
