//! CSV rows -> session JSON, with the column layout derived from the session schema.
//!
//! Columns are dotted paths of schema fields (`student.birth_date`, `service.start`). The schema
//! decides how a cell is read: integers become numbers, lists of strings are split on `;`
//! (`F41.1;Z63.8`), lists of objects (`service.participants`) are written as JSON. Empty cells are
//! left out (an empty list column gives `[]`). An unknown column is refused before any row is read.

use serde_json::{Map, Value};

/// How a column's cells are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CellKind {
    Text,
    Integer,
    TextList,
    Json,
}

/// The columns of a CSV file, resolved against the schema.
#[derive(Debug, Clone)]
pub struct CsvLayout {
    columns: Vec<(Vec<String>, CellKind)>,
}

fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/")) {
        Some(path) => path.split('/').try_fold(root, |n, seg| n.get(seg)).unwrap_or(node),
        None => node,
    }
}

fn kind_of(root: &Value, path: &[&str]) -> Option<CellKind> {
    let mut node = root;
    for seg in path {
        node = resolve(root, node).get("properties")?.get(*seg)?;
    }
    let node = resolve(root, node);
    match node.get("type").and_then(Value::as_str)? {
        "string" => Some(CellKind::Text),
        "integer" | "number" => Some(CellKind::Integer),
        "array" => match node.get("items").map(|i| resolve(root, i)).and_then(|i| i.get("type")).and_then(Value::as_str) {
            Some("string") => Some(CellKind::TextList),
            _ => Some(CellKind::Json),
        },
        _ => None,
    }
}

impl CsvLayout {
    /// Resolves header names against the schema; unknown or non-leaf columns are an error that
    /// names them.
    pub fn from_headers(schema: &Value, headers: &[String]) -> Result<CsvLayout, String> {
        let mut columns = Vec::with_capacity(headers.len());
        let mut unknown = Vec::new();
        for h in headers {
            let name = h.trim().trim_start_matches('\u{feff}');
            let path: Vec<&str> = name.split('.').collect();
            match kind_of(schema, &path) {
                Some(kind) => columns.push((path.iter().map(|s| s.to_string()).collect(), kind)),
                None => unknown.push(name.to_string()),
            }
        }
        if !unknown.is_empty() {
            return Err(format!(
                "unknown CSV column(s): {}. Columns are dotted field paths of schemas/session.schema.json, such as student.birth_date",
                unknown.join(", ")
            ));
        }
        Ok(CsvLayout { columns })
    }

    /// Builds the record of one row; a malformed JSON cell is kept as text so that the schema
    /// reports it at its field.
    pub fn row_to_value(&self, row: &csv::StringRecord) -> Value {
        let mut root = Map::new();
        for ((path, kind), cell) in self.columns.iter().zip(row.iter()) {
            let cell = cell.trim();
            let value = match kind {
                CellKind::TextList => {
                    Value::Array(cell.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_string())).collect())
                }
                _ if cell.is_empty() => continue,
                CellKind::Text => Value::String(cell.to_string()),
                CellKind::Integer => cell.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::String(cell.to_string())),
                CellKind::Json => serde_json::from_str(cell).unwrap_or_else(|_| Value::String(cell.to_string())),
            };
            insert(&mut root, path, value);
        }
        Value::Object(root)
    }
}

fn insert(map: &mut Map<String, Value>, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            map.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = map.entry(first.clone()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = child {
                insert(m, rest, value);
            }
        }
    }
}

/// The header row of a CSV file holding every column the schema allows (for templates and docs).
pub fn template_headers(schema: &Value) -> Vec<String> {
    fn walk(root: &Value, node: &Value, prefix: &str, out: &mut Vec<String>) {
        let node = resolve(root, node);
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
                let resolved = resolve(root, child);
                if resolved.get("type").and_then(Value::as_str) == Some("object") {
                    walk(root, resolved, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(schema, schema, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/session.schema.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn layout_reads_types_from_the_schema() {
        let s = schema();
        let headers: Vec<String> =
            ["source_id", "service.tier", "diagnoses", "clinician.supervisor.npi", "service.participants", "consent_ids"]
                .map(String::from)
                .to_vec();
        let layout = CsvLayout::from_headers(&s, &headers).unwrap();
        let row = csv::StringRecord::from(vec!["A-1", "3", "F41.1; Z63.8", "1234567893", r#"[{"relationship":"mother"}]"#, ""]);
        let v = layout.row_to_value(&row);
        assert_eq!(v["service"]["tier"], 3);
        assert_eq!(v["diagnoses"], serde_json::json!(["F41.1", "Z63.8"]));
        assert_eq!(v["clinician"]["supervisor"]["npi"], "1234567893");
        assert_eq!(v["service"]["participants"][0]["relationship"], "mother");
        assert_eq!(v["consent_ids"], serde_json::json!([]));
    }

    #[test]
    fn unknown_columns_are_named() {
        let err = CsvLayout::from_headers(&schema(), &["student.shoe_size".to_string(), "student".to_string()]).unwrap_err();
        assert!(err.contains("student.shoe_size") && err.contains("student"), "{err}");
    }

    #[test]
    fn template_lists_leaf_columns() {
        let h = template_headers(&schema());
        assert!(h.contains(&"student.birth_date".to_string()));
        assert!(h.contains(&"clinician.supervisor.npi".to_string()));
        assert!(!h.contains(&"student".to_string()));
    }
}
