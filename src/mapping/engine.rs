//! Applies a compiled [`MappingSet`] to one session version. Pure: no I/O, no clock.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::compile::{Derived, Element, LabelRule, MappingSet, PathStep, ResourceMapping, Source, TargetKind, TemplatePart, ValueExpr};
use crate::settings::{Organization, Site};

/// Namespace of the ids the mapping derives (uuid v5).
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7f3a_c1d2_4e5b_4a69_8c7d_0e1f_2a3b_4c5d);

/// The uuid v5 of `parts` joined by newlines, hyphenated lower case. `buf` is scratch space.
fn v5(buf: &mut String, parts: &[&str]) -> String {
    buf.clear();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            buf.push('\n');
        }
        buf.push_str(p);
    }
    let mut out = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v5(&ID_NAMESPACE, buf.as_bytes()).hyphenated().encode_lower(&mut out).into()
}

/// The FHIR Patient id of an LEA's student (one Patient per LEA student id), as the mapping
/// derives it; consents name the student the same way.
pub fn patient_id(lea: &str, district_id: &str) -> String {
    v5(&mut String::new(), &["Patient", lea, district_id])
}

/// The FHIR Practitioner id of a clinician, as the mapping derives it.
pub fn practitioner_id(npi: &str) -> String {
    v5(&mut String::new(), &["Practitioner", npi])
}

/// The FHIR Coverage id of a student's Medi-Cal coverage, as the mapping derives it.
pub fn coverage_id(patient_id: &str) -> String {
    v5(&mut String::new(), &["Coverage", patient_id, "medi-cal"])
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

/// A source value, borrowed where it can be: most values are only copied once, into the
/// resource, and template parts and table keys are not copied at all.
#[derive(Clone, Copy)]
enum Val<'v> {
    Json(&'v Value),
    Str(&'v str),
    Int(i64),
}

impl<'v> Val<'v> {
    fn to_value(self) -> Value {
        match self {
            Val::Json(v) => v.clone(),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Int(i) => Value::from(i),
        }
    }

    /// As text: a string as is, anything else as its JSON.
    fn text(self) -> Cow<'v, str> {
        match self {
            Val::Json(Value::String(s)) => Cow::Borrowed(s),
            Val::Str(s) => Cow::Borrowed(s),
            Val::Json(v) => Cow::Owned(v.to_string()),
            Val::Int(i) => Cow::Owned(i.to_string()),
        }
    }

    fn push_to(self, out: &mut String) {
        match self {
            Val::Json(Value::String(s)) => out.push_str(s),
            Val::Str(s) => out.push_str(s),
            Val::Json(v) => {
                let _ = write!(out, "{v}");
            }
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
        }
    }
}

/// An item of a list with its derived id.
struct Item<'a> {
    value: &'a Value,
    id: String,
}

/// The values derived once per session version (see `mappings/README.md`).
struct Ctx<'a, 's> {
    input: &'a MapInput<'a>,
    received_at: String,
    service_date: &'a str,
    patient_id: String,
    practitioner_id: String,
    practitioner_role_id: String,
    coverage_id: String,
    provenance_id: String,
    /// The items of every session list the set reads, with their ids.
    lists: Vec<(&'s [String], Vec<Item<'a>>)>,
}

fn get_path<'v>(mut v: &'v Value, path: &[String]) -> Option<&'v Value> {
    for p in path {
        v = v.get(p)?;
    }
    (!v.is_null()).then_some(v)
}

fn org_field<'o>(o: &'o Organization, f: &str) -> Option<&'o str> {
    match f {
        "id" => Some(&o.id),
        "name" => Some(&o.name),
        "cds_code" => o.cds_code.as_deref(),
        "npi" => o.npi.as_deref(),
        "tin" => o.tin.as_deref(),
        _ => None,
    }
}

fn site_field<'o>(s: &'o Site, f: &str) -> Option<&'o str> {
    match f {
        "id" => Some(&s.id),
        "name" => Some(&s.name),
        "cds_code" => s.cds_code.as_deref(),
        "nces_id" => s.nces_id.as_deref(),
        _ => None,
    }
}

impl<'a, 's> Ctx<'a, 's> {
    fn new(input: &'a MapInput<'a>, set: &'s MappingSet) -> Self {
        let r = input.record;
        let s = |p: &[&str]| {
            let mut v = r;
            for k in p {
                v = v.get(*k).unwrap_or(&Value::Null);
            }
            v.as_str().unwrap_or_default()
        };
        let lea = input.lea.id.as_str();
        let district_id = s(&["student", "district_id"]);
        let npi = s(&["clinician", "npi"]);
        let mut buf = String::new();
        let patient_id = v5(&mut buf, &["Patient", lea, district_id]);
        let mut ctx = Ctx {
            input,
            received_at: input.received_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            service_date: s(&["service", "start"]).get(..10).unwrap_or_default(),
            practitioner_id: v5(&mut buf, &["Practitioner", npi]),
            practitioner_role_id: v5(&mut buf, &["PractitionerRole", lea, npi]),
            coverage_id: v5(&mut buf, &["Coverage", &patient_id, "medi-cal"]),
            provenance_id: v5(&mut buf, &["Provenance", input.session_id, &input.version.to_string()]),
            patient_id,
            lists: Vec::new(),
        };
        for m in set.resources.values() {
            for list in m.each.iter().chain(m.repeats.iter().map(|r| &r.each)) {
                if !ctx.lists.iter().any(|(l, _)| *l == list.as_slice()) {
                    let items = ctx.make_items(list, &mut buf);
                    ctx.lists.push((list, items));
                }
            }
        }
        ctx
    }

    /// Items of a session list with their ids: people (participants) are scoped to the patient
    /// so the same parent is one RelatedPerson; everything else to the encounter.
    fn make_items(&self, list: &[String], buf: &mut String) -> Vec<Item<'a>> {
        let Some(Value::Array(values)) = get_path(self.input.record, list) else { return Vec::new() };
        let scope = if list.last().is_some_and(|l| l == "participants") { self.patient_id.as_str() } else { self.input.session_id };
        let list_name = list.join(".");
        values
            .iter()
            .map(|v| {
                let text = v.to_string();
                Item { value: v, id: v5(buf, &[scope, &list_name, &text]) }
            })
            .collect()
    }

    fn items(&self, list: &[String]) -> &[Item<'a>] {
        self.lists.iter().find(|(l, _)| *l == list).map(|(_, items)| items.as_slice()).unwrap_or_default()
    }

    fn derived(&self, d: Derived) -> Option<Val<'_>> {
        let input = self.input;
        Some(match d {
            Derived::SessionId | Derived::EncounterId => Val::Str(input.session_id),
            Derived::Version => Val::Int(input.version),
            Derived::ContentSha256 => Val::Str(input.content_sha256),
            Derived::RawSha256 => Val::Str(input.raw_sha256),
            Derived::ReceivedAt => Val::Str(&self.received_at),
            Derived::Minutes => Val::Int(input.minutes),
            Derived::ServiceDate => Val::Str(self.service_date),
            Derived::PatientId => Val::Str(&self.patient_id),
            Derived::PractitionerId => Val::Str(&self.practitioner_id),
            Derived::PractitionerRoleId => Val::Str(&self.practitioner_role_id),
            Derived::CoverageId => Val::Str(&self.coverage_id),
            Derived::ProvenanceId => Val::Str(&self.provenance_id),
            Derived::LocationId => Val::Str(&input.site.id),
            Derived::LeaOrgId => Val::Str(&input.lea.id),
            Derived::FqhcOrgId => Val::Str(&input.fqhc?.id),
            // Only within an item (see `source`).
            Derived::ItemId => return None,
        })
    }

    fn source<'x>(&'x self, s: &Source, item: Option<&'x Item<'a>>) -> Option<Val<'x>> {
        match s {
            Source::Session(p) => get_path(self.input.record, p).map(Val::Json),
            Source::Item(p) => item.and_then(|i| get_path(i.value, p)).map(Val::Json),
            Source::Lea(f) => org_field(self.input.lea, f).map(Val::Str),
            Source::Fqhc(f) => self.input.fqhc.and_then(|o| org_field(o, f)).map(Val::Str),
            Source::Site(f) => site_field(self.input.site, f).map(Val::Str),
            Source::Derived(Derived::ItemId) => item.map(|i| Val::Str(&i.id)),
            Source::Derived(d) => self.derived(*d),
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

    fn value(&self, e: &Element, item: Option<&Item<'a>>, list: Option<&[String]>) -> Result<Option<Value>, MissingEntry> {
        let v = match &e.value {
            ValueExpr::Const(v) => return Ok(Some(v.clone())),
            ValueExpr::From(s) => match self.source(s, item) {
                Some(v) => v.to_value(),
                None => return Ok(None),
            },
            ValueExpr::Base64(s) => match self.source(s, item) {
                Some(v) => {
                    use base64::Engine as _;
                    Value::String(base64::engine::general_purpose::STANDARD.encode(v.text().as_bytes()))
                }
                None => return Ok(None),
            },
            ValueExpr::Template(parts) => {
                let mut out = String::with_capacity(TEMPLATE_CAPACITY);
                for p in parts {
                    match p {
                        TemplatePart::Text(t) => out.push_str(t),
                        TemplatePart::Value(s) => match self.source(s, item) {
                            Some(v) => v.push_to(&mut out),
                            None => return Ok(None),
                        },
                    }
                }
                Value::String(out)
            }
            ValueExpr::Lookup { key, table, column, field } => {
                let Some(k) = self.source(key, item) else { return Ok(None) };
                match table.entries.get(k.text().as_ref()).and_then(|cols| cols.get(column)) {
                    Some(v) => v.clone(),
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
        };
        Ok(Some(fit(e.kind, v)))
    }
}

/// Room for a template's text: enough for a reference with a uuid (`Patient/<uuid>`).
const TEMPLATE_CAPACITY: usize = 64;

/// `v` in the shape of a target element of kind `kind`: a coding set on a CodeableConcept
/// becomes `{ coding: [v], text: v.display }`; anything else is kept as is.
pub(crate) fn fit(kind: TargetKind, v: Value) -> Value {
    match kind {
        TargetKind::CodeableConcept if v.get("coding").is_none() && v.get("code").is_some() => {
            let text = v.get("display").cloned();
            let mut cc = Map::new();
            cc.insert("coding".into(), Value::Array(vec![v]));
            if let Some(d) = text {
                cc.insert("text".into(), d);
            }
            Value::Object(cc)
        }
        _ => v,
    }
}

/// Sets `value` at `steps` below `node`, making the objects and arrays on the way.
fn set(node: &mut Value, steps: &[PathStep], value: Value) {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Some(obj) = node.as_object_mut() else { return };
    let Some((first, rest)) = steps.split_first() else { return };
    match first {
        PathStep::Field(n) => {
            if rest.is_empty() {
                match obj.get_mut(n) {
                    Some(slot) => *slot = value,
                    None => {
                        obj.insert(n.clone(), value);
                    }
                }
            } else {
                match obj.get_mut(n) {
                    Some(child) => set(child, rest, value),
                    None => {
                        let mut child = Value::Object(Map::new());
                        set(&mut child, rest, value);
                        obj.insert(n.clone(), child);
                    }
                }
            }
        }
        PathStep::Append(n) | PathStep::Last(n) => {
            let slot = match obj.get_mut(n) {
                Some(slot) => slot,
                None => obj.entry(n.clone()).or_insert_with(|| Value::Array(Vec::new())),
            };
            if !slot.is_array() {
                *slot = Value::Array(Vec::new());
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
                    arr.push(Value::Object(Map::new()));
                }
                if let Some(last) = arr.last_mut() {
                    set(last, rest, value);
                }
            }
        }
    }
}

fn apply_elements(
    ctx: &Ctx<'_, '_>,
    out: &mut Value,
    elements: &[Element],
    item: Option<&Item<'_>>,
    list: Option<&[String]>,
    skipped: &mut [bool],
) -> Result<(), MissingEntry> {
    let is_skipped = |skipped: &[bool], g: usize| skipped.get(g).copied().unwrap_or(false);
    for e in elements {
        // The first element of a `[+]` group decides whether the item exists: when its value is
        // absent, the `[=]` elements that follow are skipped too.
        if e.groups.iter().any(|(g, append)| !append && is_skipped(skipped, *g)) {
            continue;
        }
        let value = ctx.value(e, item, list)?;
        let absent = value.is_none();
        for (g, append) in &e.groups {
            if *append && let Some(s) = skipped.get_mut(*g) {
                *s = absent;
            }
        }
        if let Some(v) = value {
            set(out, &e.path, v);
        }
    }
    Ok(())
}

fn map_one(ctx: &Ctx<'_, '_>, m: &ResourceMapping, item: Option<&Item<'_>>) -> Result<Option<Value>, MissingEntry> {
    if let Some(w) = &m.when
        && ctx.source(w, item).is_none()
    {
        return Ok(None);
    }
    let Some(id) = ctx.source(&m.id, item) else { return Ok(None) };
    let mut root = Map::new();
    root.insert("resourceType".into(), Value::String(m.resource_type.clone()));
    root.insert("id".into(), id.to_value());
    let mut out = Value::Object(root);
    let mut few = [false; 32];
    let mut many = Vec::new();
    let skipped: &mut [bool] = if m.groups <= few.len() {
        &mut few[..m.groups]
    } else {
        many.resize(m.groups, false);
        &mut many
    };
    apply_elements(ctx, &mut out, &m.elements, item, m.each.as_deref(), skipped)?;
    for r in &m.repeats {
        for it in ctx.items(&r.each) {
            apply_elements(ctx, &mut out, &r.elements, Some(it), Some(&r.each), skipped)?;
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

/// Adds the labels of the matching rules to `meta.security`, without duplicates.
fn add_labels(resource: &mut Value, labels: &[&Value]) {
    if labels.is_empty() {
        return;
    }
    let meta = resource.as_object_mut().map(|o| o.entry("meta").or_insert_with(|| Value::Object(Map::new())));
    let Some(meta) = meta else { return };
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    let security = meta.as_object_mut().map(|m| m.entry("security").or_insert_with(|| Value::Array(Vec::new())));
    let Some(Value::Array(sec)) = security else { return };
    for l in labels {
        if !sec.iter().any(|s| s.get("system") == l.get("system") && s.get("code") == l.get("code")) {
            sec.push((*l).clone());
        }
    }
}

/// Maps one session version through `set`: every resource file in turn, labels, provenance
/// targets. Fails only when a value has no table entry.
pub fn produce(set: &MappingSet, input: &MapInput<'_>) -> Result<Produced, MissingEntry> {
    let ctx = Ctx::new(input, set);
    let session_dx: Vec<&str> =
        input.record.get("diagnoses").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let treatment_consent = input.record.get("treatment_consent").and_then(Value::as_str);
    // Each resource with its rank in the output order.
    let mut produced: Vec<(usize, Value)> = Vec::with_capacity(set.resources.len() + 8);
    let rank = |r: &Value| type_rank(r.get("resourceType").and_then(Value::as_str).unwrap_or_default());
    let mut labels: Vec<&Value> = Vec::new();
    let mut label = |r: &mut Value, m: &ResourceMapping, dx: &[&str]| {
        labels.clear();
        for rule in m.label_rules.iter().filter_map(|i| set.labels.get(*i)) {
            if rule_matches(rule, &m.resource_type, dx, treatment_consent) {
                labels.extend(rule.labels.iter());
            }
        }
        add_labels(r, &labels);
    };
    for m in set.resources.values() {
        match &m.each {
            Some(list) => {
                // A resource made from one diagnosis is labelled by that code alone.
                let per_diagnosis = list.last().is_some_and(|l| l == "diagnoses");
                for it in ctx.items(list) {
                    if let Some(mut r) = map_one(&ctx, m, Some(it))? {
                        let own = it.value.as_str();
                        label(&mut r, m, if per_diagnosis { own.as_slice() } else { &session_dx });
                        produced.push((rank(&r), r));
                    }
                }
            }
            None => {
                if let Some(mut r) = map_one(&ctx, m, None)? {
                    label(&mut r, m, &session_dx);
                    produced.push((rank(&r), r));
                }
            }
        }
    }
    produced.sort_by_key(|(rank, _)| *rank);
    // Provenance targets every other resource of this session version.
    let provenance = type_rank("Provenance");
    let mut targets: Vec<Value> = Vec::with_capacity(produced.len());
    targets.extend(produced.iter().filter(|(rank, _)| *rank != provenance).map(|(_, r)| {
        let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
        let (ty, id) = (text("resourceType"), text("id"));
        let mut reference = String::with_capacity(ty.len() + 1 + id.len());
        reference.push_str(ty);
        reference.push('/');
        reference.push_str(id);
        let mut target = Map::new();
        target.insert("reference".into(), Value::String(reference));
        Value::Object(target)
    }));
    let mut provenances = produced.iter_mut().filter(|(rank, _)| *rank == provenance).peekable();
    let mut targets = Some(targets);
    while let Some((_, r)) = provenances.next() {
        let t = if provenances.peek().is_some() { targets.clone() } else { targets.take() };
        r["target"] = Value::Array(t.unwrap_or_default());
    }
    Ok(Produced { resources: produced.into_iter().map(|(_, r)| r).collect() })
}
