//! FHIR R4 search: which parameters the gateway supports, how a resource is indexed for them, and
//! how a search URL is parsed into a typed [`SearchRequest`] (the SQL lives in `store::fhir`).
//!
//! The code names only the supported parameters ([`SUPPORTED`]); their type, canonical URL,
//! target types and element path come from the official definitions
//! (`schemas/fhir/search-parameters.bundle.json`, see `schemas/fhir/ORIGIN.md`).
//!
//! Dates are compared as ranges (FHIR R4 §3.1.1.4.2): a value or a parameter with day precision
//! covers the whole day; times without an offset are read as UTC.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc};
use serde_json::Value;

use crate::fhir::{IssueCode, OutcomeIssue};

/// File name of the official definitions under `schemas/`.
pub const SEARCH_PARAMETERS_FILE: &str = "fhir/search-parameters.bundle.json";

/// Resource types the FHIR API serves (what the mapping produces).
pub const SERVED_TYPES: &[&str] = &[
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Encounter",
    "Condition",
    "Coverage",
    "RelatedPerson",
    "Provenance",
    "DocumentReference",
    "Consent",
];

/// Supported search parameters by resource type (besides `_id` and `_lastUpdated`, which every
/// served type supports).
pub const SUPPORTED: &[(&str, &[&str])] = &[
    ("Patient", &["identifier", "birthdate", "name"]),
    ("Encounter", &["patient", "subject", "date", "location", "practitioner", "status"]),
    ("Condition", &["patient", "encounter", "code"]),
    ("Coverage", &["beneficiary"]),
    ("Provenance", &["target"]),
    ("RelatedPerson", &["patient"]),
    ("DocumentReference", &["patient", "encounter"]),
    ("Consent", &["patient", "status", "actor", "period"]),
];

/// Supported `_include` values: (source type, reference parameter).
pub const INCLUDES: &[(&str, &str)] = &[("Encounter", "patient"), ("Encounter", "practitioner"), ("Encounter", "location")];

/// Default and largest page size.
pub const DEFAULT_COUNT: usize = 50;
/// Largest `_count`.
pub const MAX_COUNT: usize = 1_000;
/// Most comma-separated alternatives in one parameter.
const MAX_ALTERNATIVES: usize = 100;

/// The kinds of search parameter the gateway implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    /// `system|code`.
    Token,
    /// `Type/id`.
    Reference,
    /// Case-insensitive prefix of a string or a name part.
    String,
    /// A date range with comparison prefixes.
    Date,
}

impl ParamKind {
    /// The FHIR `SearchParamType` code.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::String => "string",
            ParamKind::Date => "date",
        }
    }
}

/// One supported search parameter of one resource type.
#[derive(Debug, Clone)]
pub struct ParamDef {
    /// Resource type.
    pub resource_type: String,
    /// Parameter name (`patient`).
    pub name: String,
    /// Kind.
    pub kind: ParamKind,
    /// Canonical URL of the official definition.
    pub url: String,
    /// Element path below the resource (`["participant", "individual"]`).
    pub path: Vec<String>,
    /// For references: the resource types a value may point at.
    pub targets: Vec<String>,
    /// The definition's description (for the CapabilityStatement).
    pub documentation: String,
}

impl ParamDef {
    /// Whether reference `Type/id` points at one of the parameter's target types.
    fn targets_type(&self, reference: &str) -> bool {
        reference.split_once('/').is_some_and(|(ty, _)| self.targets.iter().any(|t| t == ty))
    }
}

/// The supported parameters, built from the official definitions.
#[derive(Debug, Clone)]
pub struct SearchRegistry {
    params: BTreeMap<(String, String), ParamDef>,
    common: Vec<(String, String)>,
}

/// One row of the search index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Parameter name.
    pub param: String,
    /// Token system.
    pub system: Option<String>,
    /// Token code, `Type/id` reference or normalised string.
    pub value: Option<String>,
    /// Start of a date range (µs since the epoch, UTC).
    pub lo: Option<i64>,
    /// End of a date range, inclusive.
    pub hi: Option<i64>,
}

impl SearchRegistry {
    /// Loads `schemas/fhir/search-parameters.bundle.json`.
    pub fn load(schemas_dir: &Path) -> anyhow::Result<Self> {
        let path = schemas_dir.join(SEARCH_PARAMETERS_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let bundle: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_bundle(&bundle).with_context(|| format!("search parameters in {}", path.display()))
    }

    /// Builds the registry from the official Bundle of SearchParameter resources.
    pub fn from_bundle(bundle: &Value) -> anyhow::Result<Self> {
        let mut by_key: HashMap<(&str, &str), &Value> = HashMap::new();
        for e in bundle["entry"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let r = &e["resource"];
            let Some(code) = r["code"].as_str() else { continue };
            for base in r["base"].as_array().map(Vec::as_slice).unwrap_or_default() {
                if let Some(base) = base.as_str() {
                    by_key.insert((base, code), r);
                }
            }
        }
        let mut params = BTreeMap::new();
        for (ty, names) in SUPPORTED {
            for name in *names {
                let r = by_key.get(&(*ty, *name)).with_context(|| format!("no official definition of {ty}?{name}"))?;
                let kind = match r["type"].as_str() {
                    Some("token") => ParamKind::Token,
                    Some("reference") => ParamKind::Reference,
                    Some("string") => ParamKind::String,
                    Some("date") => ParamKind::Date,
                    other => bail!("{ty}?{name}: type {other:?} is not implemented"),
                };
                let expression = r["expression"].as_str().unwrap_or_default();
                let (path, only) = path_for(ty, expression).with_context(|| format!("{ty}?{name}: expression {expression:?}"))?;
                let targets = match only {
                    Some(t) => vec![t],
                    None => {
                        r["target"].as_array().map(|t| t.iter().filter_map(Value::as_str).map(str::to_owned).collect()).unwrap_or_default()
                    }
                };
                params.insert(
                    ((*ty).to_string(), (*name).to_string()),
                    ParamDef {
                        resource_type: (*ty).to_string(),
                        name: (*name).to_string(),
                        kind,
                        url: r["url"].as_str().unwrap_or_default().to_string(),
                        path,
                        targets,
                        documentation: r["description"].as_str().unwrap_or_default().to_string(),
                    },
                );
            }
        }
        let common = ["_id", "_lastUpdated"]
            .iter()
            .map(|n| {
                let url = by_key.get(&("Resource", *n)).and_then(|r| r["url"].as_str()).unwrap_or_default();
                ((*n).to_string(), url.to_string())
            })
            .collect();
        Ok(Self { params, common })
    }

    /// The definition of `name` on `resource_type`.
    pub fn param(&self, resource_type: &str, name: &str) -> Option<&ParamDef> {
        self.params.get(&(resource_type.to_string(), name.to_string()))
    }

    /// The parameters of one type, by name.
    pub fn params_of<'a>(&'a self, resource_type: &'a str) -> impl Iterator<Item = &'a ParamDef> + 'a {
        self.params.values().filter(move |p| p.resource_type == resource_type)
    }

    /// `_id` and `_lastUpdated` with their definition URLs.
    pub fn common(&self) -> &[(String, String)] {
        &self.common
    }

    /// The index rows of a resource for every supported parameter of its type.
    pub fn index(&self, resource: &Value) -> Vec<IndexEntry> {
        let ty = resource["resourceType"].as_str().unwrap_or_default();
        let mut out = Vec::new();
        for p in self.params_of(ty) {
            let mut values = Vec::new();
            collect(resource, &p.path, &mut values);
            for v in values {
                index_value(p, v, &mut out);
            }
        }
        out.dedup();
        out
    }
}

/// Reads `Type.a.b` or `Type.a.b.where(resolve() is X)` out of a (possibly `|`-joined) expression.
fn path_for(ty: &str, expression: &str) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let prefix = format!("{ty}.");
    let part = expression.split(" | ").map(str::trim).find(|p| p.starts_with(&prefix)).with_context(|| format!("no part for {ty}"))?;
    let mut rest = &part[prefix.len()..];
    let mut only = None;
    if let Some(i) = rest.find(".where(resolve() is ") {
        let t = rest[i + ".where(resolve() is ".len()..].trim_end_matches(')');
        only = Some(t.to_string());
        rest = &rest[..i];
    }
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '.') {
        bail!("only simple element paths are supported");
    }
    Ok((rest.split('.').map(str::to_owned).collect(), only))
}

fn collect<'v>(v: &'v Value, path: &[String], out: &mut Vec<&'v Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect(i, path, out)),
        _ => match path.split_first() {
            None => out.push(v),
            Some((head, tail)) => {
                if let Some(next) = v.get(head) {
                    collect(next, tail, out);
                }
            }
        },
    }
}

fn index_value(p: &ParamDef, v: &Value, out: &mut Vec<IndexEntry>) {
    let entry = |system: Option<&str>, value: Option<String>, lo: Option<i64>, hi: Option<i64>| IndexEntry {
        param: p.name.clone(),
        system: system.map(str::to_owned),
        value,
        lo,
        hi,
    };
    match p.kind {
        ParamKind::Token => match v {
            Value::String(code) => out.push(entry(None, Some(code.clone()), None, None)),
            Value::Object(o) if o.contains_key("coding") => {
                for c in o["coding"].as_array().map(Vec::as_slice).unwrap_or_default() {
                    if let Some(code) = c["code"].as_str() {
                        out.push(entry(c["system"].as_str(), Some(code.to_string()), None, None));
                    }
                }
            }
            Value::Object(o) => {
                // Identifier (system/value) or Coding (system/code).
                if let Some(code) = o.get("value").or_else(|| o.get("code")).and_then(Value::as_str) {
                    out.push(entry(o.get("system").and_then(Value::as_str), Some(code.to_string()), None, None));
                }
            }
            _ => {}
        },
        ParamKind::Reference => {
            if let Some(r) = v.get("reference").and_then(Value::as_str).and_then(normalise_reference)
                && p.targets_type(&r)
            {
                out.push(entry(None, Some(r), None, None));
            }
        }
        ParamKind::String => {
            let mut push = |s: &str| out.push(entry(None, Some(normalise_string(s)), None, None));
            match v {
                Value::String(s) => push(s),
                Value::Object(o) => {
                    // HumanName: every part is searchable.
                    for key in ["text", "family"] {
                        if let Some(s) = o.get(key).and_then(Value::as_str) {
                            push(s);
                        }
                    }
                    for key in ["given", "prefix", "suffix"] {
                        for s in o.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
                            if let Some(s) = s.as_str() {
                                push(s);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        ParamKind::Date => {
            let range = match v {
                Value::String(s) => parse_date_range(s),
                Value::Object(o) => {
                    // Period: an open end is unbounded.
                    let start = o.get("start").and_then(Value::as_str).and_then(parse_date_range).map(|r| r.0);
                    let end = o.get("end").and_then(Value::as_str).and_then(parse_date_range).map(|r| r.1);
                    (start.is_some() || end.is_some()).then(|| (start.unwrap_or(i64::MIN), end.unwrap_or(i64::MAX)))
                }
                _ => None,
            };
            if let Some((lo, hi)) = range {
                out.push(entry(None, None, Some(lo), Some(hi)));
            }
        }
    }
}

/// `Type/id` out of a relative or absolute reference (`http://x/fhir/Patient/1` -> `Patient/1`;
/// a version suffix is dropped).
pub fn normalise_reference(r: &str) -> Option<String> {
    let r = r.split("/_history/").next().unwrap_or(r);
    let mut parts = r.rsplit('/');
    let id = parts.next()?;
    let ty = parts.next()?;
    (is_resource_type(ty) && is_id(id)).then(|| format!("{ty}/{id}"))
}

fn is_resource_type(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// A FHIR id: 1-64 of `[A-Za-z0-9\-\.]`.
pub fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

/// Lower case, without diacritics of the common Latin letters, single spaces.
pub fn normalise_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        let plain = match c {
            'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
            'ç' => 'c',
            'è' | 'é' | 'ê' | 'ë' => 'e',
            'ì' | 'í' | 'î' | 'ï' => 'i',
            'ñ' => 'n',
            'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
            'ù' | 'ú' | 'û' | 'ü' => 'u',
            'ý' | 'ÿ' => 'y',
            c if c.is_whitespace() => ' ',
            c => c,
        };
        if plain == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        out.push(plain);
    }
    out.trim_end().to_string()
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// The range `[lo, hi]` (µs since the epoch, inclusive) a FHIR date, dateTime or instant covers:
/// `2026` is the whole year, `2026-03-01` the whole day (UTC), `2026-03-01T10:00:00-08:00` one second.
pub fn parse_date_range(s: &str) -> Option<(i64, i64)> {
    let day = |d: NaiveDate| Utc.from_utc_datetime(&d.and_time(NaiveTime::MIN));
    let s = s.trim();
    match s.len() {
        4 => {
            let y: i32 = s.parse().ok()?;
            let lo = day(NaiveDate::from_ymd_opt(y, 1, 1)?);
            let hi = day(NaiveDate::from_ymd_opt(y + 1, 1, 1)?);
            Some((micros(lo), micros(hi) - 1))
        }
        7 => {
            let lo = NaiveDate::parse_from_str(&format!("{s}-01"), "%Y-%m-%d").ok()?;
            let hi = lo.checked_add_months(chrono::Months::new(1))?;
            Some((micros(day(lo)), micros(day(hi)) - 1))
        }
        10 => {
            let lo = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            Some((micros(day(lo)), micros(day(lo.succ_opt()?)) - 1))
        }
        _ => {
            let (t, precise) = if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                (t.with_timezone(&Utc), s.contains('.'))
            } else if s.len() > 16 && s.as_bytes().get(10) == Some(&b'T') && s.as_bytes().get(16) != Some(&b':') {
                // Minutes precision with an offset (`2026-03-01T10:30-08:00`, search parameters only).
                let t = DateTime::parse_from_rfc3339(&format!("{}:00{}", &s[..16], &s[16..])).ok()?.with_timezone(&Utc);
                return Some((micros(t), micros(t) + 60_000_000 - 1));
            } else {
                // Without an offset (search parameters only): UTC; minutes precision allowed.
                let naive = NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                    .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M"))
                    .ok()?;
                let minutes_only = s.len() == 16;
                let t = Utc.from_utc_datetime(&naive);
                if minutes_only {
                    return Some((micros(t), micros(t) + 60_000_000 - 1));
                }
                (t, s.contains('.'))
            };
            let lo = micros(t);
            Some((lo, if precise { lo } else { lo + 999_999 }))
        }
    }
}

/// Date comparison prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// The value's range lies within the parameter's.
    Eq,
    /// Not `eq`.
    Ne,
    /// The value's range extends above the parameter's.
    Gt,
    /// The value's range extends below the parameter's.
    Lt,
    /// `gt` or overlapping.
    Ge,
    /// `lt` or overlapping.
    Le,
    /// Starts after the parameter's range ends.
    Sa,
    /// Ends before the parameter's range starts.
    Eb,
}

/// One date comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateCmp {
    /// The prefix.
    pub prefix: Prefix,
    /// Start of the parameter's range.
    pub lo: i64,
    /// End of the parameter's range (inclusive).
    pub hi: i64,
}

/// One `system|code` alternative.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenValue {
    /// `None`: any system; `Some(None)`: no system (`|code`); `Some(Some(s))`: this system.
    pub system: Option<Option<String>>,
    /// `None`: any code (`system|`).
    pub code: Option<String>,
}

/// One search criterion; alternatives inside one are ORed, criteria are ANDed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Criterion {
    /// `_id`.
    Ids(Vec<String>),
    /// `_lastUpdated`.
    LastUpdated(Vec<DateCmp>),
    /// A token parameter.
    Token(String, Vec<TokenValue>),
    /// A reference parameter, values as `Type/id`.
    Reference(String, Vec<String>),
    /// A string parameter, normalised prefixes.
    String(String, Vec<String>),
    /// A date parameter.
    Date(String, Vec<DateCmp>),
}

/// Result order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// By id (stable under updates; the default).
    Id,
    /// `_sort=_lastUpdated`.
    LastUpdated,
    /// `_sort=-_lastUpdated`.
    LastUpdatedDesc,
}

/// Where the next page starts (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Last `last_updated` of the previous page (sorts by `_lastUpdated` only).
    pub last_updated: Option<i64>,
    /// Last id of the previous page.
    pub id: String,
}

impl Cursor {
    /// The opaque token put in `next` links.
    pub fn encode(&self) -> String {
        let text = match self.last_updated {
            Some(t) => format!("u{t}~{}", self.id),
            None => format!("i{}", self.id),
        };
        hex::encode(text)
    }

    /// Reads a token made by [`Cursor::encode`].
    pub fn decode(token: &str) -> Option<Cursor> {
        let text = String::from_utf8(hex::decode(token).ok()?).ok()?;
        if let Some(id) = text.strip_prefix('i') {
            return is_id(id).then(|| Cursor { last_updated: None, id: id.to_string() });
        }
        let (t, id) = text.strip_prefix('u')?.split_once('~')?;
        (is_id(id)).then_some(Cursor { last_updated: Some(t.parse().ok()?), id: id.to_string() })
    }
}

/// A parsed search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchRequest {
    /// Resource type searched.
    pub resource_type: String,
    /// ANDed criteria.
    pub criteria: Vec<Criterion>,
    /// Page size.
    pub count: usize,
    /// Order.
    pub sort: Sort,
    /// `_include` parameter names on the searched type.
    pub include: Vec<String>,
    /// `_summary=count`: only the total.
    pub summary_count: bool,
    /// Continue after this.
    pub cursor: Option<Cursor>,
    /// The query parameters to repeat in `self` / `next` links (without `_cursor`).
    pub link_params: Vec<(String, String)>,
}

fn bad(expression: &str, message: String) -> OutcomeIssue {
    OutcomeIssue::error(IssueCode::Value, message).at_expression(expression)
}

fn split_values(v: &str) -> Vec<String> {
    // `\,` escapes a comma inside a value.
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&',') => {
                if let (Some(last), Some(next)) = (out.last_mut(), chars.next()) {
                    last.push(next);
                }
            }
            ',' => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

fn parse_date_cmp(name: &str, v: &str) -> Result<DateCmp, OutcomeIssue> {
    let (prefix, rest) = match v.get(..2) {
        Some("eq") => (Prefix::Eq, &v[2..]),
        Some("ne") => (Prefix::Ne, &v[2..]),
        Some("gt") => (Prefix::Gt, &v[2..]),
        Some("lt") => (Prefix::Lt, &v[2..]),
        Some("ge") => (Prefix::Ge, &v[2..]),
        Some("le") => (Prefix::Le, &v[2..]),
        Some("sa") => (Prefix::Sa, &v[2..]),
        Some("eb") => (Prefix::Eb, &v[2..]),
        Some("ap") => return Err(bad(name, format!("the `ap` prefix is not supported on `{name}`"))),
        _ => (Prefix::Eq, v),
    };
    let (lo, hi) = parse_date_range(rest).ok_or_else(|| {
        bad(
            name,
            format!(
                "`{name}` needs a FHIR date such as 2026-03-01 or 2026-03-01T10:00:00Z, with an optional eq/ne/gt/lt/ge/le/sa/eb prefix"
            ),
        )
    })?;
    Ok(DateCmp { prefix, lo, hi })
}

fn parse_token(v: &str) -> TokenValue {
    match v.split_once('|') {
        None => TokenValue { system: None, code: Some(v.to_string()) },
        Some(("", code)) => TokenValue { system: Some(None), code: Some(code.to_string()) },
        Some((system, "")) => TokenValue { system: Some(Some(system.to_string())), code: None },
        Some((system, code)) => TokenValue { system: Some(Some(system.to_string())), code: Some(code.to_string()) },
    }
}

fn parse_reference(p: &ParamDef, v: &str) -> Result<Vec<String>, OutcomeIssue> {
    if is_id(v) {
        // A bare id may point at any of the parameter's target types.
        return Ok(p.targets.iter().map(|t| format!("{t}/{v}")).collect());
    }
    match normalise_reference(v) {
        Some(r) if p.targets_type(&r) => Ok(vec![r]),
        Some(r) => Err(bad(&p.name, format!("`{}` points at {}, which is not one of {}", p.name, r, p.targets.join(", ")))),
        None => {
            Err(bad(&p.name, format!("`{}` needs an id or a reference such as {}/123", p.name, p.targets.first().map_or("Patient", |s| s))))
        }
    }
}

impl SearchRegistry {
    /// Parses the query of `GET /fhir/{resource_type}?...`. Unknown parameters, modifiers and
    /// malformed values are errors (strict handling), each naming the parameter.
    pub fn parse(&self, resource_type: &str, query: &[(String, String)]) -> Result<SearchRequest, Vec<OutcomeIssue>> {
        let mut req = SearchRequest {
            resource_type: resource_type.to_string(),
            criteria: Vec::new(),
            count: DEFAULT_COUNT,
            sort: Sort::Id,
            include: Vec::new(),
            summary_count: false,
            cursor: None,
            link_params: Vec::new(),
        };
        let mut issues = Vec::new();
        for (key, value) in query {
            if key != "_cursor" {
                req.link_params.push((key.clone(), value.clone()));
            }
            match self.parse_one(resource_type, key, value, &mut req) {
                Ok(()) => {}
                Err(issue) => issues.push(issue),
            }
        }
        if issues.is_empty() { Ok(req) } else { Err(issues) }
    }

    fn parse_one(&self, ty: &str, key: &str, value: &str, req: &mut SearchRequest) -> Result<(), OutcomeIssue> {
        let (name, modifier) = match key.split_once(':') {
            Some((n, m)) => (n, Some(m)),
            None => (key, None),
        };
        if let Some(m) = modifier
            && name != "_include"
        {
            return Err(OutcomeIssue::error(IssueCode::NotSupported, format!("the modifier `:{m}` is not supported on `{name}`"))
                .at_expression(key));
        }
        let values = || -> Result<Vec<String>, OutcomeIssue> {
            let v = split_values(value);
            if v.iter().any(String::is_empty) {
                return Err(bad(name, format!("`{name}` has an empty value")));
            }
            if v.len() > MAX_ALTERNATIVES {
                return Err(bad(name, format!("`{name}` has more than {MAX_ALTERNATIVES} comma-separated values")));
            }
            Ok(v)
        };
        match name {
            "_count" => {
                let n: usize = value.parse().map_err(|_| bad(name, format!("`_count` must be a whole number from 0 to {MAX_COUNT}")))?;
                if n > MAX_COUNT {
                    return Err(bad(name, format!("`_count` must be at most {MAX_COUNT}")));
                }
                req.count = n;
            }
            "_sort" => {
                req.sort = match value {
                    "_lastUpdated" => Sort::LastUpdated,
                    "-_lastUpdated" => Sort::LastUpdatedDesc,
                    "_id" => Sort::Id,
                    _ => {
                        return Err(OutcomeIssue::error(
                            IssueCode::NotSupported,
                            format!("`_sort` supports `_lastUpdated`, `-_lastUpdated` and `_id`, not `{value}`"),
                        )
                        .at_expression(name));
                    }
                }
            }
            "_summary" => match value {
                "count" => req.summary_count = true,
                "false" => {}
                _ => {
                    return Err(OutcomeIssue::error(
                        IssueCode::NotSupported,
                        format!("`_summary={value}` is not supported (only `count`)"),
                    )
                    .at_expression(name));
                }
            },
            "_include" => {
                if modifier.is_some() {
                    return Err(OutcomeIssue::error(IssueCode::NotSupported, format!("`{key}` is not supported")).at_expression(key));
                }
                let ok = value
                    .split_once(':')
                    .filter(|(src, p)| *src == ty && INCLUDES.contains(&(*src, *p)) && !p.contains(':'))
                    .map(|(_, p)| p.to_string());
                match ok {
                    Some(p) => req.include.push(p),
                    None => {
                        let supported: Vec<String> = INCLUDES.iter().map(|(s, p)| format!("{s}:{p}")).collect();
                        return Err(OutcomeIssue::error(
                            IssueCode::NotSupported,
                            format!("`_include={value}` is not supported here; supported: {}", supported.join(", ")),
                        )
                        .at_expression(name));
                    }
                }
            }
            "_cursor" => {
                req.cursor = Some(Cursor::decode(value).ok_or_else(|| bad(name, "`_cursor` is not a cursor this server issued".into()))?);
            }
            "_format" => {
                if !matches!(value, "json" | "application/json" | "application/fhir+json") {
                    return Err(OutcomeIssue::error(IssueCode::NotSupported, "only JSON is supported (`_format=json`)").at_expression(name));
                }
            }
            "_id" => {
                let ids = values()?;
                if let Some(bad_id) = ids.iter().find(|i| !is_id(i)) {
                    return Err(bad(name, format!("`_id` value {bad_id:?} is not a FHIR id")));
                }
                req.criteria.push(Criterion::Ids(ids));
            }
            "_lastUpdated" => {
                let cmps = values()?.iter().map(|v| parse_date_cmp(name, v)).collect::<Result<_, _>>()?;
                req.criteria.push(Criterion::LastUpdated(cmps));
            }
            _ => {
                let Some(p) = self.param(ty, name) else {
                    let known: Vec<&str> = self.params_of(ty).map(|p| p.name.as_str()).collect();
                    let known = if known.is_empty() { String::new() } else { format!("; {ty} supports {}", known.join(", ")) };
                    return Err(OutcomeIssue::error(
                        IssueCode::NotSupported,
                        format!("unknown search parameter `{name}`{known}, plus _id, _lastUpdated, _count, _sort, _summary"),
                    )
                    .at_expression(name));
                };
                let values = values()?;
                let c = match p.kind {
                    ParamKind::Token => Criterion::Token(p.name.clone(), values.iter().map(|v| parse_token(v)).collect()),
                    ParamKind::Reference => {
                        let mut refs = Vec::new();
                        for v in &values {
                            refs.extend(parse_reference(p, v)?);
                        }
                        Criterion::Reference(p.name.clone(), refs)
                    }
                    ParamKind::String => Criterion::String(p.name.clone(), values.iter().map(|v| normalise_string(v)).collect()),
                    ParamKind::Date => {
                        Criterion::Date(p.name.clone(), values.iter().map(|v| parse_date_cmp(name, v)).collect::<Result<_, _>>()?)
                    }
                };
                req.criteria.push(c);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> SearchRegistry {
        SearchRegistry::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("official definitions load")
    }

    #[test]
    fn definitions_come_from_the_official_bundle() {
        let r = registry();
        let p = r.param("Encounter", "practitioner").expect("defined");
        assert_eq!(p.kind, ParamKind::Reference);
        assert_eq!(p.path, ["participant", "individual"]);
        assert_eq!(p.targets, ["Practitioner"]);
        assert_eq!(p.url, "http://hl7.org/fhir/SearchParameter/Encounter-practitioner");
        let p = r.param("Encounter", "patient").expect("defined");
        assert_eq!((p.path.as_slice(), p.targets.as_slice()), (&["subject".to_string()][..], &["Patient".to_string()][..]));
        assert_eq!(r.param("Encounter", "date").map(|p| p.kind), Some(ParamKind::Date));
        assert_eq!(r.param("Patient", "name").map(|p| p.kind), Some(ParamKind::String));
        assert_eq!(r.param("Condition", "code").map(|p| p.kind), Some(ParamKind::Token));
        assert!(r.param("Encounter", "reason-code").is_none());
    }

    #[test]
    fn indexes_every_kind() {
        let r = registry();
        let enc = serde_json::json!({
            "resourceType": "Encounter", "status": "finished",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"individual": {"reference": "Practitioner/d1"}}, {"individual": {"reference": "RelatedPerson/m1"}}],
            "period": {"start": "2026-03-02T10:00:00-08:00", "end": "2026-03-02T10:50:00-08:00"},
            "location": [{"location": {"reference": "Location/s1"}}]
        });
        let idx = r.index(&enc);
        let find = |p: &str| idx.iter().filter(|e| e.param == p).collect::<Vec<_>>();
        assert_eq!(find("patient")[0].value.as_deref(), Some("Patient/p1"));
        assert_eq!(find("subject")[0].value.as_deref(), Some("Patient/p1"));
        assert_eq!(find("practitioner").len(), 1, "RelatedPerson is not a practitioner");
        assert_eq!(find("location")[0].value.as_deref(), Some("Location/s1"));
        assert_eq!(find("status")[0].value.as_deref(), Some("finished"));
        let d = find("date")[0];
        assert_eq!(d.lo, parse_date_range("2026-03-02T18:00:00Z").map(|r| r.0));
        assert_eq!(d.hi, parse_date_range("2026-03-02T18:50:00Z").map(|r| r.1));

        let pat = serde_json::json!({"resourceType": "Patient", "birthDate": "2011-05-04",
            "identifier": [{"system": "urn:x", "value": "S1"}], "name": [{"family": "Núñez", "given": ["Ana María"]}]});
        let idx = r.index(&pat);
        assert!(idx.contains(&IndexEntry {
            param: "identifier".into(),
            system: Some("urn:x".into()),
            value: Some("S1".into()),
            lo: None,
            hi: None
        }));
        assert!(idx.iter().any(|e| e.param == "name" && e.value.as_deref() == Some("nunez")));
        assert!(idx.iter().any(|e| e.param == "name" && e.value.as_deref() == Some("ana maria")));
    }

    #[test]
    fn date_ranges_follow_precision() {
        let (lo, hi) = parse_date_range("2026").unwrap();
        assert_eq!(hi - lo + 1, 365 * 86_400_000_000);
        let (lo, hi) = parse_date_range("2026-02").unwrap();
        assert_eq!(hi - lo + 1, 28 * 86_400_000_000);
        let (lo, hi) = parse_date_range("2026-03-01").unwrap();
        assert_eq!(hi - lo + 1, 86_400_000_000);
        let (lo, hi) = parse_date_range("2026-03-01T10:00:00Z").unwrap();
        assert_eq!(hi - lo + 1, 1_000_000);
        let (lo, hi) = parse_date_range("2026-03-01T10:00:00.250+01:00").unwrap();
        assert_eq!(lo, hi);
        assert_eq!(parse_date_range("2026-03-01T10:00").map(|(l, h)| h - l + 1), Some(60_000_000));
        assert_eq!(parse_date_range("2026-03-01T10:00-08:00"), parse_date_range("2026-03-01T18:00"));
        for bad in ["", "26", "2026-13", "2026-02-30", "yesterday", "2026-03-01T25:00:00Z"] {
            assert_eq!(parse_date_range(bad), None, "{bad}");
        }
    }

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_searches_and_refuses_what_it_does_not_support() {
        let r = registry();
        let s = r
            .parse(
                "Encounter",
                &q(&[("patient", "p1,Patient/p2"), ("date", "ge2026-01-01"), ("_count", "10"), ("_include", "Encounter:patient")]),
            )
            .expect("valid");
        assert_eq!(s.criteria[0], Criterion::Reference("patient".into(), vec!["Patient/p1".into(), "Patient/p2".into()]));
        assert!(matches!(&s.criteria[1], Criterion::Date(p, c) if p == "date" && c[0].prefix == Prefix::Ge));
        assert_eq!((s.count, s.include.as_slice()), (10, &["patient".to_string()][..]));

        let s =
            r.parse("Condition", &q(&[("code", "http://hl7.org/fhir/sid/icd-10-cm|F41.1"), ("code", "|X"), ("code", "urn:s|")])).unwrap();
        assert_eq!(
            s.criteria,
            vec![
                Criterion::Token(
                    "code".into(),
                    vec![TokenValue { system: Some(Some("http://hl7.org/fhir/sid/icd-10-cm".into())), code: Some("F41.1".into()) }]
                ),
                Criterion::Token("code".into(), vec![TokenValue { system: Some(None), code: Some("X".into()) }]),
                Criterion::Token("code".into(), vec![TokenValue { system: Some(Some("urn:s".into())), code: None }]),
            ]
        );

        for (ty, pairs, expr) in [
            ("Encounter", vec![("colour", "red")], "colour"),
            ("Encounter", vec![("date", "soon")], "date"),
            ("Encounter", vec![("date", "ap2026")], "date"),
            ("Encounter", vec![("patient:missing", "true")], "patient:missing"),
            ("Encounter", vec![("patient", "Location/x")], "patient"),
            ("Encounter", vec![("_count", "-1")], "_count"),
            ("Encounter", vec![("_count", "100000")], "_count"),
            ("Encounter", vec![("_sort", "status")], "_sort"),
            ("Patient", vec![("_include", "Encounter:patient")], "_include"),
            ("Encounter", vec![("_cursor", "zz")], "_cursor"),
            ("Encounter", vec![("_summary", "text")], "_summary"),
            ("Encounter", vec![("status", "")], "status"),
        ] {
            let err = r.parse(ty, &q(&pairs)).expect_err(expr);
            assert_eq!(err[0].expression.first().map(String::as_str), Some(expr), "{pairs:?}");
        }
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        for c in [Cursor { last_updated: None, id: "abc-1".into() }, Cursor { last_updated: Some(-5), id: "x".into() }] {
            assert_eq!(Cursor::decode(&c.encode()), Some(c));
        }
        assert_eq!(Cursor::decode(&hex::encode("i'; drop table x")), None);
    }
}
