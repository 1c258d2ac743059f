//! The serde shape of the mapping files under `mappings/` (TOML). Every struct refuses unknown
//! keys; values that later checks refer to keep their byte span so errors can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `mappings/fhir/<name>.toml`: how a session becomes one kind of FHIR resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceFile {
    /// The FHIR resource type this file produces.
    pub resource: Spanned<String>,
    /// The resource id: a source, usually a `derived.*_id` (deterministic).
    pub id: Spanned<String>,
    /// One resource per item of this session list (`session.diagnoses`); `item` refers to it.
    #[serde(default)]
    pub each: Option<Spanned<String>>,
    /// Produce the resource only when this source has a value.
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    /// Elements set once per resource.
    #[serde(default)]
    pub element: Vec<ElementSpec>,
    /// Elements set once per item of a list in the session.
    #[serde(default)]
    pub repeat: Vec<RepeatSpec>,
}

/// One element assignment.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElementSpec {
    /// Target element path inside the resource, FHIR Shorthand style: `period.start`,
    /// `identifier[+].system` (append a new item), `identifier[=].value` (the last item).
    pub path: Spanned<String>,
    /// A source value (`session.…`, `item.…`, `lea.…`, `fqhc.…`, `site.…`, `derived.…`).
    #[serde(default)]
    pub from: Option<Spanned<String>>,
    /// A constant.
    #[serde(default)]
    pub value: Option<Spanned<toml::Value>>,
    /// Text with `{source}` placeholders.
    #[serde(default)]
    pub template: Option<Spanned<String>>,
    /// Look `from` up in this table (`mappings/tables/<table>.toml`) ...
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    /// ... and take this column of the entry.
    #[serde(default)]
    pub column: Option<Spanned<String>>,
    /// Encode the `from` value: `base64` (for `base64Binary` elements such as
    /// `Attachment.data`).
    #[serde(default)]
    pub encode: Option<Spanned<String>>,
}

/// Elements repeated for each item of a session list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatSpec {
    /// The list: `session.diagnoses`, `session.service.participants`.
    pub each: Spanned<String>,
    /// Elements set per item; `item` / `item.<field>` and `derived.item_id` refer to the item.
    #[serde(default)]
    pub element: Vec<ElementSpec>,
}

/// `mappings/tables/<name>.toml`: a value table keyed by one session field.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableFile {
    /// The session field whose values key the table (`session.service.type`). When the schema
    /// lists the field's allowed values, every one must have an entry.
    pub key: Spanned<String>,
    /// What the table is for.
    #[serde(default)]
    pub description: Option<String>,
    /// Entry per key value: column name -> a scalar or a coding `{ system, code, display }`.
    pub entries: BTreeMap<Spanned<String>, BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
}

/// `mappings/security/labels.toml`: security labels added at mapping time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsFile {
    /// Rules, applied in order; labels accumulate without duplicates.
    pub rule: Vec<LabelRule>,
}

/// One labelling rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelRule {
    /// Name, for `explain` output and errors.
    pub name: Spanned<String>,
    /// Resource types labelled by this rule.
    pub applies_to: Vec<Spanned<String>>,
    /// Applies when a diagnosis falls in one of these ICD-10-CM category ranges (`F10-F19`,
    /// `F32`); on a Condition, its own code; on other resources, any of the session's codes.
    #[serde(default)]
    pub diagnosis: Vec<Spanned<String>>,
    /// Applies when the session's `treatment_consent` is one of these.
    #[serde(default)]
    pub treatment_consent: Vec<Spanned<String>>,
    /// The labels (codings; each needs a system and a code).
    pub labels: Vec<Spanned<toml::Value>>,
}
