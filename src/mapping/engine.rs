//! Applies a compiled [`MappingSet`] to one session version. Pure: no I/O, no clock.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use super::compile::{Element, LabelRule, MappingSet, PathStep, ResourceMapping, Source, TargetKind, TemplatePart, ValueExpr};
use crate::settings::{Organization, Site};

/// Namespace of the ids the mapping derives (uuid v5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7f3a_c1d2_4e5b_4a69_8c7d_0e1f_2a3b_4c5d);

fn v5(parts: &[&str]) -> String {
    uuid::Uuid::new_v5(&ID_NAMESPACE, parts.join("\n").as_bytes()).to_string()
}

/// Everything the mapping of one session version reads.
#[derive(Debug, Clone, Copy)]
pub struct MapInput<'a> {
    /// The submitted record (canonical JSON).
    pub record: &'a Value,
    /// Session id (stable across versions).
    pub session_id: &'a str,
    /// Version number.
    pub version: i64,
    /// SHA-256 of the canonical record.
    pub content_sha256: &'a str,
    /// SHA-256 of the submitted bytes.
    pub raw_sha256: &'a str,
    /// When the version was received.
    pub received_at: DateTime<Utc>,
    /// Face-to-face minutes (validated).
    pub minutes: i64,
    /// The LEA.
    pub lea: &'a Organization,
    /// The site.
    pub site: &'a Site,
    /// The FQHC whose scope includes the site, if any.
    pub fqhc: Option<&'a Organization>,
}

/// A value with no table entry: names the field, the table and its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingEntry {
    /// Session field (`session.service.type`).
    pub field: String,
    /// JSON pointer of the value in the record, when it is known.
    pub pointer: String,
    /// Table name.
    pub table: String,
    /// The table file.
    pub file: String,
}

/// The resources of one session version, before validation.
#[derive(Debug, Clone, Default)]
pub struct Produced {
    /// Resources in dependency order (shared resources first, Provenance last).
    pub resources: Vec<Value>,
}

fn type_rank(t: &str) -> usize {
    const ORDER: &[&str] =
        &["Organization", "Location", "Patient", "Practitioner", "PractitionerRole", "RelatedPerson", "Coverage", "Condition", "Encounter"];
    ORDER.iter().position(|o| *o == t).unwrap_or(if t == "Provenance" { 100 } else { 50 })
}

struct Ctx<'a> {
    input: &'a MapInput<'a>,
    derived: BTreeMap<&'static str, Value>,
}

fn get_path<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for p in path {
        v = v.get(p)?;
    }
    (!v.is_null()).then_some(v)
}

fn org_field(o: &Organization, f: &str) -> Option<Value> {
    match f {
        "id" => Some(o.id.clone()),
        "name" => Some(o.name.clone()),
        "cds_code" => o.cds_code.clone(),
        "npi" => o.npi.clone(),
        "tin" => o.tin.clone(),
        _ => None,
    }
    .map(Value::String)
}

fn site_field(s: &Site, f: &str) -> Option<Value> {
    match f {
        "id" => Some(s.id.clone()),
        "name" => Some(s.name.clone()),
        "cds_code" => s.cds_code.clone(),
        "nces_id" => s.nces_id.clone(),
        _ => None,
    }
    .map(Value::String)
}

/// An item of a list with its derived id.
struct Item<'a> {
    value: &'a Value,
    id: String,
}

impl Ctx<'_> {
    fn new<'a>(input: &'a MapInput<'a>) -> Ctx<'a> {
        let r = input.record;
        let s = |p: &[&str]| {
            let mut v = r;
            for k in p {
                v = v.get(*k).unwrap_or(&Value::Null);
            }
            v.as_str().unwrap_or_default().to_string()
        };
        let lea = input.lea.id.as_str();
        let district_id = s(&["student", "district_id"]);
        let npi = s(&["clinician", "npi"]);
        let patient_id = v5(&["Patient", lea, &district_id]);
        let mut d = BTreeMap::new();
        d.insert("session_id", json!(input.session_id));
        d.insert("version", json!(input.version));
        d.insert("content_sha256", json!(input.content_sha256));
        d.insert("raw_sha256", json!(input.raw_sha256));
        d.insert("received_at", json!(input.received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)));
        d.insert("minutes", json!(input.minutes));
        d.insert("service_date", json!(s(&["service", "start"]).get(..10).unwrap_or_default()));
        d.insert("practitioner_id", json!(v5(&["Practitioner", &npi])));
        d.insert("practitioner_role_id", json!(v5(&["PractitionerRole", lea, &npi])));
        d.insert("encounter_id", json!(input.session_id));
        d.insert("coverage_id", json!(v5(&["Coverage", &patient_id, "medi-cal"])));
        d.insert("provenance_id", json!(v5(&["Provenance", input.session_id, &input.version.to_string()])));
        d.insert("location_id", json!(input.site.id));
        d.insert("lea_org_id", json!(lea));
        if let Some(f) = input.fqhc {
            d.insert("fqhc_org_id", json!(f.id));
        }
        d.insert("patient_id", json!(patient_id));
        Ctx { input, derived: d }
    }

    /// Items of a session list with their ids: people (participants) are scoped to the patient
    /// so the same parent is one RelatedPerson; everything else to the encounter.
    fn items(&self, list: &[String]) -> Vec<Item<'_>> {
        let Some(Value::Array(values)) = get_path(self.input.record, list) else { return Vec::new() };
        let scope =
            if list.last().is_some_and(|l| l == "participants") { &self.derived["patient_id"] } else { &self.derived["encounter_id"] };
        let scope = scope.as_str().unwrap_or_default();
        let list_name = list.join(".");
        values.iter().map(|v| Item { value: v, id: v5(&[scope, &list_name, &v.to_string()]) }).collect()
    }

    fn source(&self, s: &Source, item: Option<&Item<'_>>) -> Option<Value> {
        match s {
            Source::Session(p) => get_path(self.input.record, p).cloned(),
            Source::Item(p) => item.and_then(|i| get_path(i.value, p)).cloned(),
            Source::Lea(f) => org_field(self.input.lea, f),
            Source::Fqhc(f) => self.input.fqhc.and_then(|o| org_field(o, f)),
            Source::Site(f) => site_field(self.input.site, f),
            Source::Derived(name) if name == "item_id" => item.map(|i| Value::String(i.id.clone())),
            Source::Derived(name) => self.derived.get(name.as_str()).cloned(),
        }
    }

    fn pointer(&self, s: &Source, item: Option<&Item<'_>>, list: Option<&[String]>) -> String {
        match (s, item, list) {
            (Source::Session(p), _, _) => format!("/{}", p.join("/")),
            (Source::Item(p), Some(i), Some(l)) => {
                let index = get_path(self.input.record, l)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().position(|v| std::ptr::eq(v, i.value)))
                    .unwrap_or(0);
                let mut out = format!("/{}/{index}", l.join("/"));
                for seg in p {
                    out.push('/');
                    out.push_str(seg);
                }
                out
            }
            _ => String::new(),
        }
    }

    fn value(&self, e: &Element, item: Option<&Item<'_>>, list: Option<&[String]>) -> Result<Option<Value>, MissingEntry> {
        let v = match &e.value {
            ValueExpr::Const(v) => Some(v.clone()),
            ValueExpr::From(s) => self.source(s, item),
            ValueExpr::Template(parts) => {
                let mut out = String::new();
                for p in parts {
                    match p {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Value(s) => match self.source(s, item) {
                            Some(Value::String(v)) => out.push_str(&v),
                            Some(v) => out.push_str(&v.to_string()),
                            None => return Ok(None),
                        },
                    }
                }
                Some(Value::String(out))
            }
            ValueExpr::Lookup { key, table, column, field } => match self.source(key, item) {
                None => None,
                Some(k) => {
                    let k = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                    match table.entries.get(&k).and_then(|cols| cols.get(column)) {
                        Some(v) => Some(v.clone()),
                        None => {
                            return Err(MissingEntry {
                                field: field.clone(),
                                pointer: self.pointer(key, item, list),
                                table: table.name.clone(),
                                file: table.file.display().to_string(),
                            });
                        }
                    }
                }
            },
        };
        Ok(v.map(|v| match e.kind {
            TargetKind::CodeableConcept if v.get("coding").is_none() && v.get("code").is_some() => {
                let mut cc = json!({ "coding": [v.clone()] });
                if let Some(d) = v.get("display") {
                    cc["text"] = d.clone();
                }
                cc
            }
            _ => v,
        }))
    }
}

/// The repeating steps of a path as group keys (the element names up to that step), each with
/// whether it appends (`[+]`) or refers to the last item (`[=]`).
fn group_keys(steps: &[PathStep]) -> Vec<(String, bool)> {
    let mut key = String::new();
    let mut out = Vec::new();
    for s in steps {
        key.push_str(s.name());
        key.push('.');
        match s {
            PathStep::Append(_) => out.push((key.clone(), true)),
            PathStep::Last(_) => out.push((key.clone(), false)),
            PathStep::Field(_) => {}
        }
    }
    out
}

fn set(node: &mut Value, steps: &[PathStep], value: Value) {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Some(obj) = node.as_object_mut() else { return };
    let Some((first, rest)) = steps.split_first() else { return };
    match first {
        PathStep::Field(n) => {
            if rest.is_empty() {
                obj.insert(n.clone(), value);
            } else {
                set(obj.entry(n.clone()).or_insert_with(|| json!({})), rest, value);
            }
        }
        PathStep::Append(n) | PathStep::Last(n) => {
            let slot = obj.entry(n.clone()).or_insert_with(|| json!([]));
            if !slot.is_array() {
                *slot = json!([]);
            }
            let Some(arr) = slot.as_array_mut() else { return };
            let append = matches!(first, PathStep::Append(_)) || arr.is_empty();
            if rest.is_empty() {
                if append {
                    arr.push(value);
                } else if let Some(last) = arr.last_mut() {
                    *last = value;
                }
            } else {
                if append {
                    arr.push(json!({}));
                }
                if let Some(last) = arr.last_mut() {
                    set(last, rest, value);
                }
            }
        }
    }
}

fn apply_elements(
    ctx: &Ctx<'_>,
    out: &mut Value,
    elements: &[Element],
    item: Option<&Item<'_>>,
    list: Option<&[String]>,
    skipped: &mut HashSet<String>,
) -> Result<(), MissingEntry> {
    for e in elements {
        // The first element of a `[+]` group decides whether the item exists: when its value is
        // absent, the `[=]` elements that follow are skipped too.
        let groups = group_keys(&e.path);
        if groups.iter().any(|(key, append)| !append && skipped.contains(key)) {
            continue;
        }
        let appends = groups.into_iter().filter(|(_, append)| *append).map(|(k, _)| k);
        match ctx.value(e, item, list)? {
            Some(v) => {
                for key in appends {
                    skipped.remove(&key);
                }
                set(out, &e.path, v);
            }
            None => skipped.extend(appends),
        }
    }
    Ok(())
}

fn map_one(ctx: &Ctx<'_>, m: &ResourceMapping, item: Option<&Item<'_>>) -> Result<Option<Value>, MissingEntry> {
    if let Some(w) = &m.when
        && ctx.source(w, item).is_none()
    {
        return Ok(None);
    }
    let Some(id) = ctx.source(&m.id, item) else { return Ok(None) };
    let mut out = json!({ "resourceType": m.resource_type, "id": id });
    let mut skipped = HashSet::new();
    apply_elements(ctx, &mut out, &m.elements, item, m.each.as_deref(), &mut skipped)?;
    for r in &m.repeats {
        for it in ctx.items(&r.each) {
            apply_elements(ctx, &mut out, &r.elements, Some(&it), Some(&r.each), &mut skipped)?;
        }
    }
    Ok(Some(out))
}

fn category(code: &str) -> &str {
    code.get(..3).unwrap_or(code)
}

fn rule_matches(rule: &LabelRule, resource_type: &str, diagnoses: &[&str], treatment_consent: Option<&str>) -> bool {
    if !rule.applies_to.contains(resource_type) {
        return false;
    }
    let dx_ok = rule.diagnosis.is_empty()
        || diagnoses.iter().any(|d| rule.diagnosis.iter().any(|(lo, hi)| (lo.as_str()..=hi.as_str()).contains(&category(d))));
    let consent_ok = rule.treatment_consent.is_empty() || treatment_consent.is_some_and(|t| rule.treatment_consent.iter().any(|r| r == t));
    dx_ok && consent_ok
}

fn add_labels(resource: &mut Value, labels: &[Value]) {
    if labels.is_empty() {
        return;
    }
    let meta = resource.as_object_mut().map(|o| o.entry("meta").or_insert_with(|| json!({})));
    let Some(meta) = meta else { return };
    if !meta.is_object() {
        *meta = json!({});
    }
    let security = meta.as_object_mut().map(|m| m.entry("security").or_insert_with(|| json!([])));
    let Some(Value::Array(sec)) = security else { return };
    for l in labels {
        if !sec.iter().any(|s| s.get("system") == l.get("system") && s.get("code") == l.get("code")) {
            sec.push(l.clone());
        }
    }
}

/// Maps one session version through `set`: every resource file in turn, labels, provenance
/// targets. Fails only when a value has no table entry.
pub fn produce(set: &MappingSet, input: &MapInput<'_>) -> Result<Produced, MissingEntry> {
    let ctx = Ctx::new(input);
    let session_dx: Vec<&str> =
        input.record.get("diagnoses").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let treatment_consent = input.record.get("treatment_consent").and_then(Value::as_str);
    let mut resources = Vec::new();
    for m in set.resources.values() {
        let produced: Vec<(Value, Vec<&str>)> = match &m.each {
            Some(list) => {
                let mut out = Vec::new();
                for it in ctx.items(list) {
                    if let Some(r) = map_one(&ctx, m, Some(&it))? {
                        // A resource made from one diagnosis is labelled by that code alone.
                        let dx = if list.last().is_some_and(|l| l == "diagnoses") {
                            it.value.as_str().into_iter().collect()
                        } else {
                            session_dx.clone()
                        };
                        out.push((r, dx));
                    }
                }
                out
            }
            None => map_one(&ctx, m, None)?.map(|r| (r, session_dx.clone())).into_iter().collect(),
        };
        for (mut r, dx) in produced {
            let labels: Vec<Value> = set
                .labels
                .iter()
                .filter(|rule| rule_matches(rule, &m.resource_type, &dx, treatment_consent))
                .flat_map(|rule| rule.labels.iter().cloned())
                .collect();
            add_labels(&mut r, &labels);
            resources.push(r);
        }
    }
    resources.sort_by_key(|r| type_rank(r["resourceType"].as_str().unwrap_or_default()));
    // Provenance targets every other resource of this session version.
    let targets: Vec<Value> = resources
        .iter()
        .filter(|r| r["resourceType"] != "Provenance")
        .map(|r| json!({ "reference": format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default()) }))
        .collect();
    for r in resources.iter_mut().filter(|r| r["resourceType"] == "Provenance") {
        r["target"] = Value::Array(targets.clone());
    }
    Ok(Produced { resources })
}
