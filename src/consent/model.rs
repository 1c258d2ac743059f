//! What a consent says, in the gateway's own terms: the [`Directive`] every channel decides on.
//! It is built from a school-native consent form or a FHIR `Consent`, stored as JSON beside the
//! FHIR resource, and compiled ([`Directive::compile`]) into the compact form [`fn@super::decide`]
//! evaluates.

use std::path::Path;

use anyhow::Context;
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::domain::PurposeOfUse;

/// The data categories a consent can open (DOMAIN.md 4.6: general counselling, mental-health
/// diagnosis, substance-use disorder records under 42 CFR Part 2, session notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Category {
    /// Dates, service, minutes, clinician: the counselling record itself.
    GeneralCounselling,
    /// Mental-health diagnoses.
    MentalHealthDiagnosis,
    /// Substance-use disorder records (Part 2).
    SubstanceUse,
    /// Clinical session notes (never psychotherapy notes).
    SessionNotes,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 4] =
        [Category::GeneralCounselling, Category::MentalHealthDiagnosis, Category::SubstanceUse, Category::SessionNotes];

    /// The code used in forms and mapping files.
    pub fn code(self) -> &'static str {
        match self {
            Category::GeneralCounselling => "general-counselling",
            Category::MentalHealthDiagnosis => "mental-health-diagnosis",
            Category::SubstanceUse => "substance-use",
            Category::SessionNotes => "session-notes",
        }
    }

    /// Parses a code.
    pub fn parse(s: &str) -> Option<Category> {
        Self::ALL.into_iter().find(|c| c.code() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of categories (a bit set: decisions must not allocate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Categories(u8);

impl Categories {
    /// The empty set.
    pub const NONE: Categories = Categories(0);

    /// With `c` added.
    pub fn with(self, c: Category) -> Categories {
        Categories(self.0 | c.bit())
    }

    /// Whether `c` is in the set.
    pub fn contains(self, c: Category) -> bool {
        self.0 & c.bit() != 0
    }

    /// Whether every category of `other` is in this set.
    pub fn covers(self, other: Categories) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether the sets share a category.
    pub fn intersects(self, other: Categories) -> bool {
        self.0 & other.0 != 0
    }

    /// The categories, in order.
    pub fn iter(self) -> impl Iterator<Item = Category> {
        Category::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl FromIterator<Category> for Categories {
    fn from_iter<I: IntoIterator<Item = Category>>(iter: I) -> Self {
        iter.into_iter().fold(Categories::NONE, Categories::with)
    }
}

/// A set of purposes of use (bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purposes(u8);

impl Purposes {
    fn bit(p: PurposeOfUse) -> u8 {
        match p {
            PurposeOfUse::Treat => 1,
            PurposeOfUse::Payment => 2,
            PurposeOfUse::Operations => 4,
        }
    }

    /// Whether `p` is in the set.
    pub fn contains(self, p: PurposeOfUse) -> bool {
        self.0 & Self::bit(p) != 0
    }
}

impl FromIterator<PurposeOfUse> for Purposes {
    fn from_iter<I: IntoIterator<Item = PurposeOfUse>>(iter: I) -> Self {
        Purposes(iter.into_iter().fold(0, |a, p| a | Self::bit(p)))
    }
}

/// Who signed the consent (DOMAIN.md 4.1-4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Grantor {
    /// The student, a minor aged 12 or older (Family Code 6924 / 6929, H&S 124260).
    MinorSelf,
    /// A parent or guardian.
    Guardian,
    /// The student, aged 18 or older.
    AdultSelf,
}

impl Grantor {
    /// Form code.
    pub fn code(self) -> &'static str {
        match self {
            Grantor::MinorSelf => "minor-self",
            Grantor::Guardian => "guardian",
            Grantor::AdultSelf => "adult-self",
        }
    }
}

/// Lifecycle state (FHIR `Consent.status`). Only `active` consents permit anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// In force.
    Active,
    /// Revoked or expired.
    Inactive,
    /// Not yet in force.
    Draft,
    /// Offered, not accepted.
    Proposed,
    /// Refused.
    Rejected,
    /// Recorded by mistake.
    EnteredInError,
}

impl Status {
    /// FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Inactive => "inactive",
            Status::Draft => "draft",
            Status::Proposed => "proposed",
            Status::Rejected => "rejected",
            Status::EnteredInError => "entered-in-error",
        }
    }
}

/// A date range, both ends inclusive, either open.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// First day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<NaiveDate>,
    /// Last day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
}

impl Period {
    /// Whether `d` falls within the period.
    pub fn contains(&self, d: NaiveDate) -> bool {
        self.start.is_none_or(|s| s <= d) && self.end.is_none_or(|e| d <= e)
    }
}

/// Recipients a consent names: specific organisations (configuration ids) or, with `*`, every
/// FQHC that serves the student's school sites (a general treatment consent; not enough for Part 2
/// data, which needs the recipient named).
pub const ANY_RECIPIENT: &str = "*";

/// A deny exception inside a consent: what it names is withheld even where the consent permits.
/// An omitted list matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// Organisations it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<String>>,
    /// Purposes it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purposes: Option<Vec<PurposeOfUse>>,
    /// Categories it withholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<Category>>,
    /// Dates of service it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_period: Option<Period>,
}

/// A consent directive: permit these recipients, purposes and categories for the services of
/// this student within these dates, while the consent is in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// FHIR `Consent` id.
    pub id: String,
    /// Version of the FHIR `Consent` this was read from.
    pub version: i64,
    /// The student's FHIR `Patient` id.
    pub patient: String,
    /// The LEA that recorded it.
    pub lea: String,
    /// Status.
    pub status: Status,
    /// Who signed.
    pub granted_by: Grantor,
    /// Organisations (configuration ids) or [`ANY_RECIPIENT`].
    pub recipients: Vec<String>,
    /// Purposes of use.
    #[serde(with = "purpose_codes")]
    pub purposes: Vec<PurposeOfUse>,
    /// Data categories.
    pub categories: Vec<Category>,
    /// When the consent is in force (disclosures are decided against today's date).
    pub period: Period,
    /// Dates of service covered; unset = those within `period`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_period: Option<Period>,
    /// Signature date.
    pub signed_on: NaiveDate,
    /// SHA-256 (hex) of the signed document.
    pub document_sha256: String,
    /// Deny exceptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<Exception>,
}

mod purpose_codes {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::domain::PurposeOfUse;

    pub fn serialize<S: Serializer>(v: &[PurposeOfUse], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.code()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PurposeOfUse>, D::Error> {
        let codes = Vec::<String>::deserialize(d)?;
        codes.iter().map(|c| PurposeOfUse::parse(c).map_err(serde::de::Error::custom)).collect()
    }
}

impl Serialize for PurposeOfUse {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for PurposeOfUse {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        PurposeOfUse::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// A directive compiled for fast decisions (no allocation while deciding).
#[derive(Debug, Clone)]
pub struct Compiled {
    /// Consent id.
    pub id: String,
    /// Consent version.
    pub version: i64,
    pub(crate) active: bool,
    pub(crate) granted_by: Grantor,
    pub(crate) any_recipient: bool,
    pub(crate) recipients: Vec<String>,
    pub(crate) purposes: Purposes,
    pub(crate) categories: Categories,
    pub(crate) period: Period,
    pub(crate) data_period: Period,
    pub(crate) exceptions: Vec<CompiledException>,
}

#[derive(Debug, Clone)]
pub(crate) struct CompiledException {
    pub(crate) recipients: Option<Vec<String>>,
    pub(crate) purposes: Option<Purposes>,
    pub(crate) categories: Option<Categories>,
    pub(crate) data_period: Period,
}

impl Directive {
    /// The form [`fn@super::decide`] evaluates.
    pub fn compile(&self) -> Compiled {
        Compiled {
            id: self.id.clone(),
            version: self.version,
            active: self.status == Status::Active,
            granted_by: self.granted_by,
            any_recipient: self.recipients.iter().any(|r| r == ANY_RECIPIENT),
            recipients: self.recipients.iter().filter(|r| *r != ANY_RECIPIENT).cloned().collect(),
            purposes: self.purposes.iter().copied().collect(),
            categories: self.categories.iter().copied().collect(),
            period: self.period,
            data_period: self.data_period.unwrap_or(self.period),
            exceptions: self
                .exceptions
                .iter()
                .map(|e| CompiledException {
                    recipients: e.recipients.clone(),
                    purposes: e.purposes.as_ref().map(|p| p.iter().copied().collect()),
                    categories: e.categories.as_ref().map(|c| c.iter().copied().collect()),
                    data_period: e.data_period.unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// Which security labels put a resource in which category (`mappings/consent/categories.toml`).
#[derive(Debug, Clone, Default)]
pub struct CategoryLabels {
    entries: Vec<(String, String, Category)>,
    displays: Vec<(Category, String)>,
}

/// File of the category labels under the mappings folder.
pub const CATEGORIES_FILE: &str = "consent/categories.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoriesFile {
    category: Vec<CategoryEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryEntry {
    code: String,
    display: String,
    labels: Vec<String>,
}

impl CategoryLabels {
    /// Loads `mappings/consent/categories.toml`: every category once, labels as `system|code`.
    pub fn load(mappings_dir: &Path) -> anyhow::Result<CategoryLabels> {
        let path = mappings_dir.join(CATEGORIES_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses the file's text.
    pub fn parse(text: &str) -> anyhow::Result<CategoryLabels> {
        let file: CategoriesFile = toml::from_str(text)?;
        let mut out = CategoryLabels::default();
        for (i, e) in file.category.iter().enumerate() {
            let cat = Category::parse(&e.code).with_context(|| {
                format!("category[{i}].code: `{}` is not one of {}", e.code, Category::ALL.map(Category::code).join(", "))
            })?;
            if out.displays.iter().any(|(c, _)| *c == cat) {
                anyhow::bail!("category[{i}].code: `{}` is listed twice", e.code);
            }
            out.displays.push((cat, e.display.clone()));
            for (j, l) in e.labels.iter().enumerate() {
                let (system, code) = l
                    .split_once('|')
                    .filter(|(s, c)| !s.is_empty() && !c.is_empty())
                    .with_context(|| format!("category[{i}].labels[{j}]: `{l}` is not `system|code`"))?;
                out.entries.push((system.to_string(), code.to_string(), cat));
            }
        }
        for c in Category::ALL {
            if !out.displays.iter().any(|(d, _)| *d == c) {
                anyhow::bail!("category `{}` is missing", c.code());
            }
        }
        Ok(out)
    }

    /// The category a label puts a resource in, if any.
    pub fn category_of(&self, system: &str, code: &str) -> Option<Category> {
        self.entries.iter().find(|(s, c, _)| s == system && c == code).map(|(_, _, cat)| *cat)
    }

    /// The first label of a category (`system`, `code`): what a consent names for it.
    pub fn first_label(&self, c: Category) -> Option<(&str, &str)> {
        self.entries.iter().find(|(_, _, cat)| *cat == c).map(|(s, code, _)| (s.as_str(), code.as_str()))
    }

    /// A category's display text.
    pub fn display(&self, c: Category) -> &str {
        self.displays.iter().find(|(d, _)| *d == c).map(|(_, t)| t.as_str()).unwrap_or(c.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_categories_load() {
        let labels = CategoryLabels::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings")).unwrap();
        assert_eq!(labels.category_of("http://terminology.hl7.org/CodeSystem/v3-ActCode", "SUD"), Some(Category::SubstanceUse));
        assert_eq!(labels.category_of("http://terminology.hl7.org/CodeSystem/v3-ActCode", "R"), None);
    }

    #[test]
    fn bad_category_files_name_the_key() {
        let e = CategoryLabels::parse("[[category]]\ncode = \"x\"\ndisplay = \"X\"\nlabels = []\n").unwrap_err();
        assert!(format!("{e:#}").contains("category[0].code"));
        let e = CategoryLabels::parse("[[category]]\ncode = \"general-counselling\"\ndisplay = \"G\"\nlabels = [\"BH\"]\n").unwrap_err();
        assert!(format!("{e:#}").contains("labels[0]"));
        let e = CategoryLabels::parse("[[category]]\ncode = \"general-counselling\"\ndisplay = \"G\"\nlabels = []\n").unwrap_err();
        assert!(format!("{e:#}").contains("missing"));
    }

    #[test]
    fn directive_round_trips_as_json() {
        let d = Directive {
            id: "c1".into(),
            version: 1,
            patient: "p1".into(),
            lea: "lea-demo".into(),
            status: Status::Active,
            granted_by: Grantor::Guardian,
            recipients: vec!["fqhc-demo".into()],
            purposes: vec![PurposeOfUse::Treat, PurposeOfUse::Payment],
            categories: vec![Category::GeneralCounselling],
            period: Period { start: NaiveDate::from_ymd_opt(2026, 8, 1), end: None },
            data_period: None,
            signed_on: NaiveDate::from_ymd_opt(2026, 8, 1).unwrap(),
            document_sha256: "0".repeat(64),
            exceptions: vec![Exception { categories: Some(vec![Category::SubstanceUse]), ..Default::default() }],
        };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""purposes":["TREAT","HPAYMT"]"#), "{json}");
        assert_eq!(serde_json::from_str::<Directive>(&json).unwrap(), d);
    }
}
