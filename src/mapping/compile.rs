//! Loads the mapping files of one layering (shipped defaults plus optional organisation
//! overrides), checks them against the session schema and the official FHIR schema, and compiles
//! them into a [`MappingSet`]. Every problem names the file, the line and the key.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use toml::Spanned;

use super::spec::{ElementSpec, LabelsFile, ResourceFile, TableFile};
use crate::fhir::FhirSchema;

/// A problem in a mapping file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// The key (or value) at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for MappingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file.display(), self.line, self.key, self.message)
    }
}

/// All problems found while loading a layering.
#[derive(Debug, thiserror::Error)]
#[error("{} mapping error(s):\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct MappingErrors(pub Vec<MappingError>);

/// Configured organisation / site fields a mapping may read (`lea.name`, `site.cds_code`).
pub const ORG_FIELDS: &[&str] = &["id", "name", "cds_code", "npi", "tin"];
/// Site fields a mapping may read.
pub const SITE_FIELDS: &[&str] = &["id", "name", "cds_code", "nces_id"];
/// Values computed by the engine (`derived.<name>`).
pub const DERIVED: &[&str] = &[
    "session_id",
    "version",
    "content_sha256",
    "raw_sha256",
    "received_at",
    "minutes",
    "service_date",
    "patient_id",
    "practitioner_id",
    "practitioner_role_id",
    "encounter_id",
    "coverage_id",
    "provenance_id",
    "location_id",
    "lea_org_id",
    "fqhc_org_id",
    "item_id",
];

/// A value the engine computes, one per name in [`DERIVED`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// `session_id`.
    SessionId,
    /// `version`.
    Version,
    /// `content_sha256`.
    ContentSha256,
    /// `raw_sha256`.
    RawSha256,
    /// `received_at`.
    ReceivedAt,
    /// `minutes`.
    Minutes,
    /// `service_date`.
    ServiceDate,
    /// `patient_id`.
    PatientId,
    /// `practitioner_id`.
    PractitionerId,
    /// `practitioner_role_id`.
    PractitionerRoleId,
    /// `encounter_id`.
    EncounterId,
    /// `coverage_id`.
    CoverageId,
    /// `provenance_id`.
    ProvenanceId,
    /// `location_id`.
    LocationId,
    /// `lea_org_id`.
    LeaOrgId,
    /// `fqhc_org_id`.
    FqhcOrgId,
    /// `item_id` (inside a repeat or a file with `each`).
    ItemId,
}

impl Derived {
    /// The derived value called `name` (`patient_id`), if there is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "session_id" => Self::SessionId,
            "version" => Self::Version,
            "content_sha256" => Self::ContentSha256,
            "raw_sha256" => Self::RawSha256,
            "received_at" => Self::ReceivedAt,
            "minutes" => Self::Minutes,
            "service_date" => Self::ServiceDate,
            "patient_id" => Self::PatientId,
            "practitioner_id" => Self::PractitionerId,
            "practitioner_role_id" => Self::PractitionerRoleId,
            "encounter_id" => Self::EncounterId,
            "coverage_id" => Self::CoverageId,
            "provenance_id" => Self::ProvenanceId,
            "location_id" => Self::LocationId,
            "lea_org_id" => Self::LeaOrgId,
            "fqhc_org_id" => Self::FqhcOrgId,
            "item_id" => Self::ItemId,
            _ => return None,
        })
    }
}

/// Where a value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A field of the submitted record, by path from the root.
    Session(Vec<String>),
    /// The current item of a repeat (empty path = the item itself).
    Item(Vec<String>),
    /// A field of the session's LEA organisation.
    Lea(String),
    /// A field of the FQHC partnered with the session's site.
    Fqhc(String),
    /// A field of the session's site.
    Site(String),
    /// A value the engine computes.
    Derived(Derived),
}

/// A step of a target path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    /// `name`: a single element.
    Field(String),
    /// `name[+]`: append a new item to a repeating element.
    Append(String),
    /// `name[=]`: the last item of a repeating element.
    Last(String),
}

impl PathStep {
    /// The element name.
    pub fn name(&self) -> &str {
        match self {
            PathStep::Field(n) | PathStep::Append(n) | PathStep::Last(n) => n,
        }
    }
}

/// What the target element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A FHIR primitive (string, code, dateTime, ...).
    Primitive,
    /// A `Coding`.
    Coding,
    /// A `CodeableConcept` (a coding value is wrapped).
    CodeableConcept,
    /// Any other complex type (set from a table column holding an object).
    Complex,
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Literal text.
    Text(String),
    /// A placeholder.
    Value(Source),
}

/// How an element's value is produced.
#[derive(Debug, Clone)]
pub enum ValueExpr {
    /// A constant, already in the target's shape (a coding set on a CodeableConcept is wrapped).
    Const(Value),
    /// A source value as is.
    From(Source),
    /// A source value's text, base64-encoded.
    Base64(Source),
    /// Text with placeholders; absent when any placeholder is absent.
    Template(Vec<TemplatePart>),
    /// A table lookup: the entry for the source value, one column.
    Lookup {
        /// The key.
        key: Source,
        /// The table.
        table: Arc<Table>,
        /// The column.
        column: String,
        /// Which session field (schema path) the key is, for run-time errors.
        field: String,
    },
}

/// One compiled element assignment.
#[derive(Debug, Clone)]
pub struct Element {
    /// Target path.
    pub path: Vec<PathStep>,
    /// Target kind.
    pub kind: TargetKind,
    /// Value.
    pub value: ValueExpr,
    /// The repeating steps of `path` as group numbers within the resource mapping (the same
    /// element names up to a `[+]` / `[=]` step are the same group), each with whether the step
    /// appends (`[+]`) or refers to the last item (`[=]`). See [`ResourceMapping::groups`].
    pub groups: Vec<(usize, bool)>,
}

/// A compiled repeat block.
#[derive(Debug, Clone)]
pub struct Repeat {
    /// The session list (path from the root).
    pub each: Vec<String>,
    /// Elements per item.
    pub elements: Vec<Element>,
}

/// One compiled resource mapping.
#[derive(Debug, Clone)]
pub struct ResourceMapping {
    /// File stem (`encounter`).
    pub name: String,
    /// Where it came from.
    pub file: PathBuf,
    /// FHIR resource type.
    pub resource_type: String,
    /// The id source.
    pub id: Source,
    /// One resource per item of this session list.
    pub each: Option<Vec<String>>,
    /// Only when this source has a value.
    pub when: Option<Source>,
    /// Elements in file order: singles first, then repeats.
    pub elements: Vec<Element>,
    /// Repeat blocks.
    pub repeats: Vec<Repeat>,
    /// How many distinct repeating groups the elements' paths use (the bound of
    /// [`Element::groups`]).
    pub groups: usize,
    /// The rules of [`MappingSet::labels`] whose `applies_to` names this resource type, by index.
    pub label_rules: Vec<usize>,
}

/// A value table.
#[derive(Debug, Clone)]
pub struct Table {
    /// Table name (file stem).
    pub name: String,
    /// The file (the defaults' file; overrides are listed per entry).
    pub file: PathBuf,
    /// The session field that keys it (`session.service.type`).
    pub key: String,
    /// Entries: key -> column -> JSON value.
    pub entries: HashMap<String, HashMap<String, Value>>,
}

/// A compiled labelling rule.
#[derive(Debug, Clone)]
pub struct LabelRule {
    /// Rule name.
    pub name: String,
    /// Resource types.
    pub applies_to: BTreeSet<String>,
    /// ICD-10-CM category ranges (inclusive, three characters).
    pub diagnosis: Vec<(String, String)>,
    /// `treatment_consent` values.
    pub treatment_consent: Vec<String>,
    /// Codings to add to `meta.security`.
    pub labels: Vec<Value>,
}

/// Everything one layering compiles to.
#[derive(Debug, Clone)]
pub struct MappingSet {
    /// Layer names, defaults first (`default`, `fqhc-demo`, `lea-demo`).
    pub layers: Vec<String>,
    /// Resource mappings by file stem.
    pub resources: BTreeMap<String, ResourceMapping>,
    /// Tables by name.
    pub tables: BTreeMap<String, Arc<Table>>,
    /// Labelling rules.
    pub labels: Vec<LabelRule>,
}

/// What the session schema allows: scalar paths (`service.participants[].relationship`), list
/// paths (`diagnoses[]`), and enumerated values per path.
#[derive(Debug, Default)]
pub struct SessionFields {
    scalars: BTreeSet<String>,
    lists: BTreeSet<String>,
    enums: HashMap<String, Vec<String>>,
}

impl SessionFields {
    /// Reads the field paths out of the session JSON Schema.
    pub fn from_schema(schema: &Value) -> Self {
        let mut out = SessionFields::default();
        let defs = schema.get("$defs").cloned().unwrap_or(Value::Null);
        out.walk(schema, "", &defs, 0);
        out
    }

    fn walk(&mut self, node: &Value, path: &str, defs: &Value, depth: usize) {
        if depth > 16 {
            return;
        }
        let node = match node.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/$defs/")) {
            Some(name) => defs.get(name).unwrap_or(node),
            None => node,
        };
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                self.walk(v, &p, defs, depth + 1);
            }
        } else if node.get("type").and_then(Value::as_str) == Some("array") {
            self.lists.insert(path.to_string());
            if let Some(items) = node.get("items") {
                self.walk(items, &format!("{path}[]"), defs, depth + 1);
            }
        } else {
            self.scalars.insert(path.to_string());
            if let Some(values) = node.get("enum").and_then(Value::as_array) {
                let values = values.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
                self.enums.insert(path.to_string(), values);
            }
        }
    }
}

/// A table entry while layering: the file and line it came from, and its columns.
type EntryAt = (PathBuf, usize, HashMap<String, Value>);

/// Loads and checks one layering: `root` (the shipped `mappings/`) and then each override
/// directory in `overrides` (`mappings/overrides/<org>`), later layers winning.
pub fn compile(root: &Path, overrides: &[String], fields: &SessionFields, fhir: &FhirSchema) -> Result<MappingSet, MappingErrors> {
    let mut c = Compiler { fields, fhir, errors: Vec::new() };
    let mut layers = vec![("default".to_string(), root.to_path_buf())];
    for org in overrides {
        layers.push((org.clone(), root.join("overrides").join(org)));
    }

    // Tables: entries merge layer by layer.
    let mut tables: BTreeMap<String, (PathBuf, String, BTreeMap<String, EntryAt>)> = BTreeMap::new();
    for (_, dir) in &layers {
        for (name, path, text) in read_dir_toml(&dir.join("tables"), &mut c.errors) {
            let Some(file) = c.parse::<TableFile>(&path, &text) else { continue };
            let key = file.key.get_ref().clone();
            c.check_session_scalar(&path, &text, &file.key, "key");
            let entry = tables.entry(name.clone()).or_insert_with(|| (path.clone(), key.clone(), BTreeMap::new()));
            if entry.1 != key {
                c.err(&path, &text, file.key.span().start, "key", format!("an override must keep the table's key `{}`", entry.1));
                continue;
            }
            for (k, columns) in file.entries {
                let mut cols = HashMap::new();
                for (col, value) in columns {
                    let at = format!("entries.{}.{}", k.get_ref(), col.get_ref());
                    if let Some(v) = c.coding_or_scalar(&path, &text, &value, &at) {
                        cols.insert(col.into_inner(), v);
                    }
                }
                let line = line_of(&text, k.span().start);
                entry.2.insert(k.into_inner(), (path.clone(), line, cols));
            }
        }
    }
    let mut compiled_tables = BTreeMap::new();
    for (name, (file, key, entries)) in tables {
        // Completeness: every allowed value of the key field has an entry, with the same columns.
        if let Some(allowed) = fields.enums.get(key.trim_start_matches("session.")) {
            for v in allowed {
                if !entries.contains_key(v) {
                    c.errors.push(MappingError {
                        file: file.clone(),
                        line: 1,
                        key: format!("entries.{v}"),
                        message: format!("missing table entry: `{key}` may be `{v}` but table `{name}` has no entry for it"),
                    });
                }
            }
        }
        let columns: BTreeSet<&String> = entries.values().flat_map(|(_, _, cols)| cols.keys()).collect();
        for (k, (path, line, cols)) in &entries {
            for col in &columns {
                if !cols.contains_key(*col) {
                    c.errors.push(MappingError {
                        file: path.clone(),
                        line: *line,
                        key: format!("entries.{k}"),
                        message: format!("entry has no `{col}` column (other entries of table `{name}` do)"),
                    });
                }
            }
        }
        let entries = entries.into_iter().map(|(k, (_, _, cols))| (k, cols)).collect();
        compiled_tables.insert(name.clone(), Arc::new(Table { name, file, key, entries }));
    }

    // Resource files: a later layer replaces a whole file.
    let mut resource_texts: BTreeMap<String, (PathBuf, String)> = BTreeMap::new();
    for (_, dir) in &layers {
        for (name, path, text) in read_dir_toml(&dir.join("fhir"), &mut c.errors) {
            resource_texts.insert(name, (path, text));
        }
    }
    let mut resources = BTreeMap::new();
    for (name, (path, text)) in resource_texts {
        if let Some(file) = c.parse::<ResourceFile>(&path, &text)
            && let Some(m) = c.resource(&name, &path, &text, file, &compiled_tables)
        {
            resources.insert(name, m);
        }
    }
    if resources.is_empty() {
        c.errors.push(MappingError {
            file: root.join("fhir"),
            line: 0,
            key: "fhir".into(),
            message: "no resource mapping files found".into(),
        });
    }

    // Labels: a later layer replaces the file.
    let mut labels = Vec::new();
    let mut labels_file = None;
    for (_, dir) in &layers {
        let p = dir.join("security/labels.toml");
        if p.is_file() {
            labels_file = Some(p);
        }
    }
    if let Some(path) = labels_file {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                if let Some(file) = c.parse::<LabelsFile>(&path, &text) {
                    labels = c.labels(&path, &text, file);
                }
            }
            Err(e) => c.errors.push(MappingError { file: path, line: 0, key: String::new(), message: format!("cannot read: {e}") }),
        }
    }

    for m in resources.values_mut() {
        m.label_rules = labels.iter().enumerate().filter(|(_, rule)| rule.applies_to.contains(&m.resource_type)).map(|(i, _)| i).collect();
    }
    if c.errors.is_empty() {
        Ok(MappingSet { layers: layers.into_iter().map(|(n, _)| n).collect(), resources, tables: compiled_tables, labels })
    } else {
        Err(MappingErrors(c.errors))
    }
}

/// `(stem, path, text)` of every `*.toml` in `dir`, sorted; a missing directory is empty.
fn read_dir_toml(dir: &Path, errors: &mut Vec<MappingError>) -> Vec<(String, PathBuf, String)> {
    let Ok(read) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in read.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((stem, path, text)),
            Err(e) => errors.push(MappingError { file: path, line: 0, key: String::new(), message: format!("cannot read: {e}") }),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Numbers the repeating groups of the elements' paths: a group is the element names up to and
/// including a `[+]` or `[=]` step (`identifier.` in `identifier[=].system`), shared by every
/// element of the resource mapping. Returns how many groups there are.
fn number_groups<'e>(elements: impl Iterator<Item = &'e mut Element>) -> usize {
    let mut names: Vec<String> = Vec::new();
    for e in elements {
        let mut key = String::new();
        let mut groups = Vec::new();
        for s in &e.path {
            key.push_str(s.name());
            key.push('.');
            let append = match s {
                PathStep::Append(_) => true,
                PathStep::Last(_) => false,
                PathStep::Field(_) => continue,
            };
            let n = match names.iter().position(|k| *k == key) {
                Some(n) => n,
                None => {
                    names.push(key.clone());
                    names.len() - 1
                }
            };
            groups.push((n, append));
        }
        e.groups = groups;
    }
    names.len()
}

pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len())).map_or(1, |t| t.bytes().filter(|b| *b == b'\n').count() + 1)
}

struct Compiler<'a> {
    fields: &'a SessionFields,
    fhir: &'a FhirSchema,
    errors: Vec<MappingError>,
}

impl Compiler<'_> {
    fn err(&mut self, file: &Path, text: &str, offset: usize, key: &str, message: String) {
        self.errors.push(MappingError { file: file.to_path_buf(), line: line_of(text, offset), key: key.to_string(), message });
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, file: &Path, text: &str) -> Option<T> {
        match toml::from_str::<T>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let message = e.message().to_string();
                let key = e.span().and_then(|s| text.get(s)).unwrap_or_default().lines().next().unwrap_or_default().to_string();
                self.err(file, text, offset, &key, message);
                None
            }
        }
    }

    fn check_session_scalar(&mut self, file: &Path, text: &str, value: &Spanned<String>, key: &str) {
        match value.get_ref().strip_prefix("session.") {
            Some(p) if self.fields.scalars.contains(p) => {}
            _ => self.err(file, text, value.span().start, key, format!("unknown source field `{}`", value.get_ref())),
        }
    }

    /// A table cell or constant: a scalar, or a coding table that must carry a system and a code.
    fn coding_or_scalar(&mut self, file: &Path, text: &str, value: &Spanned<toml::Value>, key: &str) -> Option<Value> {
        let json = serde_json::to_value(value.get_ref()).ok()?;
        if let Value::Object(map) = &json {
            let has = |k: &str| map.get(k).and_then(Value::as_str).is_some_and(|s| !s.is_empty());
            if map.contains_key("code") && !has("system") {
                self.err(file, text, value.span().start, key, "code without a system".into());
                return None;
            }
            if map.contains_key("system") && !has("code") {
                self.err(file, text, value.span().start, key, "system without a code".into());
                return None;
            }
        }
        Some(json)
    }

    fn source(&mut self, file: &Path, text: &str, s: &Spanned<String>, key: &str, each: Option<&str>) -> Option<Source> {
        let raw = s.get_ref().as_str();
        let (ns, rest) = raw.split_once('.').unwrap_or((raw, ""));
        let path = |r: &str| r.split('.').map(str::to_string).collect::<Vec<_>>();
        let found = match ns {
            "session" if self.fields.scalars.contains(rest) => Some(Source::Session(path(rest))),
            "item" => each.and_then(|list| {
                let full = if rest.is_empty() { format!("{list}[]") } else { format!("{list}[].{rest}") };
                self.fields.scalars.contains(&full).then(|| Source::Item(if rest.is_empty() { Vec::new() } else { path(rest) }))
            }),
            "lea" if ORG_FIELDS.contains(&rest) => Some(Source::Lea(rest.into())),
            "fqhc" if ORG_FIELDS.contains(&rest) => Some(Source::Fqhc(rest.into())),
            "site" if SITE_FIELDS.contains(&rest) => Some(Source::Site(rest.into())),
            "derived" if DERIVED.contains(&rest) && (rest != "item_id" || each.is_some()) => Derived::from_name(rest).map(Source::Derived),
            _ => None,
        };
        if found.is_none() {
            let hint = match ns {
                "item" if each.is_none() => " (`item` is only available inside a [[repeat]] or a file with `each`)",
                "session" | "item" => " (not in schemas/session.schema.json, or not a single value)",
                "lea" | "fqhc" => " (organisation fields: id, name, cds_code, npi, tin)",
                "site" => " (site fields: id, name, cds_code, nces_id)",
                "derived" => " (see mappings/README.md for the derived values)",
                _ => " (sources start with session., item., lea., fqhc., site. or derived.)",
            };
            self.err(file, text, s.span().start, key, format!("unknown source field `{raw}`{hint}"));
        }
        found
    }

    /// The schema path of a source (for table-key checks): `item.relationship` inside
    /// `service.participants` -> `session.service.participants[].relationship`.
    fn schema_path(source: &Source, each: Option<&str>) -> Option<String> {
        match source {
            Source::Session(p) => Some(format!("session.{}", p.join("."))),
            Source::Item(p) => {
                let list = each?;
                Some(if p.is_empty() { format!("session.{list}[]") } else { format!("session.{list}[].{}", p.join(".")) })
            }
            _ => None,
        }
    }

    fn target(&mut self, file: &Path, text: &str, resource_type: &str, path: &Spanned<String>) -> Option<(Vec<PathStep>, TargetKind)> {
        let mut steps = Vec::new();
        let mut def = resource_type.to_string();
        let mut kind = TargetKind::Complex;
        let parts: Vec<&str> = path.get_ref().split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (name, step) = if let Some(n) = part.strip_suffix("[+]") {
                (n, PathStep::Append(n.to_string()))
            } else if let Some(n) = part.strip_suffix("[=]") {
                (n, PathStep::Last(n.to_string()))
            } else {
                (*part, PathStep::Field(part.to_string()))
            };
            let Some(el) = self.fhir.element(&def, name) else {
                self.err(
                    file,
                    text,
                    path.span().start,
                    "path",
                    format!("unknown target element `{}` (`{def}` has no `{name}`)", path.get_ref()),
                );
                return None;
            };
            match (&step, el.array) {
                (PathStep::Field(_), true) => {
                    self.err(file, text, path.span().start, "path", format!("`{name}` repeats in FHIR: write `{name}[+]` or `{name}[=]`"));
                    return None;
                }
                (PathStep::Append(_) | PathStep::Last(_), false) => {
                    self.err(file, text, path.span().start, "path", format!("`{name}` does not repeat in FHIR: write `{name}`"));
                    return None;
                }
                _ => {}
            }
            steps.push(step);
            let last = i + 1 == parts.len();
            match el.definition {
                Some(d) if last => {
                    kind = match d.as_str() {
                        "Coding" => TargetKind::Coding,
                        "CodeableConcept" => TargetKind::CodeableConcept,
                        d if self.fhir.is_primitive(d) => TargetKind::Primitive,
                        _ => TargetKind::Complex,
                    }
                }
                None if last => kind = TargetKind::Primitive,
                Some(d) if !self.fhir.is_primitive(&d) => def = d,
                _ => {
                    self.err(file, text, path.span().start, "path", format!("`{name}` is a primitive and has no child elements"));
                    return None;
                }
            }
        }
        Some((steps, kind))
    }

    fn element(
        &mut self,
        file: &Path,
        text: &str,
        resource_type: &str,
        spec: &ElementSpec,
        each: Option<&str>,
        tables: &BTreeMap<String, Arc<Table>>,
    ) -> Option<Element> {
        let (path, kind) = self.target(file, text, resource_type, &spec.path)?;
        let at = spec.path.span().start;
        let given = [spec.from.is_some(), spec.value.is_some(), spec.template.is_some()].iter().filter(|b| **b).count();
        if given != 1 {
            self.err(file, text, at, "path", "give exactly one of `from`, `value` or `template`".into());
            return None;
        }
        if spec.table.is_some() != spec.column.is_some() || (spec.table.is_some() && spec.from.is_none()) {
            self.err(file, text, at, "table", "a table lookup needs `from`, `table` and `column`".into());
            return None;
        }
        let value = if let Some(v) = &spec.value {
            let json = self.coding_or_scalar(file, text, v, "value")?;
            self.check_kind(file, text, v.span().start, "value", kind, &json)?;
            ValueExpr::Const(super::engine::fit(kind, json))
        } else if let Some(t) = &spec.template {
            if kind != TargetKind::Primitive {
                self.err(file, text, t.span().start, "template", "a template makes text; the target must be a primitive element".into());
                return None;
            }
            ValueExpr::Template(self.template(file, text, t, each)?)
        } else {
            let from = spec.from.as_ref()?;
            let source = self.source(file, text, from, "from", each)?;
            match (&spec.table, &spec.column) {
                (Some(table_name), Some(column)) => {
                    let Some(table) = tables.get(table_name.get_ref()) else {
                        self.err(
                            file,
                            text,
                            table_name.span().start,
                            "table",
                            format!("no table `{}` in mappings/tables", table_name.get_ref()),
                        );
                        return None;
                    };
                    let field = Self::schema_path(&source, each);
                    let key_field = table.key.clone();
                    if field.as_deref() != Some(key_field.as_str()) {
                        self.err(
                            file,
                            text,
                            from.span().start,
                            "from",
                            format!("table `{}` is keyed by `{key_field}`, not `{}`", table.name, from.get_ref()),
                        );
                        return None;
                    }
                    let Some(sample) = table.entries.values().find_map(|cols| cols.get(column.get_ref())) else {
                        self.err(
                            file,
                            text,
                            column.span().start,
                            "column",
                            format!("table `{}` has no column `{}`", table.name, column.get_ref()),
                        );
                        return None;
                    };
                    let sample = sample.clone();
                    self.check_kind(file, text, column.span().start, "column", kind, &sample)?;
                    ValueExpr::Lookup { key: source, table: table.clone(), column: column.get_ref().clone(), field: key_field }
                }
                _ => {
                    if kind != TargetKind::Primitive {
                        self.err(
                            file,
                            text,
                            from.span().start,
                            "from",
                            "a source value is text or a number; map it through a table to fill a coded element".into(),
                        );
                        return None;
                    }
                    match &spec.encode {
                        None => ValueExpr::From(source),
                        Some(e) if e.get_ref() == "base64" => ValueExpr::Base64(source),
                        Some(e) => {
                            self.err(
                                file,
                                text,
                                e.span().start,
                                "encode",
                                format!("unknown encoding `{}`; the one encoding is base64", e.get_ref()),
                            );
                            return None;
                        }
                    }
                }
            }
        };
        if spec.encode.is_some() && (spec.from.is_none() || spec.table.is_some()) {
            self.err(file, text, at, "encode", "`encode` applies to a plain `from` value".into());
            return None;
        }
        Some(Element { path, kind, value, groups: Vec::new() })
    }

    fn check_kind(&mut self, file: &Path, text: &str, at: usize, key: &str, kind: TargetKind, value: &Value) -> Option<()> {
        let is_coding = value.get("code").is_some();
        let ok = match kind {
            TargetKind::Primitive => !value.is_object() && !value.is_array(),
            TargetKind::Coding | TargetKind::CodeableConcept => is_coding || (kind == TargetKind::CodeableConcept && value.is_object()),
            TargetKind::Complex => value.is_object(),
        };
        if !ok {
            let want = match kind {
                TargetKind::Primitive => "a text, number or true/false value",
                TargetKind::Coding | TargetKind::CodeableConcept => "a coding { system, code, display }",
                TargetKind::Complex => "an object",
            };
            self.err(file, text, at, key, format!("the target element needs {want}"));
            return None;
        }
        Some(())
    }

    fn template(&mut self, file: &Path, text: &str, t: &Spanned<String>, each: Option<&str>) -> Option<Vec<TemplatePart>> {
        let mut parts = Vec::new();
        let mut rest = t.get_ref().as_str();
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(TemplatePart::Text(rest[..open].to_string()));
            }
            let Some(close) = rest[open..].find('}') else {
                self.err(file, text, t.span().start, "template", "unclosed `{` in template".into());
                return None;
            };
            let name = Spanned::new(t.span(), rest[open + 1..open + close].trim().to_string());
            parts.push(TemplatePart::Value(self.source(file, text, &name, "template", each)?));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Text(rest.to_string()));
        }
        Some(parts)
    }

    fn resource(
        &mut self,
        name: &str,
        file: &Path,
        text: &str,
        spec: ResourceFile,
        tables: &BTreeMap<String, Arc<Table>>,
    ) -> Option<ResourceMapping> {
        let resource_type = spec.resource.get_ref().clone();
        if !self.fhir.has_type(&resource_type) {
            self.err(file, text, spec.resource.span().start, "resource", format!("`{resource_type}` is not an R4 resource type"));
            return None;
        }
        let before = self.errors.len();
        let each = match &spec.each {
            Some(e) => match e.get_ref().strip_prefix("session.").filter(|l| self.fields.lists.contains(*l)) {
                Some(list) => Some(list.to_string()),
                None => {
                    self.err(file, text, e.span().start, "each", format!("`{}` is not a list in the session schema", e.get_ref()));
                    return None;
                }
            },
            None => None,
        };
        let id = self.source(file, text, &spec.id, "id", each.as_deref());
        let when = spec.when.as_ref().and_then(|w| self.source(file, text, w, "when", each.as_deref()));
        let mut elements: Vec<Element> =
            spec.element.iter().filter_map(|e| self.element(file, text, &resource_type, e, each.as_deref(), tables)).collect();
        let mut repeats = Vec::new();
        for r in &spec.repeat {
            let list = r.each.get_ref().strip_prefix("session.").unwrap_or_default();
            if !self.fields.lists.contains(list) {
                self.err(file, text, r.each.span().start, "each", format!("`{}` is not a list in the session schema", r.each.get_ref()));
                continue;
            }
            let els = r.element.iter().filter_map(|e| self.element(file, text, &resource_type, e, Some(list), tables)).collect();
            repeats.push(Repeat { each: list.split('.').map(str::to_string).collect(), elements: els });
        }
        if self.errors.len() != before {
            return None;
        }
        let groups = number_groups(elements.iter_mut().chain(repeats.iter_mut().flat_map(|r| r.elements.iter_mut())));
        Some(ResourceMapping {
            name: name.to_string(),
            file: file.to_path_buf(),
            resource_type,
            id: id?,
            each: each.map(|l| l.split('.').map(str::to_string).collect()),
            when,
            elements,
            repeats,
            groups,
            label_rules: Vec::new(),
        })
    }

    fn labels(&mut self, file: &Path, text: &str, spec: LabelsFile) -> Vec<LabelRule> {
        let mut out = Vec::new();
        let consents = self.fields.enums.get("treatment_consent").cloned().unwrap_or_default();
        for rule in spec.rule {
            let mut ok = true;
            let mut applies_to = BTreeSet::new();
            for t in &rule.applies_to {
                if self.fhir.has_type(t.get_ref()) {
                    applies_to.insert(t.get_ref().clone());
                } else {
                    self.err(file, text, t.span().start, "applies_to", format!("`{}` is not an R4 resource type", t.get_ref()));
                    ok = false;
                }
            }
            let mut diagnosis = Vec::new();
            for d in &rule.diagnosis {
                let (lo, hi) = d.get_ref().split_once('-').unwrap_or((d.get_ref(), d.get_ref()));
                let cat = |c: &str| {
                    let b = c.as_bytes();
                    b.len() == 3 && b[0].is_ascii_uppercase() && b[1].is_ascii_digit() && b[2].is_ascii_alphanumeric()
                };
                if cat(lo) && cat(hi) && lo <= hi {
                    diagnosis.push((lo.to_string(), hi.to_string()));
                } else {
                    self.err(
                        file,
                        text,
                        d.span().start,
                        "diagnosis",
                        "write an ICD-10-CM category or range such as `F32` or `F10-F19`".into(),
                    );
                    ok = false;
                }
            }
            for t in &rule.treatment_consent {
                if !consents.contains(t.get_ref()) {
                    self.err(
                        file,
                        text,
                        t.span().start,
                        "treatment_consent",
                        format!("`{}` is not a treatment_consent value", t.get_ref()),
                    );
                    ok = false;
                }
            }
            let mut labels = Vec::new();
            for l in &rule.labels {
                match self.coding_or_scalar(file, text, l, "labels") {
                    Some(v) if v.get("system").is_some() => labels.push(v),
                    Some(_) => {
                        self.err(file, text, l.span().start, "labels", "a label is a coding { system, code, display }".into());
                        ok = false;
                    }
                    None => ok = false,
                }
            }
            if ok {
                out.push(LabelRule {
                    name: rule.name.into_inner(),
                    applies_to,
                    diagnosis,
                    treatment_consent: rule.treatment_consent.into_iter().map(Spanned::into_inner).collect(),
                    labels,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_derived_name_has_a_value() {
        for name in DERIVED {
            assert!(Derived::from_name(name).is_some(), "{name}");
        }
        assert_eq!(Derived::from_name("colour"), None);
    }

    #[test]
    fn repeating_groups_are_numbered_across_a_resource_mapping() {
        let el = |steps: &[(&str, char)]| Element {
            path: steps
                .iter()
                .map(|(n, k)| match k {
                    '+' => PathStep::Append((*n).into()),
                    '=' => PathStep::Last((*n).into()),
                    _ => PathStep::Field((*n).into()),
                })
                .collect(),
            kind: TargetKind::Primitive,
            value: ValueExpr::Const(Value::Null),
            groups: Vec::new(),
        };
        let mut elements = [
            el(&[("identifier", '+'), ("value", ' ')]),
            el(&[("identifier", '='), ("type", ' '), ("coding", '+')]),
            el(&[("name", '+'), ("given", '+')]),
            el(&[("period", ' '), ("start", ' ')]),
            el(&[("name", '='), ("family", ' ')]),
        ];
        assert_eq!(number_groups(elements.iter_mut()), 4);
        let groups: Vec<&[(usize, bool)]> = elements.iter().map(|e| e.groups.as_slice()).collect();
        assert_eq!(groups, [&[(0, true)][..], &[(0, false), (1, true)], &[(2, true), (3, true)], &[], &[(2, false)]]);
    }
}
