//! Stage 5: consent-governed sharing with FQHC partners.
//!
//! - [`model`]: what a consent says ([`model::Directive`]), read from a school-native consent form
//!   or a FHIR `Consent`, and the data categories it can open (`mappings/consent/categories.toml`);
//! - [`mod@decide`]: the one decision function every partner channel calls, and its explanation.

pub mod decide;
pub mod fhir_consent;
pub mod form;
pub mod model;
pub mod records;

pub use decide::{Ask, Decision, Facts, Obligations, Partnerships, Rule, decide, decide_payment, explain};
pub use model::{Categories, Category, CategoryLabels, Compiled, Directive, Grantor, Period, Status};

/// The consent rules compiled at start-up: category labels (`mappings/consent/`) and the
/// FQHC-site partnerships (configuration).
#[derive(Debug, Clone)]
pub struct ConsentRules {
    /// Which labels put a record in which category.
    pub labels: CategoryLabels,
    /// Which FQHC serves which site when.
    pub partnerships: Partnerships,
}

impl ConsentRules {
    /// Loads the rules named by the settings.
    pub fn from_settings(settings: &crate::settings::Settings) -> anyhow::Result<ConsentRules> {
        Ok(ConsentRules {
            labels: CategoryLabels::load(&settings.rules.mappings_dir)?,
            partnerships: Partnerships::from_settings(settings),
        })
    }
}
