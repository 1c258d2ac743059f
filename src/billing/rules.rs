//! Billing rules as data: `mappings/billing/payers.toml`, `programs/*.toml` (funding paths,
//! versioned by effective date) and `codes/*.toml` (procedure-code selection tables), loaded and
//! checked once at start-up. Every problem names the file, the line and the key; a program that
//! could select a code it has no rate for, a payer or LEA that does not exist, or overlapping
//! versions stop start-up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use crate::domain::Cents;
use crate::mapping::compile::line_of;
use crate::mapping::{MappingError, MappingErrors};
use crate::settings::{OrgKind, Settings};

// ---------------------------------------------------------------------------------------------
// File shapes

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayersFile {
    payers: BTreeMap<String, PayerSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PayerSpec {
    name: String,
    payer_id: Spanned<String>,
    filing_indicator: Spanned<String>,
    member_id: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodesFile {
    #[allow(dead_code)]
    description: String,
    rules: Vec<CodeRuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeRuleSpec {
    service: Vec<Spanned<String>>,
    #[serde(default)]
    renderer: Option<Vec<String>>,
    #[serde(default)]
    student_present: Option<bool>,
    minutes: Spanned<MinutesSpec>,
    code: Spanned<String>,
    units: UnitsSpec,
    #[serde(default)]
    max_units: Option<u32>,
    #[serde(default)]
    add_on: Option<Spanned<AddOnSpec>>,
    #[serde(default)]
    limits: Option<LimitsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSpec {
    #[serde(default)]
    per_day_per_provider: Option<u32>,
    #[serde(default)]
    per_year_per_student_provider: Option<u32>,
    #[serde(default)]
    not_same_day_as: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MinutesSpec {
    from: i64,
    #[serde(default)]
    to: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum UnitsSpec {
    Word(String),
    Per { per: u32, counts_from: u32 },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddOnSpec {
    code: String,
    from: i64,
    every: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgramSpec {
    id: Spanned<String>,
    name: String,
    funding_path: String,
    priority: i64,
    claim_form: Spanned<String>,
    biller: Spanned<String>,
    #[serde(default)]
    billers: Vec<Spanned<String>>,
    payer: Spanned<String>,
    versions: Vec<VersionSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionSpec {
    effective_from: Spanned<String>,
    #[serde(default)]
    effective_to: Option<Spanned<String>>,
    tiers: Vec<Spanned<u8>>,
    services: Vec<Spanned<String>>,
    renderers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    supervised: Vec<String>,
    #[serde(default)]
    supervisors: Vec<String>,
    require_coverage: bool,
    require_diagnosis: bool,
    payment_consent: bool,
    timely_filing: Spanned<TimelySpec>,
    #[serde(default)]
    visits_per_day: Option<u32>,
    #[serde(default)]
    visit_categories: BTreeMap<String, Spanned<String>>,
    codes: Spanned<String>,
    #[serde(default)]
    facility_type: Option<Spanned<String>>,
    #[serde(default)]
    place_of_service: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    rates: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    visit_line: Option<Spanned<VisitLineSpec>>,
    #[serde(default)]
    informational_revenue_code: Option<Spanned<String>>,
    #[serde(default)]
    fees: Vec<Spanned<FeeSpec>>,
    #[serde(default)]
    modifiers: Vec<Spanned<ModifierSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimelySpec {
    #[serde(default)]
    days: Option<u32>,
    #[serde(default)]
    months_after_service_month: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VisitLineSpec {
    revenue_code: String,
    code: String,
    #[serde(default)]
    modifiers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeeSpec {
    code: String,
    #[serde(default)]
    renderer: Option<String>,
    per_unit: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModifierSpec {
    when: WhenSpec,
    add: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WhenSpec {
    #[serde(default)]
    modality: Option<Vec<String>>,
    #[serde(default)]
    service: Option<Vec<String>>,
    #[serde(default)]
    renderer: Option<Vec<String>>,
    #[serde(default)]
    max_age: Option<i64>,
    #[serde(default)]
    min_age: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Compiled rules

/// Which claim a program files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimForm {
    /// 837P / FHIR claim-type `professional`.
    Professional,
    /// 837I / FHIR claim-type `institutional`.
    Institutional,
}

impl ClaimForm {
    /// The FHIR claim-type code.
    pub fn code(self) -> &'static str {
        match self {
            ClaimForm::Professional => "professional",
            ClaimForm::Institutional => "institutional",
        }
    }
}

/// Who bills a program's claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Biller {
    /// The FQHC whose scope of project includes the site on the date of service.
    SiteFqhc,
    /// The submitting LEA (when enrolled in the program).
    Lea,
}

/// Which student identifier a payer takes as the member id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberId {
    /// The Medi-Cal CIN.
    MediCalCin,
}

/// A payer.
#[derive(Debug, Clone)]
pub struct Payer {
    /// Configuration id (`medi-cal-ffs`).
    pub id: String,
    /// Display name (837 NM1*PR).
    pub name: String,
    /// Payer id (837 NM109, 835 TRN03 / N1*PR).
    pub payer_id: String,
    /// Claim filing indicator (SBR09).
    pub filing_indicator: String,
    /// Member id taken.
    pub member_id: MemberId,
}

/// How units are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Units {
    /// One per session.
    Session,
    /// One per `per` minutes; a unit counts once `counts_from` minutes of it are done.
    Per {
        /// Minutes per unit.
        per: u32,
        /// Minutes of a unit that make it count (the midpoint rule: 8 of 15, 16 of 30).
        counts_from: u32,
    },
}

impl Units {
    /// Units for `minutes` (at least the rule's minimum minutes, which the caller checked).
    pub fn count(self, minutes: i64) -> u32 {
        match self {
            Units::Session => 1,
            Units::Per { per, counts_from } => {
                let m = u32::try_from(minutes.max(0)).unwrap_or(u32::MAX);
                m.saturating_add(per - counts_from) / per
            }
        }
    }
}

/// An add-on code (90840): one unit at `from` minutes and one more every `every` minutes.
#[derive(Debug, Clone)]
pub struct AddOn {
    /// The add-on code.
    pub code: String,
    /// Minutes at which the first unit counts.
    pub from: i64,
    /// Minutes per further unit.
    pub every: i64,
}

impl AddOn {
    /// Add-on units for `minutes` (0 below `from`).
    pub fn units(&self, minutes: i64) -> u32 {
        if minutes < self.from { 0 } else { u32::try_from(1 + (minutes - self.from) / self.every).unwrap_or(u32::MAX) }
    }
}

/// One row of a code-selection table.
#[derive(Debug, Clone)]
pub struct CodeRule {
    /// Session service types.
    pub services: Vec<String>,
    /// Renderer classes (`None` = any).
    pub renderers: Option<Vec<String>>,
    /// Family sessions: with (true) or without (false) the student; `None` = either.
    pub student_present: Option<bool>,
    /// Fewest minutes.
    pub from: i64,
    /// Most minutes (`None` = no limit).
    pub to: Option<i64>,
    /// Procedure code.
    pub code: String,
    /// Unit rule.
    pub units: Units,
    /// Most units billed on one claim.
    pub max_units: Option<u32>,
    /// Frequency limits across claims (payer edits).
    pub limits: Limits,
    /// Add-on line.
    pub add_on: Option<AddOn>,
    /// File and line, for explanations.
    pub source: String,
}

/// Frequency limits of a code across claims (the payer's edits, as data).
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Units of the code one rendering provider bills per day, all students together.
    pub per_day_per_provider: Option<u32>,
    /// Units of the code one provider bills for one student per calendar year.
    pub per_year_per_student_provider: Option<u32>,
    /// Codes that, billed for the student the same day, rule this one out.
    pub not_same_day_as: Vec<String>,
}

/// A code-selection table (`mappings/billing/codes/<name>.toml`).
#[derive(Debug, Clone)]
pub struct CodeTable {
    /// File stem.
    pub name: String,
    /// Rules in order.
    pub rules: Vec<CodeRule>,
}

/// When a modifier applies.
#[derive(Debug, Clone, Default)]
pub struct When {
    /// Session modalities.
    pub modality: Option<Vec<String>>,
    /// Service types.
    pub service: Option<Vec<String>>,
    /// Renderer classes.
    pub renderer: Option<Vec<String>>,
    /// Student at most this old (whole years) on the date of service.
    pub max_age: Option<i64>,
    /// Student at least this old.
    pub min_age: Option<i64>,
}

/// A modifier rule.
#[derive(Debug, Clone)]
pub struct ModifierRule {
    /// Condition.
    pub when: When,
    /// The modifier added.
    pub add: String,
}

/// Timely-filing limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelyFiling {
    /// Days after the date of service.
    Days(u32),
    /// To the end of the `n`th month after the month of service.
    MonthsAfterServiceMonth(u32),
}

impl TimelyFiling {
    /// The last day a claim for `dos` may be filed.
    pub fn deadline(self, dos: NaiveDate) -> NaiveDate {
        match self {
            TimelyFiling::Days(d) => dos + chrono::Days::new(u64::from(d)),
            TimelyFiling::MonthsAfterServiceMonth(m) => {
                use chrono::Datelike;
                let first = dos.with_day(1).unwrap_or(dos);
                (first + chrono::Months::new(m + 1)).pred_opt().unwrap_or(first)
            }
        }
    }
}

/// The institutional payable line of a PPS visit.
#[derive(Debug, Clone)]
pub struct VisitLine {
    /// Revenue code (SV201).
    pub revenue_code: String,
    /// HCPCS (SV202-2), e.g. T1015.
    pub code: String,
    /// Modifiers (SV202-3..).
    pub modifiers: Vec<String>,
}

/// One effective-dated version of a program.
#[derive(Debug, Clone)]
pub struct ProgramVersion {
    /// First day.
    pub effective_from: NaiveDate,
    /// Last day, if any.
    pub effective_to: Option<NaiveDate>,
    /// Billable MTSS tiers.
    pub tiers: Vec<u8>,
    /// Billable service types.
    pub services: Vec<String>,
    /// Credential -> renderer class.
    pub renderers: HashMap<String, String>,
    /// Classes billed under a supervising licensee.
    pub supervised: Vec<String>,
    /// Classes that may supervise.
    pub supervisors: Vec<String>,
    /// A Medi-Cal CIN must be present.
    pub require_coverage: bool,
    /// At least one diagnosis must be present.
    pub require_diagnosis: bool,
    /// An active payment-purpose consent naming the biller must cover the session.
    pub payment_consent: bool,
    /// Filing limit.
    pub timely_filing: TimelyFiling,
    /// Visits per patient per day per biller, counted per visit category.
    pub visits_per_day: Option<u32>,
    /// Service type -> visit category (the documented same-day exceptions: a service in its own
    /// category is a visit of its own); services not listed are category `visit`.
    pub visit_categories: HashMap<String, String>,
    /// Code table.
    pub codes: Arc<CodeTable>,
    /// Institutional facility type code (CLM05-1).
    pub facility_type: Option<String>,
    /// Modality -> place of service (professional).
    pub place_of_service: HashMap<String, String>,
    /// Biller -> per-visit rate (PPS).
    pub rates: HashMap<String, Cents>,
    /// Payable visit line (PPS).
    pub visit_line: Option<VisitLine>,
    /// Revenue code of informational lines (PPS).
    pub informational_revenue_code: Option<String>,
    /// (code, renderer class or "") -> rate per unit (fee schedule).
    pub fees: HashMap<(String, String), Cents>,
    /// Modifier rules in order.
    pub modifiers: Vec<ModifierRule>,
}

impl ProgramVersion {
    /// The visit category of a service type.
    pub fn visit_category(&self, service: &str) -> &str {
        self.visit_categories.get(service).map_or("visit", String::as_str)
    }

    /// Whether the version is in force on `d`.
    pub fn covers(&self, d: NaiveDate) -> bool {
        self.effective_from <= d && self.effective_to.is_none_or(|t| d <= t)
    }

    /// Rate per unit of `code` for a renderer class.
    pub fn fee(&self, code: &str, renderer: &str) -> Option<Cents> {
        self.fees.get(&(code.to_string(), renderer.to_string())).or_else(|| self.fees.get(&(code.to_string(), String::new()))).copied()
    }
}

/// A funding path.
#[derive(Debug, Clone)]
pub struct Program {
    /// Stable id (`medi-cal-fqhc-pps`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Funding path (DOMAIN.md 0).
    pub funding_path: String,
    /// Lower is tried first.
    pub priority: i64,
    /// 837P or 837I.
    pub claim_form: ClaimForm,
    /// Who bills.
    pub biller: Biller,
    /// LEAs enrolled (biller = lea).
    pub billers: Vec<String>,
    /// Payer id (configuration).
    pub payer: String,
    /// Versions, oldest first.
    pub versions: Vec<ProgramVersion>,
    /// File the program came from.
    pub file: PathBuf,
}

impl Program {
    /// The version in force on `d`.
    pub fn version_on(&self, d: NaiveDate) -> Option<&ProgramVersion> {
        self.versions.iter().find(|v| v.covers(d))
    }
}

/// Everything under `mappings/billing/`, compiled.
#[derive(Debug, Clone)]
pub struct BillingRules {
    /// Programs in ascending priority.
    pub programs: Vec<Program>,
    /// Payers by configuration id.
    pub payers: BTreeMap<String, Payer>,
    /// Codes whose frequency limits read other claims (the codes limited and the codes named by
    /// `not_same_day_as`): the only claim lines billing looks up.
    pub limited_codes: Vec<String>,
}

/// Session vocabulary the rules may name (from the session schema).
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    /// Service types.
    pub services: Vec<String>,
    /// Modalities.
    pub modalities: Vec<String>,
    /// Credentials.
    pub credentials: Vec<String>,
}

impl Vocabulary {
    /// Reads the enums of `service.type`, `service.modality` and the clinician credential.
    pub fn from_schema(schema: &Value) -> Vocabulary {
        let list = |ptr: &str| -> Vec<String> {
            schema
                .pointer(ptr)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        Vocabulary {
            services: list("/properties/service/properties/type/enum"),
            modalities: list("/properties/service/properties/modality/enum"),
            credentials: list("/$defs/clinician/properties/credential/enum"),
        }
    }
}

struct Loader<'a> {
    errors: Vec<MappingError>,
    vocab: &'a Vocabulary,
    settings: &'a Settings,
}

impl Loader<'_> {
    fn err(&mut self, file: &Path, text: &str, offset: usize, key: &str, message: impl Into<String>) {
        self.errors.push(MappingError {
            file: file.to_path_buf(),
            line: line_of(text, offset),
            key: key.to_string(),
            message: message.into(),
        });
    }

    fn parse<T: serde::de::DeserializeOwned>(&mut self, file: &Path, text: &str) -> Option<T> {
        match toml::from_str::<T>(text) {
            Ok(v) => Some(v),
            Err(e) => {
                let offset = e.span().map_or(0, |s| s.start);
                let key = e.span().and_then(|s| text.get(s)).unwrap_or_default().lines().next().unwrap_or_default().to_string();
                self.err(file, text, offset, &key, e.message().to_string());
                None
            }
        }
    }

    fn read(&mut self, file: &Path) -> Option<String> {
        match std::fs::read_to_string(file) {
            Ok(t) => Some(t),
            Err(e) => {
                self.errors.push(MappingError {
                    file: file.to_path_buf(),
                    line: 0,
                    key: String::new(),
                    message: format!("cannot read: {e}"),
                });
                None
            }
        }
    }

    fn toml_files(&mut self, dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.extension().is_some_and(|x| x == "toml") {
                        out.push(p);
                    }
                }
            }
            Err(e) => self.errors.push(MappingError {
                file: dir.to_path_buf(),
                line: 0,
                key: String::new(),
                message: format!("cannot read folder: {e}"),
            }),
        }
        out.sort();
        out
    }

    fn payers(&mut self, file: &Path) -> BTreeMap<String, Payer> {
        let mut out = BTreeMap::new();
        let Some(text) = self.read(file) else { return out };
        let Some(spec) = self.parse::<PayersFile>(file, &text) else { return out };
        for (id, p) in spec.payers {
            let member_id = match p.member_id.get_ref().as_str() {
                "medi-cal-cin" => MemberId::MediCalCin,
                other => {
                    self.err(
                        file,
                        &text,
                        p.member_id.span().start,
                        &format!("payers.{id}.member_id"),
                        format!("unknown member id `{other}` (known: medi-cal-cin)"),
                    );
                    continue;
                }
            };
            if !x12_safe(p.payer_id.get_ref()) || p.payer_id.get_ref().len() > 80 {
                self.err(
                    file,
                    &text,
                    p.payer_id.span().start,
                    &format!("payers.{id}.payer_id"),
                    "a payer id is 1 to 80 letters, digits, spaces or - . characters",
                );
            }
            if !matches!(p.filing_indicator.get_ref().len(), 2) {
                self.err(
                    file,
                    &text,
                    p.filing_indicator.span().start,
                    &format!("payers.{id}.filing_indicator"),
                    "a claim filing indicator is two characters (MC = Medicaid)",
                );
            }
            out.insert(
                id.clone(),
                Payer { id, name: p.name, payer_id: p.payer_id.into_inner(), filing_indicator: p.filing_indicator.into_inner(), member_id },
            );
        }
        out
    }

    fn codes(&mut self, file: &Path) -> Option<CodeTable> {
        let text = self.read(file)?;
        let spec = self.parse::<CodesFile>(file, &text)?;
        let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut rules = Vec::new();
        for (i, r) in spec.rules.into_iter().enumerate() {
            let key = format!("rules[{i}]");
            for s in &r.service {
                if !self.vocab.services.contains(s.get_ref()) {
                    self.err(file, &text, s.span().start, &format!("{key}.service"), format!("unknown service type `{}`", s.get_ref()));
                }
            }
            if !procedure_code(r.code.get_ref()) {
                self.err(
                    file,
                    &text,
                    r.code.span().start,
                    &format!("{key}.code"),
                    format!("`{}` is not a CPT/HCPCS code (5 letters or digits)", r.code.get_ref()),
                );
            }
            let m = r.minutes.get_ref();
            if m.from < 1 || m.to.is_some_and(|t| t < m.from) {
                self.err(
                    file,
                    &text,
                    r.minutes.span().start,
                    &format!("{key}.minutes"),
                    "minutes run from at least 1 to a `to` no smaller than `from`",
                );
            }
            let units = match r.units {
                UnitsSpec::Word(w) if w == "session" => Units::Session,
                UnitsSpec::Word(_) => {
                    self.err(
                        file,
                        &text,
                        r.code.span().start,
                        &format!("{key}.units"),
                        "units are \"session\" or { per = N, counts_from = M }",
                    );
                    Units::Session
                }
                UnitsSpec::Per { per, counts_from } => {
                    if per == 0 || counts_from == 0 || counts_from > per {
                        self.err(file, &text, r.code.span().start, &format!("{key}.units"), "units need per >= counts_from >= 1");
                    }
                    Units::Per { per: per.max(1), counts_from: counts_from.clamp(1, per.max(1)) }
                }
            };
            if let Units::Per { counts_from, .. } = units
                && m.from < i64::from(counts_from)
            {
                self.err(
                    file,
                    &text,
                    r.minutes.span().start,
                    &format!("{key}.minutes"),
                    "minutes start below units.counts_from: the rule could bill 0 units",
                );
            }
            let add_on = r.add_on.map(|a| {
                let span = a.span().start;
                let a = a.into_inner();
                if !procedure_code(&a.code) || a.from < 1 || a.every < 1 {
                    self.err(file, &text, span, &format!("{key}.add_on"), "an add-on needs a procedure code, from >= 1 and every >= 1");
                }
                AddOn { code: a.code, from: a.from, every: a.every.max(1) }
            });
            rules.push(CodeRule {
                services: r.service.into_iter().map(Spanned::into_inner).collect(),
                renderers: r.renderer,
                student_present: r.student_present,
                from: m.from,
                to: m.to,
                code: r.code.get_ref().clone(),
                units,
                max_units: r.max_units,
                limits: r
                    .limits
                    .map(|l| Limits {
                        per_day_per_provider: l.per_day_per_provider,
                        per_year_per_student_provider: l.per_year_per_student_provider,
                        not_same_day_as: l.not_same_day_as,
                    })
                    .unwrap_or_default(),
                add_on,
                source: format!("{}:{}", file.display(), line_of(&text, r.code.span().start)),
            });
        }
        Some(CodeTable { name, rules })
    }

    fn date(&mut self, file: &Path, text: &str, d: &Spanned<String>, key: &str) -> NaiveDate {
        match NaiveDate::parse_from_str(d.get_ref(), "%Y-%m-%d") {
            Ok(p) => p,
            Err(_) => {
                self.err(file, text, d.span().start, key, format!("`{}` is not a date (YYYY-MM-DD)", d.get_ref()));
                NaiveDate::MIN
            }
        }
    }

    fn program(&mut self, file: &Path, tables: &HashMap<String, Arc<CodeTable>>, payers: &BTreeMap<String, Payer>) -> Option<Program> {
        let text = self.read(file)?;
        let spec = self.parse::<ProgramSpec>(file, &text)?;
        let t = text.as_str();
        let claim_form = match spec.claim_form.get_ref().as_str() {
            "professional" => ClaimForm::Professional,
            "institutional" => ClaimForm::Institutional,
            other => {
                self.err(file, t, spec.claim_form.span().start, "claim_form", format!("`{other}` is not professional or institutional"));
                ClaimForm::Professional
            }
        };
        let biller = match spec.biller.get_ref().as_str() {
            "site-fqhc" => Biller::SiteFqhc,
            "lea" => Biller::Lea,
            other => {
                self.err(file, t, spec.biller.span().start, "biller", format!("`{other}` is not site-fqhc or lea"));
                Biller::Lea
            }
        };
        let org_kind = |id: &str| self.settings.organizations.iter().find(|o| o.id == id).map(|o| o.kind);
        let mut bad_billers = Vec::new();
        for b in &spec.billers {
            if org_kind(b.get_ref()) != Some(OrgKind::Lea) {
                bad_billers.push((b.span().start, format!("`{}` is not an LEA in the configuration", b.get_ref())));
            }
        }
        for (at, m) in bad_billers {
            self.err(file, t, at, "billers", m);
        }
        if biller == Biller::Lea && spec.billers.is_empty() {
            self.err(file, t, spec.biller.span().start, "billers", "a program billed by LEAs lists the enrolled LEAs in `billers`");
        }
        if !payers.contains_key(spec.payer.get_ref()) {
            self.err(file, t, spec.payer.span().start, "payer", format!("unknown payer `{}` (see payers.toml)", spec.payer.get_ref()));
        }
        let mut versions: Vec<ProgramVersion> = Vec::new();
        for (i, v) in spec.versions.iter().enumerate() {
            let key = format!("versions[{i}]");
            if let Some(pv) = self.version(file, t, &key, v, claim_form, tables) {
                versions.push(pv);
            }
        }
        versions.sort_by_key(|v| v.effective_from);
        for w in versions.windows(2) {
            if w[0].effective_from == w[1].effective_from || w[0].effective_to.is_some_and(|to| to >= w[1].effective_from) {
                self.err(file, t, 0, "versions", format!("versions effective {} and {} overlap", w[0].effective_from, w[1].effective_from));
            }
        }
        // A later version ends the one before it.
        for i in 1..versions.len() {
            let next_from = versions[i].effective_from;
            if versions[i - 1].effective_to.is_none() {
                versions[i - 1].effective_to = next_from.pred_opt();
            }
        }
        if versions.is_empty() {
            self.err(file, t, 0, "versions", "a program needs at least one version");
        }
        if biller == Biller::SiteFqhc {
            for v in &versions {
                for fqhc in v.rates.keys() {
                    if org_kind(fqhc) != Some(OrgKind::Fqhc) {
                        self.errors.push(MappingError {
                            file: file.to_path_buf(),
                            line: 0,
                            key: "rates".into(),
                            message: format!("rate for `{fqhc}`, which is not an FQHC in the configuration"),
                        });
                    }
                }
            }
        }
        Some(Program {
            id: spec.id.into_inner(),
            name: spec.name,
            funding_path: spec.funding_path,
            priority: spec.priority,
            claim_form,
            biller,
            billers: spec.billers.into_iter().map(Spanned::into_inner).collect(),
            payer: spec.payer.into_inner(),
            versions,
            file: file.to_path_buf(),
        })
    }

    fn version(
        &mut self,
        file: &Path,
        t: &str,
        key: &str,
        v: &VersionSpec,
        form: ClaimForm,
        tables: &HashMap<String, Arc<CodeTable>>,
    ) -> Option<ProgramVersion> {
        let effective_from = self.date(file, t, &v.effective_from, &format!("{key}.effective_from"));
        let effective_to = v.effective_to.as_ref().map(|d| self.date(file, t, d, &format!("{key}.effective_to")));
        for tier in &v.tiers {
            if !(1..=3).contains(tier.get_ref()) {
                self.err(file, t, tier.span().start, &format!("{key}.tiers"), "MTSS tiers are 1, 2 or 3");
            }
        }
        for s in &v.services {
            if !self.vocab.services.contains(s.get_ref()) {
                self.err(file, t, s.span().start, &format!("{key}.services"), format!("unknown service type `{}`", s.get_ref()));
            }
        }
        for (svc, cat) in &v.visit_categories {
            if !self.vocab.services.contains(svc) {
                self.err(file, t, cat.span().start, &format!("{key}.visit_categories.{svc}"), format!("unknown service type `{svc}`"));
            }
        }
        for cred in v.renderers.keys() {
            if !self.vocab.credentials.contains(cred) {
                let at = v.renderers.get(cred).map_or(0, |c| c.span().start);
                self.err(file, t, at, &format!("{key}.renderers.{cred}"), format!("unknown credential `{cred}`"));
            }
        }
        let classes: Vec<&String> = v.renderers.values().map(Spanned::get_ref).collect();
        for c in v.supervised.iter().chain(&v.supervisors) {
            if !classes.contains(&c) {
                self.err(
                    file,
                    t,
                    v.codes.span().start,
                    &format!("{key}.supervised"),
                    format!("renderer class `{c}` is given to no credential"),
                );
            }
        }
        let timely_filing = match (v.timely_filing.get_ref().days, v.timely_filing.get_ref().months_after_service_month) {
            (Some(d), None) => TimelyFiling::Days(d),
            (None, Some(m)) => TimelyFiling::MonthsAfterServiceMonth(m),
            _ => {
                self.err(
                    file,
                    t,
                    v.timely_filing.span().start,
                    &format!("{key}.timely_filing"),
                    "give exactly one of days or months_after_service_month",
                );
                TimelyFiling::Days(0)
            }
        };
        let Some(codes) = tables.get(v.codes.get_ref()).cloned() else {
            self.err(file, t, v.codes.span().start, &format!("{key}.codes"), format!("no code table `{}` in codes/", v.codes.get_ref()));
            return None;
        };
        let mut place_of_service = HashMap::new();
        for (m, pos) in &v.place_of_service {
            if !self.vocab.modalities.contains(m) {
                self.err(file, t, pos.span().start, &format!("{key}.place_of_service.{m}"), format!("unknown modality `{m}`"));
            }
            if pos.get_ref().len() != 2 || !pos.get_ref().bytes().all(|b| b.is_ascii_digit()) {
                self.err(file, t, pos.span().start, &format!("{key}.place_of_service.{m}"), "a place of service is two digits (03 School)");
            }
            place_of_service.insert(m.clone(), pos.get_ref().clone());
        }
        let mut rates = HashMap::new();
        for (biller, r) in &v.rates {
            match Cents::parse(r.get_ref()) {
                Ok(c) if c.0 > 0 => {
                    rates.insert(biller.clone(), c);
                }
                Ok(_) => self.err(file, t, r.span().start, &format!("{key}.rates.{biller}"), "a rate is more than zero"),
                Err(e) => self.err(file, t, r.span().start, &format!("{key}.rates.{biller}"), e),
            }
        }
        let mut fees = HashMap::new();
        for f in &v.fees {
            let fee = f.get_ref();
            match Cents::parse(&fee.per_unit) {
                Ok(c) if c.0 > 0 => {
                    fees.insert((fee.code.clone(), fee.renderer.clone().unwrap_or_default()), c);
                }
                Ok(_) => self.err(file, t, f.span().start, &format!("{key}.fees.{}", fee.code), "a rate is more than zero"),
                Err(e) => self.err(file, t, f.span().start, &format!("{key}.fees.{}", fee.code), e),
            }
        }
        let mut modifiers = Vec::new();
        for m in &v.modifiers {
            let spec = m.get_ref();
            if spec.add.len() != 2 || !spec.add.bytes().all(|b| b.is_ascii_alphanumeric()) {
                self.err(file, t, m.span().start, &format!("{key}.modifiers"), format!("`{}` is not a two-character modifier", spec.add));
            }
            for x in spec.when.modality.iter().flatten() {
                if !self.vocab.modalities.contains(x) {
                    self.err(file, t, m.span().start, &format!("{key}.modifiers.when.modality"), format!("unknown modality `{x}`"));
                }
            }
            for x in spec.when.service.iter().flatten() {
                if !self.vocab.services.contains(x) {
                    self.err(file, t, m.span().start, &format!("{key}.modifiers.when.service"), format!("unknown service type `{x}`"));
                }
            }
            modifiers.push(ModifierRule {
                when: When {
                    modality: spec.when.modality.clone(),
                    service: spec.when.service.clone(),
                    renderer: spec.when.renderer.clone(),
                    max_age: spec.when.max_age,
                    min_age: spec.when.min_age,
                },
                add: spec.add.clone(),
            });
        }
        let visit_line = v.visit_line.as_ref().map(|l| {
            let s = l.get_ref();
            if !revenue_code(&s.revenue_code) || !procedure_code(&s.code) {
                self.err(
                    file,
                    t,
                    l.span().start,
                    &format!("{key}.visit_line"),
                    "a visit line has a 4-digit revenue code and a procedure code",
                );
            }
            VisitLine { revenue_code: s.revenue_code.clone(), code: s.code.clone(), modifiers: s.modifiers.clone() }
        });
        if let Some(r) = &v.informational_revenue_code
            && !revenue_code(r.get_ref())
        {
            self.err(file, t, r.span().start, &format!("{key}.informational_revenue_code"), "a revenue code has 4 digits");
        }
        if let Some(ft) = &v.facility_type {
            let b = ft.get_ref().as_bytes();
            if b.len() != 2 || !b.iter().all(|d| (b'1'..=b'9').contains(d)) {
                self.err(file, t, ft.span().start, &format!("{key}.facility_type"), "a facility type code is two digits 1-9 (77 = FQHC)");
            }
        }
        let at = v.codes.span().start;
        match form {
            ClaimForm::Institutional => {
                if v.facility_type.is_none() || visit_line.is_none() || v.informational_revenue_code.is_none() || rates.is_empty() {
                    self.err(
                        file,
                        t,
                        at,
                        key,
                        "an institutional (PPS) program needs facility_type, visit_line, informational_revenue_code and rates",
                    );
                }
            }
            ClaimForm::Professional => {
                for m in &self.vocab.modalities.clone() {
                    if !place_of_service.contains_key(m) {
                        self.err(file, t, at, &format!("{key}.place_of_service"), format!("no place of service for modality `{m}`"));
                    }
                }
                // Every code this version can select must have a rate.
                let mut missing = Vec::new();
                let mut classes: Vec<&String> = v.renderers.values().map(Spanned::get_ref).collect();
                classes.sort();
                classes.dedup();
                for rule in &codes.rules {
                    if !rule.services.iter().any(|s| v.services.iter().any(|x| x.get_ref() == s)) {
                        continue;
                    }
                    for class in &classes {
                        let class: &String = class;
                        if rule.renderers.as_ref().is_some_and(|r| !r.contains(class)) {
                            continue;
                        }
                        let has = |code: &str| {
                            fees.contains_key(&(code.to_string(), class.clone())) || fees.contains_key(&(code.to_string(), String::new()))
                        };
                        if !has(&rule.code) {
                            missing.push(rule.code.clone());
                        }
                        if let Some(a) = &rule.add_on
                            && !has(&a.code)
                        {
                            missing.push(a.code.clone());
                        }
                    }
                }
                missing.sort();
                missing.dedup();
                for code in missing {
                    self.err(
                        file,
                        t,
                        at,
                        &format!("{key}.fees"),
                        format!("code table `{}` can select {code}, which has no rate", codes.name),
                    );
                }
            }
        }
        Some(ProgramVersion {
            effective_from,
            effective_to,
            tiers: v.tiers.iter().map(|x| *x.get_ref()).collect(),
            services: v.services.iter().map(|x| x.get_ref().clone()).collect(),
            renderers: v.renderers.iter().map(|(k, c)| (k.clone(), c.get_ref().clone())).collect(),
            supervised: v.supervised.clone(),
            supervisors: v.supervisors.clone(),
            require_coverage: v.require_coverage,
            require_diagnosis: v.require_diagnosis,
            payment_consent: v.payment_consent,
            timely_filing,
            visits_per_day: v.visits_per_day,
            visit_categories: v.visit_categories.iter().map(|(k, c)| (k.clone(), c.get_ref().clone())).collect(),
            codes,
            facility_type: v.facility_type.as_ref().map(|x| x.get_ref().clone()),
            place_of_service,
            rates,
            visit_line,
            informational_revenue_code: v.informational_revenue_code.as_ref().map(|x| x.get_ref().clone()),
            fees,
            modifiers,
        })
    }
}

fn procedure_code(s: &str) -> bool {
    s.len() == 5 && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn revenue_code(s: &str) -> bool {
    s.len() == 4 && s.bytes().all(|b| b.is_ascii_digit())
}

fn x12_safe(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b' ' | b'-' | b'.'))
}

impl BillingRules {
    /// Loads `<mappings>/billing/`. `session_schema` gives the service types, modalities and
    /// credentials the files may name; `settings` the organisations they may name.
    pub fn load(mappings_dir: &Path, session_schema: &Value, settings: &Settings) -> Result<BillingRules, MappingErrors> {
        let vocab = Vocabulary::from_schema(session_schema);
        let root = mappings_dir.join("billing");
        let mut l = Loader { errors: Vec::new(), vocab: &vocab, settings };
        let payers = l.payers(&root.join("payers.toml"));
        let mut tables = HashMap::new();
        for f in l.toml_files(&root.join("codes")) {
            if let Some(table) = l.codes(&f) {
                tables.insert(table.name.clone(), Arc::new(table));
            }
        }
        let mut programs: Vec<Program> = Vec::new();
        for f in l.toml_files(&root.join("programs")) {
            if let Some(p) = l.program(&f, &tables, &payers) {
                if let Some(other) = programs.iter().find(|o| o.id == p.id) {
                    l.errors.push(MappingError {
                        file: f.clone(),
                        line: 1,
                        key: "id".into(),
                        message: format!("program id `{}` is also used by {}", p.id, other.file.display()),
                    });
                }
                programs.push(p);
            }
        }
        programs.sort_by_key(|p| p.priority);
        let mut limited_codes: Vec<String> = programs
            .iter()
            .flat_map(|p| p.versions.iter())
            .flat_map(|v| v.codes.rules.iter())
            .filter(|r| {
                r.limits.per_day_per_provider.is_some()
                    || r.limits.per_year_per_student_provider.is_some()
                    || !r.limits.not_same_day_as.is_empty()
            })
            .flat_map(|r| std::iter::once(r.code.clone()).chain(r.limits.not_same_day_as.iter().cloned()))
            .collect();
        limited_codes.sort();
        limited_codes.dedup();
        if l.errors.is_empty() { Ok(BillingRules { programs, payers, limited_codes }) } else { Err(MappingErrors(l.errors)) }
    }

    /// A program by id.
    pub fn program(&self, id: &str) -> Option<&Program> {
        self.programs.iter().find(|p| p.id == id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_midpoint_rule() {
        let q = Units::Per { per: 15, counts_from: 8 };
        assert_eq!([7, 8, 22, 23, 37, 38].map(|m| q.count(m)), [0, 1, 1, 2, 2, 3]);
        let h = Units::Per { per: 30, counts_from: 16 };
        assert_eq!([15, 16, 45, 46].map(|m| h.count(m)), [0, 1, 1, 2]);
        assert_eq!(Units::Session.count(90), 1);
    }

    #[test]
    fn crisis_add_on_units() {
        let a = AddOn { code: "90840".into(), from: 75, every: 30 };
        assert_eq!([74, 75, 104, 105, 134, 135].map(|m| a.units(m)), [0, 1, 1, 2, 2, 3]);
    }

    #[test]
    fn timely_filing_deadlines() -> Result<(), String> {
        let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|e| e.to_string());
        assert_eq!(TimelyFiling::Days(365).deadline(d("2026-01-15")?), d("2027-01-15")?);
        assert_eq!(TimelyFiling::MonthsAfterServiceMonth(6).deadline(d("2026-01-15")?), d("2026-07-31")?);
        assert_eq!(TimelyFiling::MonthsAfterServiceMonth(6).deadline(d("2025-08-31")?), d("2026-02-28")?);
        Ok(())
    }
}
