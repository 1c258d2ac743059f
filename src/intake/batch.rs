//! Splitting request bodies into [`RawRecord`]s.

use serde_json::Value;
use serde_json::value::RawValue;

use super::{RawFormat, RawRecord};
use crate::fhir::{IssueCode, OutcomeIssue};

/// Why a body could not be split into records at all.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Not parseable as a whole.
    #[error("{0}")]
    Malformed(String),
    /// More records than allowed.
    #[error("the batch has {count} records; the limit is {limit}")]
    TooMany {
        /// Records found (at least).
        count: usize,
        /// Configured limit.
        limit: usize,
    },
    /// No records.
    #[error("the batch contains no records")]
    Empty,
}

fn strip_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Parses one JSON record; a syntax error becomes a `structure` issue.
pub fn parse_record(bytes: &[u8]) -> Result<Value, OutcomeIssue> {
    serde_json::from_slice::<Value>(bytes)
        .map_err(|e| OutcomeIssue::error(IssueCode::Structure, format!("the record is not valid JSON: {e}")))
}

/// A JSON array of records; each element keeps its exact bytes.
pub fn split_json_array(body: &[u8], limit: usize) -> Result<Vec<RawRecord>, SplitError> {
    let body = strip_bom(body);
    let elements: Vec<&RawValue> = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            SplitError::Malformed(
                "a $batch JSON body must be an array of session records (or send NDJSON with Content-Type application/x-ndjson)".into(),
            )
        } else {
            SplitError::Malformed(format!("the body is not valid JSON: {e}"))
        }
    })?;
    if elements.is_empty() {
        return Err(SplitError::Empty);
    }
    if elements.len() > limit {
        return Err(SplitError::TooMany { count: elements.len(), limit });
    }
    Ok(elements
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let bytes = raw.get().as_bytes().to_vec();
            let parsed = parse_record(&bytes);
            RawRecord { index, line: None, raw: bytes, format: RawFormat::Json, parsed }
        })
        .collect())
}

/// NDJSON: one record per non-blank line (`\n` or `\r\n`).
pub fn split_ndjson(body: &[u8], limit: usize) -> Result<Vec<RawRecord>, SplitError> {
    let body = strip_bom(body);
    let mut out = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if out.len() == limit {
            return Err(SplitError::TooMany { count: limit + 1, limit });
        }
        let line_no = u64::try_from(i + 1).unwrap_or(u64::MAX);
        out.push(RawRecord {
            index: out.len(),
            line: Some(line_no),
            raw: line.to_vec(),
            format: RawFormat::Json,
            parsed: parse_record(line),
        });
    }
    if out.is_empty() {
        return Err(SplitError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_keeps_exact_element_bytes() {
        let recs = split_json_array(br#"[ {"a": 1},  {"b" :2} ]"#, 10).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].raw, br#"{"b" :2}"#);
    }

    #[test]
    fn ndjson_numbers_lines_and_skips_blank_ones() {
        let recs = split_ndjson(b"{\"a\":1}\r\n\n{oops\n{\"c\":3}", 10).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].line, Some(3));
        assert!(recs[1].parsed.is_err());
        assert_eq!(recs[2].index, 2);
    }

    #[test]
    fn limits_and_shapes() {
        assert!(matches!(split_json_array(b"[]", 10), Err(SplitError::Empty)));
        assert!(matches!(split_json_array(b"{}", 10), Err(SplitError::Malformed(_))));
        assert!(matches!(split_json_array(b"[1,2,3]", 2), Err(SplitError::TooMany { .. })));
        assert!(matches!(split_ndjson(b"1\n2\n3\n", 2), Err(SplitError::TooMany { .. })));
        assert!(matches!(split_ndjson(b"\n \n", 2), Err(SplitError::Empty)));
    }
}
