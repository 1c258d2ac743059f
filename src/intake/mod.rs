//! Stage 1, the door: body limits, content types, splitting JSON / NDJSON / CSV bodies into
//! numbered raw records, receipts, and file import.

pub mod batch;
pub mod csv;
pub mod file;
pub mod receipt;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fhir::OutcomeIssue;

/// The media type of a record's submitted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// A JSON object (single POST, JSON array element, NDJSON line).
    Json,
    /// A CSV row (file import).
    Csv,
}

impl RawFormat {
    /// Stored media type.
    pub fn media_type(self) -> &'static str {
        match self {
            RawFormat::Json => "application/json",
            RawFormat::Csv => "text/csv",
        }
    }
}

/// One record as received: its position, its exact bytes and its parse result.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Zero-based position in the request or file.
    pub index: usize,
    /// One-based line (NDJSON) or row line (CSV), when meaningful.
    pub line: Option<u64>,
    /// Exact submitted bytes.
    pub raw: Vec<u8>,
    /// What the bytes are.
    pub format: RawFormat,
    /// Parsed JSON value, or why it could not be parsed.
    pub parsed: Result<Value, OutcomeIssue>,
}

impl RawRecord {
    /// Drops what only validation needed of a record that was accepted: its bytes and its
    /// parsed tree, keeping the top-level `lea` and `source_id` (receipts read them). An
    /// import holds two chunks of records while their writes run.
    pub fn keep_identity(&mut self) {
        self.raw = Vec::new();
        if let Ok(Value::Object(fields)) = &mut self.parsed {
            fields.retain(|k, _| k == "lea" || k == "source_id");
        }
    }

    /// A record made from an already parsed JSON value (drafts evaluated without storing).
    pub fn from_value(value: &Value) -> RawRecord {
        RawRecord { index: 0, line: None, raw: value.to_string().into_bytes(), format: RawFormat::Json, parsed: Ok(value.clone()) }
    }
}

/// SHA-256, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Canonical JSON: object keys sorted at every level, no insignificant whitespace. Two records
/// with the same content have the same canonical bytes whatever their key order or spacing.
pub fn canonical_json(value: &Value) -> Vec<u8> {
    // serde_json's `Map` is a `BTreeMap` (the `preserve_order` feature is off; the test below
    // fails if a dependency ever turns it on), so plain serialisation already sorts the keys.
    serde_json::to_vec(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order_and_space() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "é"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(String::from_utf8(canonical_json(&a)).unwrap(), r#"{"a":"é","b":[1,{"x":1,"y":2}]}"#);
    }
}
