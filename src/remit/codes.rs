//! The 835 code tables of `mappings/remit/`: claim adjustment reason codes (CARC) with what kind
//! of reason each is, remark codes (RARC), provider-level (PLB) reasons, CLP02 claim statuses and
//! CAS group codes. Loaded at start-up and by `check`; a bad entry names file, line and key.
//! A code the tables do not hold is still posted (payers add codes before tables catch up): its
//! description says it is unknown and a CARC counts as `other`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::mapping::compile::{MappingError, MappingErrors, line_of};

/// What kind of reason a CARC is (drives the reconciliation columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum CarcCategory {
    /// An expected reduction under the contract (written off, no action).
    Contractual,
    /// Moved to the patient.
    Patient,
    /// Not paid for a reason that needs action.
    Denial,
    /// Informational or bookkeeping.
    Other,
}

/// What a CLP02 status means for the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClaimOutcome {
    /// Processed (it may still have paid nothing on some lines).
    Paid,
    /// The whole claim was denied.
    Denied,
    /// Reverses an earlier payment.
    Reversal,
    /// Forwarded by the payer.
    Forwarded,
    /// Not this payer's claim.
    NotOurs,
    /// Anything else (predetermination).
    Other,
}

/// What a PLB reason is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlbKind {
    /// Interest.
    Interest,
    /// Money taken back for earlier payments.
    Recoupment,
    /// A balance carried to or from another remittance.
    ForwardingBalance,
    /// Money kept back.
    Withholding,
    /// Other provider-level credits and debits.
    Adjustment,
    /// Payments outside claim adjudication.
    Other,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Carc {
    description: String,
    category: CarcCategory,
    #[serde(default)]
    retired: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Described {
    description: String,
    #[serde(default)]
    retired: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Plb {
    description: String,
    kind: PlbKind,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Status {
    description: String,
    outcome: ClaimOutcome,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table<T> {
    codes: BTreeMap<String, T>,
}

/// The loaded tables.
#[derive(Debug, Default)]
pub struct RemitCodes {
    carc: BTreeMap<String, (String, CarcCategory)>,
    rarc: BTreeMap<String, String>,
    plb: BTreeMap<String, (String, PlbKind)>,
    status: BTreeMap<String, (String, ClaimOutcome)>,
    groups: BTreeMap<String, String>,
}

fn load_table<T: serde::de::DeserializeOwned>(dir: &Path, name: &str, errors: &mut Vec<MappingError>) -> BTreeMap<String, T> {
    let file = dir.join(name);
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            errors.push(MappingError { file, line: 0, key: String::new(), message: format!("cannot read: {e}") });
            return BTreeMap::new();
        }
    };
    match toml::from_str::<Table<T>>(&text) {
        Ok(t) => t.codes,
        Err(e) => {
            let offset = e.span().map_or(0, |s| s.start);
            let key = e.span().and_then(|s| text.get(s)).unwrap_or_default().lines().next().unwrap_or_default().to_string();
            errors.push(MappingError { file, line: line_of(&text, offset), key, message: e.message().to_string() });
            BTreeMap::new()
        }
    }
}

/// A description, marked when the code is retired from the X12 list.
fn retired(description: String, retired: bool) -> String {
    if retired { format!("{description} (retired code)") } else { description }
}

impl RemitCodes {
    /// Loads `mappings_dir/remit/*.toml`.
    pub fn load(mappings_dir: &Path) -> Result<RemitCodes, MappingErrors> {
        let dir = mappings_dir.join("remit");
        let mut errors = Vec::new();
        let carc: BTreeMap<String, Carc> = load_table(&dir, "carc.toml", &mut errors);
        let rarc: BTreeMap<String, Described> = load_table(&dir, "rarc.toml", &mut errors);
        let plb: BTreeMap<String, Plb> = load_table(&dir, "plb.toml", &mut errors);
        let status: BTreeMap<String, Status> = load_table(&dir, "claim-status.toml", &mut errors);
        let groups: BTreeMap<String, Described> = load_table(&dir, "groups.toml", &mut errors);
        for (file, table, wanted) in [
            ("claim-status.toml", status.keys().cloned().collect::<Vec<_>>(), &["1", "2", "3", "4", "22"][..]),
            ("groups.toml", groups.keys().cloned().collect(), &["CO", "OA", "PI", "PR"][..]),
        ] {
            for w in wanted {
                if !table.iter().any(|k| k == w) {
                    errors.push(MappingError {
                        file: dir.join(file),
                        line: 0,
                        key: format!("codes.{w}"),
                        message: format!("the table must hold {w}"),
                    });
                }
            }
        }
        if !errors.is_empty() {
            return Err(MappingErrors(errors));
        }
        Ok(RemitCodes {
            carc: carc.into_iter().map(|(k, v)| (k, (retired(v.description, v.retired), v.category))).collect(),
            rarc: rarc.into_iter().map(|(k, v)| (k, retired(v.description, v.retired))).collect(),
            plb: plb.into_iter().map(|(k, v)| (k, (v.description, v.kind))).collect(),
            status: status.into_iter().map(|(k, v)| (k, (v.description, v.outcome))).collect(),
            groups: groups.into_iter().map(|(k, v)| (k, retired(v.description, v.retired))).collect(),
        })
    }

    /// A CARC's description and category (`other`, described as unknown, when not in the table).
    pub fn carc(&self, code: &str) -> (String, CarcCategory) {
        match self.carc.get(code) {
            Some((d, c)) => (d.clone(), *c),
            None => (format!("CARC {code} (not in mappings/remit/carc.toml)"), CarcCategory::Other),
        }
    }

    /// A CARC's category.
    pub fn carc_category(&self, code: &str) -> CarcCategory {
        self.carc.get(code).map_or(CarcCategory::Other, |(_, c)| *c)
    }

    /// A RARC's description.
    pub fn rarc(&self, code: &str) -> String {
        self.rarc.get(code).cloned().unwrap_or_else(|| format!("RARC {code} (not in mappings/remit/rarc.toml)"))
    }

    /// A PLB reason's description and kind.
    pub fn plb(&self, code: &str) -> (String, PlbKind) {
        match self.plb.get(code) {
            Some((d, k)) => (d.clone(), *k),
            None => (format!("PLB reason {code} (not in mappings/remit/plb.toml)"), PlbKind::Other),
        }
    }

    /// A CLP02 status's description and outcome (`other` when unknown).
    pub fn status(&self, code: &str) -> (String, ClaimOutcome) {
        match self.status.get(code) {
            Some((d, o)) => (d.clone(), *o),
            None => (format!("claim status {code} (not in mappings/remit/claim-status.toml)"), ClaimOutcome::Other),
        }
    }

    /// A CAS group code's description.
    pub fn group(&self, code: &str) -> String {
        self.groups.get(code).cloned().unwrap_or_else(|| format!("group {code} (not in mappings/remit/groups.toml)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_tables_load_and_answer() -> Result<(), Box<dyn std::error::Error>> {
        let codes = RemitCodes::load(Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings").as_path()).map_err(|e| format!("{e:?}"))?;
        assert_eq!(codes.carc_category("45"), CarcCategory::Contractual);
        assert_eq!(codes.carc_category("16"), CarcCategory::Denial);
        assert_eq!(codes.carc_category("2"), CarcCategory::Patient);
        assert_eq!(codes.status("22").1, ClaimOutcome::Reversal);
        assert_eq!(codes.status("4").1, ClaimOutcome::Denied);
        assert_eq!(codes.plb("L6").1, PlbKind::Interest);
        assert!(codes.rarc("N130").starts_with("Consult"));
        assert!(codes.carc("ZZ9").0.contains("not in mappings"));
        Ok(())
    }

    #[test]
    fn a_bad_entry_names_file_line_and_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/remit");
        std::fs::create_dir_all(dir.path().join("remit"))?;
        for f in ["carc.toml", "rarc.toml", "plb.toml", "claim-status.toml", "groups.toml"] {
            std::fs::copy(src.join(f), dir.path().join("remit").join(f))?;
        }
        let carc = std::fs::read_to_string(dir.path().join("remit/carc.toml"))?;
        std::fs::write(dir.path().join("remit/carc.toml"), carc.replacen("category = \"contractual\"", "category = \"fine\"", 1))?;
        let Err(MappingErrors(errs)) = RemitCodes::load(dir.path()) else { return Err("loaded a bad category".into()) };
        assert!(errs[0].file.ends_with("carc.toml") && errs[0].line > 1 && errs[0].message.contains("fine"), "{errs:?}");
        Ok(())
    }
}
