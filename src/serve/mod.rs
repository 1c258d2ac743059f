//! Stage 6: what an FQHC partner may see of stored resources, decided by consent.
//!
//! [`judge`] takes stored resources (a read, the versions of a history, a page of search
//! matches, `_include`d resources), finds the facts each decision needs (the session a resource
//! belongs to, its student, site, date of service and security labels, the student's consents),
//! calls [`fn@crate::consent::decide`] once per resource and applies the permit's obligations to the
//! content (DS4P labels, minimum necessary). The handlers serve only what it permits, and treat
//! the rest exactly like a resource that does not exist.
//!
//! What a resource is judged by:
//! - Encounter, Condition, DocumentReference (the session note), Provenance: the session they belong to (site, date of service,
//!   student) and the resource's own security labels (a Provenance takes its session's);
//! - Patient, Coverage, RelatedPerson: the student's sessions: visible when at least one of them
//!   is (a partner never learns of a student it may not see any session of);
//! - Organization, Location, Practitioner, PractitionerRole: directory data without PHI, visible to
//!   every partner (rule `directory`);
//! - Consent and anything else: never (rule `not-disclosed`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::NaiveDate;
use serde_json::{Value, json};

use crate::consent::{Ask, Categories, Compiled, ConsentRules, Decision, Facts, Obligations};
use crate::domain::PurposeOfUse;
use crate::store::{SessionFacts, Store, StoreError, StoredResource};

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const LOCAL_SECURITY: &str = "urn:wellness-gateway:codesystem:security";
/// Extension carrying the 42 CFR 2.32 notice on disclosed Part 2 data.
pub const PART2_NOTICE_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:part2-redisclosure-notice";
/// Extension naming the consent (version) a Part 2 disclosure was made under (42 CFR 2.32(b)).
pub const PART2_CONSENT_EXTENSION: &str = "urn:wellness-gateway:fhir:extension:part2-consent";
/// 42 CFR 2.32(a)(1) notice text.
pub const PART2_NOTICE: &str = "This record which has been disclosed to you is protected by Federal confidentiality rules (42 CFR part 2). \
These rules prohibit you from using or disclosing this record, or testimony that describes the information contained in this record, \
in any civil, criminal, administrative, or legislative proceedings by any Federal, State, or local authority, against the patient, \
unless authorized by the consent of the patient, except as provided at 42 CFR 2.12(c)(5) or as authorized by a court in accordance \
with 42 CFR 2.64 or 2.65. In addition, the Federal rules prohibit you from making any other use or disclosure of this record unless \
at least one of the following applies: (i) Further use or disclosure is expressly permitted by the written consent of the individual \
whose information is being disclosed in this record or as otherwise permitted by 42 CFR part 2. (ii) You are a covered entity or \
business associate and have received the record for treatment, payment, or health care operations, or (iii) You have received the \
record from a covered entity or business associate as permitted by 45 CFR part 164, subparts A and E. A general authorization for \
the release of medical or other information is NOT sufficient to meet the required elements of written consent to further use or \
redisclose the record (see 42 CFR 2.31).";

/// Who asks and why.
#[derive(Debug, Clone, Copy)]
pub struct Partner<'a> {
    /// The partner's FQHC (configuration id).
    pub org: &'a str,
    /// Purpose of use.
    pub purpose: PurposeOfUse,
    /// Today (consents are judged in force on this date).
    pub today: NaiveDate,
}

/// The decision about one resource, for the response and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Disclosed or withheld.
    pub permitted: bool,
    /// The rule that decided (`consent`, `no-consent`, `partner-site`, `directory`, ...).
    pub rule: &'static str,
    /// The consent (id, version) that permitted, or whose exception withheld.
    pub consent: Option<(String, i64)>,
    /// The student the resource is about, when it is about one.
    pub patient: Option<String>,
}

impl Verdict {
    fn deny(rule: &'static str, patient: Option<String>) -> Verdict {
        Verdict { permitted: false, rule, consent: None, patient }
    }
}

/// A judged resource: its content is the redacted, labelled one when permitted.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The resource (content rewritten when permitted; untouched otherwise, and not to be sent).
    pub resource: StoredResource,
    /// The decision.
    pub verdict: Verdict,
}

enum Subject {
    /// Belongs to this session; `own_labels`: judge by the resource's labels (else the session's);
    /// `names_note`: it reveals the session's note exists (a Provenance targeting it), so it is
    /// judged as note data too.
    Session {
        id: String,
        own_labels: bool,
        names_note: bool,
    },
    /// About this student.
    Patient(String),
    Directory,
    Never,
}

fn reference_id<'v>(v: &'v Value, ty: &str) -> Option<&'v str> {
    v.as_str()?.strip_prefix(ty)?.strip_prefix('/')
}

fn subject_of(r: &StoredResource, content: &Value) -> Subject {
    let session = |id: Option<&str>, own_labels: bool| match id {
        Some(id) => Subject::Session { id: id.to_string(), own_labels, names_note: false },
        None => Subject::Never,
    };
    let patient = |id: Option<&str>| id.map(|p| Subject::Patient(p.to_string())).unwrap_or(Subject::Never);
    match r.resource_type.as_str() {
        "Encounter" => session(Some(&r.id), true),
        "Condition" => session(reference_id(&content["encounter"]["reference"], "Encounter"), true),
        "DocumentReference" => session(
            content["context"]["encounter"].as_array().and_then(|e| e.iter().find_map(|x| reference_id(&x["reference"], "Encounter"))),
            true,
        ),
        "Provenance" => {
            let targets = content["target"].as_array();
            let names_note = targets.is_some_and(|t| t.iter().any(|x| reference_id(&x["reference"], "DocumentReference").is_some()));
            match session(targets.and_then(|t| t.iter().find_map(|x| reference_id(&x["reference"], "Encounter"))), false) {
                Subject::Session { id, own_labels, .. } => Subject::Session { id, own_labels, names_note },
                other => other,
            }
        }
        "Patient" => Subject::Patient(r.id.clone()),
        "Coverage" => patient(reference_id(&content["beneficiary"]["reference"], "Patient")),
        "RelatedPerson" => patient(reference_id(&content["patient"]["reference"], "Patient")),
        "Organization" | "Location" | "Practitioner" | "PractitionerRole" => Subject::Directory,
        _ => Subject::Never,
    }
}

/// What labels tell the decision: data categories, minor-consented, psychotherapy note.
pub(crate) type LabelFacts = (Categories, bool, bool);

/// The decision facts of labels (`system|code` pairs).
fn label_facts<'l>(labels: impl Iterator<Item = (&'l str, &'l str)>, rules: &ConsentRules) -> LabelFacts {
    let (mut cats, mut minor, mut psythpn) = (Categories::NONE, false, false);
    for (system, code) in labels {
        if let Some(c) = rules.labels.category_of(system, code) {
            cats = cats.with(c);
        }
        minor |= system == LOCAL_SECURITY && code == "minor-consent";
        psythpn |= system == ACT_CODE && code == "PSYTHPN";
    }
    (cats, minor, psythpn)
}

fn content_labels(content: &Value) -> impl Iterator<Item = (&str, &str)> {
    content["meta"]["security"].as_array().into_iter().flatten().filter_map(|c| Some((c["system"].as_str()?, c["code"].as_str()?)))
}

/// The label facts of a session, from the Encounter labels stored with it.
pub(crate) fn session_label_facts(s: &SessionFacts, rules: &ConsentRules) -> LabelFacts {
    let list: Vec<String> = s.security.as_deref().and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default();
    label_facts(list.iter().filter_map(|l| l.split_once('|')), rules)
}

/// The label facts a session-bound resource is judged by: its own labels or its session's, plus
/// the notes category when it reveals the session's note.
fn subject_label_facts(content: &Value, s: &SessionFacts, own_labels: bool, names_note: bool, rules: &ConsentRules) -> LabelFacts {
    let mut labels = if own_labels { label_facts(content_labels(content), rules) } else { session_label_facts(s, rules) };
    if names_note {
        labels.0 = labels.0.with(crate::consent::Category::SessionNotes);
    }
    labels
}

/// The decision facts of a session with these labels, judged on `today`.
pub(crate) fn session_facts_for(s: &SessionFacts, labels: LabelFacts, today: NaiveDate) -> Facts<'_> {
    Facts {
        site: &s.site_id,
        service_date: s.date_of_service(),
        categories: labels.0,
        minor_consented: labels.1,
        psychotherapy_note: labels.2,
        student_adult: s.adult_on(today),
    }
}

struct Context<'a> {
    rules: &'a ConsentRules,
    ask: Ask<'a>,
    sessions: HashMap<String, SessionFacts>,
    consents: HashMap<String, Vec<Compiled>>,
    /// Every session of each patient-level subject.
    patient_sessions: HashMap<String, Vec<SessionFacts>>,
}

impl Context<'_> {
    fn decide_session(&self, s: &SessionFacts, labels: LabelFacts) -> (Verdict, Option<Obligations>) {
        let Some(patient) = s.patient_id.clone() else {
            // Stored before consent facts were kept: never disclosed.
            return (Verdict::deny("no-consent", None), None);
        };
        let facts = session_facts_for(s, labels, self.ask.today);
        let consents = self.consents.get(&patient).map(Vec::as_slice).unwrap_or_default();
        match crate::consent::decide(&self.ask, &facts, consents, &self.rules.partnerships) {
            Decision::Permit { consent, obligations } => (
                Verdict { permitted: true, rule: "consent", consent: Some((consent.id.clone(), consent.version)), patient: Some(patient) },
                Some(obligations),
            ),
            Decision::Deny { rule, consent } => (
                Verdict { permitted: false, rule: rule.id(), consent: consent.map(|c| (c.id.clone(), c.version)), patient: Some(patient) },
                None,
            ),
        }
    }

    fn judge_one(&self, r: &StoredResource, content: &Value) -> (Verdict, Option<Obligations>) {
        match subject_of(r, content) {
            Subject::Directory => (Verdict { permitted: true, rule: "directory", consent: None, patient: None }, None),
            Subject::Never => (Verdict::deny("not-disclosed", None), None),
            Subject::Session { id, own_labels, names_note } => {
                let Some(s) = self.sessions.get(&id) else { return (Verdict::deny("no-consent", None), None) };
                self.decide_session(s, subject_label_facts(content, s, own_labels, names_note, self.rules))
            }
            Subject::Patient(p) => {
                let mut first_denial = None;
                for s in self.patient_sessions.get(&p).into_iter().flatten() {
                    let (v, o) = self.decide_session(s, session_label_facts(s, self.rules));
                    if v.permitted {
                        // The student's own record: general data, under that session's permit.
                        return (v, o.map(|o| Obligations { part2: false, ..o }));
                    }
                    first_denial.get_or_insert(v);
                }
                let mut v = first_denial.unwrap_or_else(|| Verdict::deny("no-consent", None));
                v.patient = Some(p);
                (v, None)
            }
        }
    }
}

fn has_label(content: &Value, system: &str, code: &str) -> bool {
    content_labels(content).any(|(s, c)| s == system && c == code)
}

fn push_label(content: &mut Value, system: &str, code: &str, display: &str) {
    if has_label(content, system, code) {
        return;
    }
    if !content["meta"].is_object() {
        content["meta"] = json!({});
    }
    let meta = &mut content["meta"];
    if !meta["security"].is_array() {
        meta["security"] = json!([]);
    }
    if let Some(list) = meta["security"].as_array_mut() {
        list.push(json!({ "system": system, "code": code, "display": display }));
    }
}

/// Applies a permit's obligations to a resource's content: DS4P labels (confidentiality R, the
/// purpose of use, Part 2's no-redisclosure label and notice) and, for purposes other than
/// treatment, the minimum necessary (narrative `text` and `note` removed, marked `REDACTED`).
pub fn apply_obligations(content: &mut Value, o: &Obligations) {
    if o.restricted && !has_label(content, CONFIDENTIALITY, "V") {
        push_label(content, CONFIDENTIALITY, "R", "restricted");
    }
    push_label(content, PurposeOfUse::SYSTEM, o.purpose.code(), o.purpose.code());
    if o.part2 {
        push_label(content, ACT_CODE, "NORDSCLCD", "no redisclosure without consent directive");
        if let Some(obj) = content.as_object_mut() {
            let ext = obj.entry("extension").or_insert_with(|| json!([]));
            if let Some(list) = ext.as_array_mut()
                && !list.iter().any(|e| e["url"] == PART2_NOTICE_EXTENSION)
            {
                list.push(json!({ "url": PART2_NOTICE_EXTENSION, "valueString": PART2_NOTICE }));
            }
        }
    }
    if o.minimum_necessary {
        let removed = content.as_object_mut().map(|obj| [obj.remove("text").is_some(), obj.remove("note").is_some()]).unwrap_or_default();
        if removed.iter().any(|r| *r) {
            push_label(content, "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "REDACTED", "redacted");
        }
    }
}

/// Judges stored resources for a partner (see the module doc). Deletions are withheld.
pub async fn judge(
    store: &Store,
    rules: &ConsentRules,
    who: Partner<'_>,
    resources: Vec<StoredResource>,
) -> Result<Vec<Judged>, StoreError> {
    judge_with(store, rules, who, resources, Prefetched::default()).await
}

/// Decision facts already read with the resources (see `Store::fhir_read_with_facts`).
#[derive(Debug, Default)]
pub struct Prefetched {
    /// Sessions.
    pub sessions: Vec<SessionFacts>,
    /// By student: every consent of theirs, compiled.
    pub consents: HashMap<String, Vec<Compiled>>,
    /// Where parsed and obligated versions are kept between reads ([`ReadMemo`]).
    pub memo: Option<ReadMemo>,
}

/// As [`judge`], with some sessions' facts already at hand (only the others are queried).
pub async fn judge_with(
    store: &Store,
    rules: &ConsentRules,
    who: Partner<'_>,
    resources: Vec<StoredResource>,
    prefetched: Prefetched,
) -> Result<Vec<Judged>, StoreError> {
    let parsed = Parsed::with_memo(resources, prefetched.memo.clone());
    let facts = parsed.facts(store, prefetched).await?;
    Ok(parsed.decide(facts, rules, who))
}

/// Resources read for judging, in three steps so that a caller can run the CPU-bound ones off
/// its async task (bulk export does): [`Parsed::new`] parses (sync), [`Parsed::facts`] reads the
/// decision facts (async, a few queries), [`Parsed::decide`] decides and applies obligations
/// (sync).
pub struct Parsed {
    resources: Vec<StoredResource>,
    /// The decision elements of each ([`parse_head`]).
    parsed: Vec<Arc<Value>>,
    subjects: Vec<Subject>,
    memo: Option<ReadMemo>,
}

/// A stored version: (type, id, version, last updated). Versions are never rewritten, so what is
/// derived from one version's content stays true of it.
type VersionKey = (String, String, i64, i64);

/// A version's text under a permit: its obligations and the consent it names (Part 2).
type ContentKey = (VersionKey, Obligations, Option<(String, i64)>);

fn version_key(r: &StoredResource) -> VersionKey {
    (r.resource_type.clone(), r.id.clone(), r.version_id, r.last_updated_us)
}

/// What partner reads derive from a resource version's content, kept between reads: its decision
/// elements (`parse_head`) and its text under each set of obligations (`obligate`). Both depend
/// on the stored version alone (and the obligations), never on consent, which is judged afresh
/// with every read. Bounded by weight (bytes of text kept); cheap to clone (one cache).
#[derive(Clone)]
pub struct ReadMemo {
    heads: moka::sync::Cache<VersionKey, Arc<Value>>,
    contents: moka::sync::Cache<ContentKey, Arc<str>>,
}

impl ReadMemo {
    /// A memo of at most about `max_bytes` of obligated text (and as many heads as resources).
    pub fn new(max_bytes: u64) -> ReadMemo {
        ReadMemo {
            heads: moka::sync::Cache::builder().max_capacity(max_bytes / 1024 + 1).build(),
            contents: moka::sync::Cache::builder()
                .weigher(|_, v: &Arc<str>| u32::try_from(v.len()).unwrap_or(u32::MAX))
                .max_capacity(max_bytes)
                .build(),
        }
    }
}

impl std::fmt::Debug for ReadMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadMemo").field("heads", &self.heads.entry_count()).field("contents", &self.contents.entry_count()).finish()
    }
}

/// Every session of these students (their own resources are judged by all of them), by
/// student; their consents are added to `consents`.
async fn students_facts(
    store: &Store,
    patient_ids: HashSet<&str>,
    consents: &mut HashMap<String, Vec<Compiled>>,
) -> Result<HashMap<String, Vec<SessionFacts>>, StoreError> {
    let mut out: HashMap<String, Vec<SessionFacts>> = HashMap::new();
    if patient_ids.is_empty() {
        return Ok(out);
    }
    let (facts, directives) = store.patient_session_facts(&patient_ids.into_iter().collect::<Vec<_>>()).await?;
    for s in facts {
        if let Some(p) = s.patient_id.clone() {
            out.entry(p).or_default().push(s);
        }
    }
    add_compiled(consents, directives);
    Ok(out)
}

/// Adds directives, compiled, to consents by student (each directive once).
fn add_compiled(consents: &mut HashMap<String, Vec<Compiled>>, directives: Vec<crate::consent::Directive>) {
    for d in directives {
        let list = consents.entry(d.patient.clone()).or_default();
        if !list.iter().any(|c| c.id == d.id) {
            list.push(d.compile());
        }
    }
}

/// Sessions' decision facts and their students' consents kept from page to page by one bulk
/// export job ([`Parsed::facts_cached`]); emptied when it would hold more than `capacity`
/// sessions. A consent changed while the job runs is caught by the job's closing recheck, as
/// for facts read page by page.
#[derive(Default)]
pub struct FactsCache {
    sessions: HashMap<String, SessionFacts>,
    /// By student: every consent of each student of a kept session.
    consents: HashMap<String, Vec<Compiled>>,
    capacity: usize,
}

impl FactsCache {
    /// An empty cache of at most `capacity` sessions.
    pub fn new(capacity: usize) -> FactsCache {
        FactsCache { capacity, ..Default::default() }
    }
}

/// The decision facts of a [`Parsed`] batch.
#[derive(Default)]
pub struct DecisionFacts {
    sessions: HashMap<String, SessionFacts>,
    consents: HashMap<String, Vec<Compiled>>,
    patient_sessions: HashMap<String, Vec<SessionFacts>>,
}

/// The elements of a resource a decision reads (see [`subject_of`] and [`content_labels`]); the
/// rest of the content is skipped while parsing, not built.
#[derive(serde::Deserialize)]
struct Head {
    meta: Option<Value>,
    encounter: Option<Value>,
    context: Option<Value>,
    target: Option<Value>,
    beneficiary: Option<Value>,
    patient: Option<Value>,
}

/// The decision elements of stored content, as an object holding only them (`Null` when the
/// content is not a JSON object).
fn parse_head(content: &str) -> Value {
    if !content.trim_start().starts_with('{') {
        return Value::Null;
    }
    let Ok(h) = serde_json::from_str::<Head>(content) else { return Value::Null };
    let mut out = serde_json::Map::new();
    for (k, v) in [
        ("meta", h.meta),
        ("encounter", h.encounter),
        ("context", h.context),
        ("target", h.target),
        ("beneficiary", h.beneficiary),
        ("patient", h.patient),
    ] {
        if let Some(v) = v {
            out.insert(k.to_string(), v);
        }
    }
    Value::Object(out)
}

/// The top-level elements [`obligate`] may change; everything else is copied as it is stored.
const OBLIGATED: [&str; 4] = ["meta", "extension", "text", "note"];

/// Applies a permit's obligations ([`apply_obligations`] and the Part 2 consent reference) to
/// stored content, as parsing, changing and serialising the whole resource would, but building
/// only the elements obligations change: the others are copied from the stored text. The text is
/// split into its top-level members once ([`Members`]); both shortcuts work from that split.
fn obligate(content: &str, o: &Obligations, consent: Option<&(String, i64)>) -> String {
    // Copied text must be one line (NDJSON): a stored line break (whitespace between tokens)
    // takes the full path, which serialises compactly. So does a duplicated member, or one whose
    // name has escapes (neither is ever stored).
    let one_line = memchr::memchr2(b'\n', b'\r', content.as_bytes()).is_none();
    let Some(members) = one_line.then(|| serde_json::from_str::<Members<'_>>(content).ok()).flatten().filter(Members::unique) else {
        return obligate_value(content, o, consent);
    };
    if let Some(text) = obligate_meta_only(content, &members, o, consent) {
        return text;
    }
    let mut part = serde_json::Map::new();
    for k in OBLIGATED {
        if let Some(v) = members.get(k) {
            match serde_json::from_str(v.get()) {
                Ok(v) => part.insert(k.to_string(), v),
                Err(_) => return obligate_value(content, o, consent),
            };
        }
    }
    let mut part = Value::Object(part);
    obligate_in_place(&mut part, o, consent);
    #[derive(serde::Serialize)]
    #[serde(untagged)]
    enum Element<'a> {
        Stored(&'a serde_json::value::RawValue),
        Changed(&'a Value),
    }
    let mut out: std::collections::BTreeMap<&str, Element<'_>> =
        members.0.iter().filter(|(k, _)| !OBLIGATED.contains(k)).map(|(k, v)| (*k, Element::Stored(v))).collect();
    if let Some(obj) = part.as_object() {
        out.extend(obj.iter().map(|(k, v)| (k.as_str(), Element::Changed(v))));
    }
    serde_json::to_string(&out).unwrap_or_else(|_| obligate_value(content, o, consent))
}

/// The top-level members of a stored JSON object, in text order, each value as its stored text.
struct Members<'a>(Vec<(&'a str, &'a serde_json::value::RawValue)>);

impl<'a> Members<'a> {
    fn get(&self, name: &str) -> Option<&'a serde_json::value::RawValue> {
        self.0.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    /// No member name twice.
    fn unique(&self) -> bool {
        let mut names: Vec<&str> = self.0.iter().map(|(k, _)| *k).collect();
        names.sort_unstable();
        names.windows(2).all(|w| w[0] != w[1])
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Members<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = Members<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Members<'a>, M::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(member) = map.next_entry::<&'de str, &'de serde_json::value::RawValue>()? {
                    out.push(member);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// [`obligate`] when the obligations change `meta` alone (the usual case: labels added, nothing
/// removed, no Part 2 extension) and the resource has a `meta` object: the stored text with its
/// `meta` value replaced in place, every other byte copied. `None`: another path is needed.
fn obligate_meta_only(content: &str, members: &Members<'_>, o: &Obligations, consent: Option<&(String, i64)>) -> Option<String> {
    if o.part2 || (o.minimum_necessary && (members.get("text").is_some() || members.get("note").is_some())) {
        return None;
    }
    let stored = members.get("meta")?.get();
    let meta: Value = serde_json::from_str(stored).ok()?;
    if !meta.is_object() {
        return None;
    }
    let mut part = Value::Object(serde_json::Map::from_iter([("meta".to_string(), meta)]));
    obligate_in_place(&mut part, o, consent);
    let obj = part.as_object()?;
    if obj.len() != 1 {
        return None;
    }
    // The borrowed value is a slice of `content`: where it starts there.
    let start = (stored.as_ptr() as usize).checked_sub(content.as_ptr() as usize)?;
    let (before, after) = (content.get(..start)?, content.get(start + stored.len()..)?);
    let meta = serde_json::to_string(obj.get("meta")?).ok()?;
    let mut out = String::with_capacity(content.len() + meta.len() - stored.len().min(meta.len()));
    out.push_str(before);
    out.push_str(&meta);
    out.push_str(after);
    Some(out)
}

/// [`obligate`] on the whole parsed resource.
fn obligate_value(content: &str, o: &Obligations, consent: Option<&(String, i64)>) -> String {
    let mut v: Value = serde_json::from_str(content).unwrap_or(Value::Null);
    if !v.is_object() {
        // (Never stored: resources are objects.) Left as it is rather than made up.
        return content.to_string();
    }
    obligate_in_place(&mut v, o, consent);
    v.to_string()
}

fn obligate_in_place(content: &mut Value, o: &Obligations, consent: Option<&(String, i64)>) {
    apply_obligations(content, o);
    // Part 2 (2024 rule): each disclosure carries the consent it was made under.
    if o.part2
        && let (Some((cid, ver)), Some(list)) = (consent, content["extension"].as_array_mut())
    {
        list.retain(|e| e["url"] != PART2_CONSENT_EXTENSION);
        list.push(json!({ "url": PART2_CONSENT_EXTENSION, "valueReference": { "reference": format!("Consent/{cid}/_history/{ver}") } }));
    }
}

impl Parsed {
    /// Parses the decision elements of the resources and finds what each is judged by.
    pub fn new(resources: Vec<StoredResource>) -> Parsed {
        Parsed::with_memo(resources, None)
    }

    /// As [`Parsed::new`], taking the decision elements from `memo` where it has them, and keeping
    /// there what is parsed and obligated (partner reads; a bulk export reads each version once).
    pub fn with_memo(resources: Vec<StoredResource>, memo: Option<ReadMemo>) -> Parsed {
        let parsed: Vec<Arc<Value>> = resources
            .iter()
            .map(|r| match &memo {
                Some(m) => m.heads.get_with(version_key(r), || Arc::new(parse_head(&r.content))),
                None => Arc::new(parse_head(&r.content)),
            })
            .collect();
        let subjects: Vec<Subject> = resources.iter().zip(&parsed).map(|(r, c)| subject_of(r, c)).collect();
        Parsed { resources, parsed, subjects, memo }
    }

    /// The sessions and the students the resources are judged by.
    fn subject_keys(&self) -> (HashSet<&str>, HashSet<&str>) {
        let session_ids =
            self.subjects.iter().filter_map(|s| if let Subject::Session { id, .. } = s { Some(id.as_str()) } else { None }).collect();
        let patient_ids = self.subjects.iter().filter_map(|s| if let Subject::Patient(p) = s { Some(p.as_str()) } else { None }).collect();
        (session_ids, patient_ids)
    }

    /// As [`Parsed::facts`], keeping sessions' facts and their students' consents in `cache` for
    /// the pages after this one (a bulk export reading in storage order meets a session's
    /// resources a few pages apart).
    pub async fn facts_cached(&self, store: &Store, cache: &mut FactsCache) -> Result<DecisionFacts, StoreError> {
        let (session_ids, patient_ids) = self.subject_keys();
        if cache.sessions.len() + session_ids.len() > cache.capacity {
            cache.sessions.clear();
            cache.consents.clear();
        }
        let missing: Vec<&str> = session_ids.iter().copied().filter(|id| !cache.sessions.contains_key(*id)).collect();
        if !missing.is_empty() {
            let (facts, directives) = store.session_facts(&missing).await?;
            // Every fetched session's student gets an entry: all its consents came with it.
            for s in &facts {
                if let Some(p) = &s.patient_id {
                    cache.consents.entry(p.clone()).or_default();
                }
            }
            add_compiled(&mut cache.consents, directives);
            cache.sessions.extend(facts.into_iter().map(|s| (s.id.clone(), s)));
        }
        let mut sessions = HashMap::with_capacity(session_ids.len());
        let mut consents: HashMap<String, Vec<Compiled>> = HashMap::new();
        for id in session_ids {
            let Some(s) = cache.sessions.get(id) else { continue };
            if let Some(p) = &s.patient_id
                && !consents.contains_key(p)
                && let Some(c) = cache.consents.get(p)
            {
                consents.insert(p.clone(), c.clone());
            }
            sessions.insert(id.to_string(), s.clone());
        }
        let patient_sessions = students_facts(store, patient_ids, &mut consents).await?;
        Ok(DecisionFacts { sessions, consents, patient_sessions })
    }

    /// Reads the facts every decision needs, in a few queries (each brings the sessions'
    /// students' consents along).
    pub async fn facts(&self, store: &Store, prefetched: Prefetched) -> Result<DecisionFacts, StoreError> {
        let (session_ids, patient_ids) = self.subject_keys();
        let mut consents = prefetched.consents;
        let mut sessions: HashMap<String, SessionFacts> = prefetched.sessions.into_iter().map(|s| (s.id.clone(), s)).collect();
        let missing: Vec<&str> = session_ids.into_iter().filter(|id| !sessions.contains_key(*id)).collect();
        if !missing.is_empty() {
            let (facts, directives) = store.session_facts(&missing).await?;
            sessions.extend(facts.into_iter().map(|s| (s.id.clone(), s)));
            add_compiled(&mut consents, directives);
        }
        let patient_sessions = students_facts(store, patient_ids, &mut consents).await?;
        Ok(DecisionFacts { sessions, consents, patient_sessions })
    }

    /// Decides each resource and applies the permits' obligations. Deletions are withheld.
    pub fn decide(self, facts: DecisionFacts, rules: &ConsentRules, who: Partner<'_>) -> Vec<Judged> {
        let ctx = Context {
            rules,
            ask: Ask { partner: who.org, purpose: who.purpose, today: who.today },
            sessions: facts.sessions,
            consents: facts.consents,
            patient_sessions: facts.patient_sessions,
        };
        let memo = self.memo;
        self.resources
            .into_iter()
            .zip(self.parsed)
            .map(|(mut r, head)| {
                if r.deleted {
                    return Judged { resource: r, verdict: Verdict::deny("not-disclosed", None) };
                }
                let (verdict, obligations) = ctx.judge_one(&r, &head);
                if verdict.permitted
                    && let Some(o) = obligations
                {
                    r.content = match &memo {
                        Some(m) => m
                            .contents
                            .get_with((version_key(&r), o, verdict.consent.clone()), || {
                                Arc::from(obligate(&r.content, &o, verdict.consent.as_ref()))
                            })
                            .to_string(),
                        None => obligate(&r.content, &o, verdict.consent.as_ref()),
                    };
                }
                Judged { resource: r, verdict }
            })
            .collect()
    }
}

/// One page of a partner's search: up to `query.count` permitted matches, the cursor after the
/// last of them when another permitted match exists (looked ahead, so a `next` link never leads
/// to an empty page that would reveal hidden matches), and every verdict for the audit trail.
#[derive(Debug, Default)]
pub struct PartnerPage {
    /// Permitted matches, redacted.
    pub matches: Vec<StoredResource>,
    /// Where the next page starts.
    pub next: Option<crate::fhir::search::Cursor>,
    /// Verdicts of every match examined.
    pub verdicts: Vec<(String, String, Verdict)>,
}

fn cursor_after(r: &StoredResource, sort: crate::fhir::search::Sort) -> crate::fhir::search::Cursor {
    crate::fhir::search::Cursor { last_updated: (sort != crate::fhir::search::Sort::Id).then_some(r.last_updated_us), id: r.id.clone() }
}

/// Rows examined per store round trip while filling a partner's page.
const SCAN_PAGE: usize = 200;

/// Runs a search for a partner: scans matches in store order, judging each, until the page is
/// full and one more permitted match is seen, or the matches run out.
pub async fn search(
    store: &Store,
    rules: &ConsentRules,
    who: Partner<'_>,
    query: &crate::fhir::search::SearchRequest,
) -> Result<PartnerPage, StoreError> {
    let mut out = PartnerPage::default();
    let mut scan = query.clone();
    scan.count = SCAN_PAGE.max(query.count + 1);
    loop {
        let page = store.fhir_search(&scan, None).await?;
        let more = page.next.clone();
        for j in judge(store, rules, who, page.matches).await? {
            if j.verdict.permitted && out.matches.len() == query.count {
                // A further permitted match exists: the page ends at the last one kept.
                out.next = out.matches.last().map(|r| cursor_after(r, query.sort));
                return Ok(out);
            }
            out.verdicts.push((j.resource.resource_type.clone(), j.resource.id.clone(), j.verdict.clone()));
            if j.verdict.permitted {
                out.matches.push(j.resource);
            }
        }
        match more {
            Some(c) => scan.cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// `_summary=count` for a partner: the number of matches it may see (every match is judged),
/// with every verdict for the audit trail.
pub async fn count(
    store: &Store,
    rules: &ConsentRules,
    who: Partner<'_>,
    query: &crate::fhir::search::SearchRequest,
) -> Result<(i64, Vec<(String, String, Verdict)>), StoreError> {
    let mut scan = query.clone();
    scan.count = 1000;
    scan.cursor = None;
    let mut verdicts = Vec::new();
    loop {
        let page = store.fhir_search(&scan, None).await?;
        let more = page.next.clone();
        for j in judge(store, rules, who, page.matches).await? {
            verdicts.push((j.resource.resource_type, j.resource.id, j.verdict));
        }
        match more {
            Some(c) => scan.cursor = Some(c),
            None => return Ok((verdicts.iter().filter(|(_, _, v)| v.permitted).count() as i64, verdicts)),
        }
    }
}

/// Why a partner may or may not receive a resource (admin explain): the decision as [`judge`]
/// makes it, and every consent's verdict for every session that decides it.
pub async fn explain(store: &Store, rules: &ConsentRules, who: Partner<'_>, r: StoredResource) -> Result<Value, StoreError> {
    let content: Value = serde_json::from_str(&r.content).unwrap_or(Value::Null);
    let reference = format!("{}/{}", r.resource_type, r.id);
    let judged = judge(store, rules, who, vec![r.clone()]).await?.pop();
    let verdict = judged.map(|j| j.verdict).unwrap_or_else(|| Verdict::deny("not-disclosed", None));
    let ask = Ask { partner: who.org, purpose: who.purpose, today: who.today };
    let mut sessions: Vec<(SessionFacts, LabelFacts)> = Vec::new();
    let mut directives = Vec::new();
    match subject_of(&r, &content) {
        Subject::Session { id, own_labels, names_note } => {
            let (facts, d) = store.session_facts(&[id.as_str()]).await?;
            for s in facts {
                let labels = subject_label_facts(&content, &s, own_labels, names_note, rules);
                sessions.push((s, labels));
            }
            directives = d;
        }
        Subject::Patient(p) => {
            let (facts, d) = store.patient_session_facts(&[p.as_str()]).await?;
            sessions.extend(facts.into_iter().map(|s| {
                let labels = session_label_facts(&s, rules);
                (s, labels)
            }));
            directives = d;
        }
        Subject::Directory | Subject::Never => {}
    }
    let mut per_session = Vec::new();
    for (s, labels) in &sessions {
        let facts = session_facts_for(s, *labels, who.today);
        let compiled: Vec<Compiled> =
            directives.iter().filter(|d| Some(d.patient.as_str()) == s.patient_id.as_deref()).map(|d| d.compile()).collect();
        let (decision, verdicts) = crate::consent::explain(&ask, &facts, &compiled, &rules.partnerships);
        per_session.push(json!({
            "session": format!("Encounter/{}", s.id),
            "site": s.site_id,
            "date_of_service": facts.service_date.to_string(),
            "categories": labels.0.iter().map(|c| c.code()).collect::<Vec<_>>(),
            "minor_consented": labels.1,
            "partner_serves_site": rules.partnerships.serves(who.org, &s.site_id, facts.service_date),
            "decision": if decision.permitted() { "permit" } else { "deny" },
            "rule": decision.rule().id(),
            "consents": verdicts.iter().map(|v| json!({
                "consent": format!("Consent/{}/_history/{}", v.consent.id, v.consent.version),
                "permits": v.result.is_ok(),
                "why_not": v.result.err().map(|m| m.text()),
                "deny_exception_matches": v.exception_matches,
            })).collect::<Vec<_>>(),
        }));
    }
    Ok(json!({
        "resource": reference,
        "partner": who.org,
        "purpose": who.purpose.code(),
        "evaluated_on": who.today.to_string(),
        "decision": if verdict.permitted { "permit" } else { "deny" },
        "rule": verdict.rule,
        "consent": verdict.consent.map(|(id, v)| format!("Consent/{id}/_history/{v}")),
        "sessions": per_session,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official R4 examples (`WG_CORPORA_DIR`, else `../shared/corpora`), as stored text:
    /// compact with sorted keys (as the gateway stores resources) and as published (pretty).
    fn examples() -> Vec<(String, String)> {
        let dir = std::env::var_os("WG_CORPORA_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"))
            .join("fhir-r4/examples");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("the FHIR R4 examples of the corpora") {
            let path = entry.expect("a directory entry").path();
            let text = std::fs::read_to_string(&path).expect("an example");
            let v: Value = serde_json::from_str(&text).expect("example JSON");
            out.push((v.to_string(), text));
        }
        assert!(out.len() > 100, "only {} examples found", out.len());
        out
    }

    fn every_obligation() -> Vec<Obligations> {
        let mut out = Vec::new();
        for purpose in [PurposeOfUse::Treat, PurposeOfUse::Payment, PurposeOfUse::Operations] {
            for bits in 0..8u8 {
                out.push(Obligations { restricted: bits & 1 != 0, purpose, part2: bits & 2 != 0, minimum_necessary: bits & 4 != 0 });
            }
        }
        out
    }

    #[test]
    fn obligations_on_stored_text_equal_those_on_the_parsed_resource() {
        let consent = ("c-1".to_string(), 3);
        let mut cases = examples();
        // Elements obligations change, absent, present or of an unexpected shape.
        for extra in [
            r#"{"resourceType":"Encounter","id":"e"}"#,
            r#"{"resourceType":"Encounter","id":"e","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00Z"},"extension":[{"url":"x","valueString":"y"}],"text":{"status":"generated","div":"<div/>"},"note":[{"text":"n"}]}"#,
            r#"{"resourceType":"Encounter","id":"e","meta":[],"extension":{"url":"x"},"zz":"\u00e9\"\\n"}"#,
            r#"{"resourceType":"Encounter","id":"e","meta":{"security":[{"system":"http://terminology.hl7.org/CodeSystem/v3-Confidentiality","code":"R"}]}}"#,
            "{\"resourceType\" : \"Encounter\",\r\n \"id\":\"e\"}",
            r#"{"resourceType":"Encounter","id":"e","id":"dup"}"#,
            r#"{"resourceType":"Encounter","meta":{"versionId":"1"},"id":"e","meta":{"versionId":"2"}}"#,
            r#"{"resourceType":"Encounter","id":"e","m\u0065ta":{"versionId":"1"},"te\u0078t":{"status":"generated","div":"<div/>"}}"#,
        ] {
            let canonical = serde_json::from_str::<Value>(extra).expect("JSON").to_string();
            cases.push((canonical, extra.to_string()));
        }
        for (compact, published) in &cases {
            for o in every_obligation() {
                let whole = obligate_value(compact, &o, Some(&consent));
                assert_eq!(obligate(compact, &o, Some(&consent)), whole, "{o:?} on {compact}");
                let from_published: Value = serde_json::from_str(&obligate(published, &o, Some(&consent))).expect("JSON out");
                assert_eq!(from_published, serde_json::from_str::<Value>(&whole).expect("JSON"), "{o:?} on {published}");
                assert!(!obligate(published, &o, None).contains('\n'), "one line");
            }
        }
    }

    #[test]
    fn the_decision_elements_read_alone_are_those_of_the_whole_resource() {
        for (compact, _) in examples() {
            let whole: Value = serde_json::from_str(&compact).expect("JSON");
            let head = parse_head(&compact);
            for k in ["meta", "encounter", "context", "target", "beneficiary", "patient"] {
                assert_eq!(head.get(k), whole.get(k), "{k} of {compact}");
            }
            assert_eq!(content_labels(&head).collect::<Vec<_>>(), content_labels(&whole).collect::<Vec<_>>(), "labels of {compact}");
        }
        assert_eq!(parse_head("[1]"), Value::Null);
        assert_eq!(parse_head("not json"), Value::Null);
    }
}
