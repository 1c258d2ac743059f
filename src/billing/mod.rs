//! Stage 7a: which funding path a session takes and whether it is billable now.
//!
//! - [`mod@rules`] reads `mappings/billing/` (payers, programs versioned by effective date, code tables)
//!   compiled at start-up with located errors;
//! - [`mod@decide`] makes the pure decision for one session version (program, codes, units, modifiers,
//!   place of service, expected amount, or every reason not to bill);
//! - here: the decision for a stored session or a draft, with what it needs from the store
//!   (the student's consents for the payment purpose, visits already claimed that day, the
//!   program an earlier version was claimed under).

pub mod decide;
pub mod rules;

use chrono::NaiveDate;

pub use decide::{BillingDecision, Context, PlannedClaim, PlannedLine, Reason, ReasonCode};
pub use rules::{BillingRules, ClaimForm, Program};

use crate::consent::{Compiled, ConsentRules, Decision, Facts};
use crate::store::{ClaimedVisit, SessionFacts, Store, StoreError};
use crate::validate::ValidSession;

/// A session version to bill: validated, with the facts the consent decision reads.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The session id.
    pub session_id: String,
    /// The stored version decided on (`None` for a draft).
    pub version: Option<i64>,
    /// The validated record.
    pub valid: ValidSession,
    /// Site, date of service, Patient id, Encounter labels, adulthood.
    pub facts: SessionFacts,
}

/// [`Context`] over what was read from the store for one subject.
struct Gathered<'a> {
    consent_rules: &'a ConsentRules,
    facts: Facts<'a>,
    consents: Vec<Compiled>,
    visits: Vec<ClaimedVisit>,
    claimed: Option<String>,
    lines: Vec<crate::store::ClaimedLine>,
    patient: Option<&'a str>,
    date: String,
    today: NaiveDate,
}

impl Context for Gathered<'_> {
    fn fqhc_for_site(&self, site: &str, date: NaiveDate) -> Option<String> {
        self.consent_rules.partnerships.fqhc_of(site, date).map(str::to_string)
    }

    fn payment_consent(&self, biller: &str, by_name_only: bool) -> Result<String, String> {
        match crate::consent::decide_payment(biller, by_name_only, &self.facts, &self.consents, self.today) {
            Decision::Permit { consent, .. } => Ok(format!("{}/_history/{}", consent.id, consent.version)),
            Decision::Deny { rule, .. } => Err(format!("rule {}", rule.id())),
        }
    }

    fn visits_same_day(&self, biller: &str, category: &str) -> Vec<String> {
        self.visits.iter().filter(|v| v.biller == biller && v.visit_category == category).map(|v| v.session_id.clone()).collect()
    }

    fn claimed_program(&self) -> Option<String> {
        self.claimed.clone()
    }

    fn claimed_units(&self, code: &str, provider: Option<&str>, student_year: bool) -> u32 {
        let same_student = |l: &crate::store::ClaimedLine| self.patient.is_some() && l.patient_id.as_deref() == self.patient;
        let n: i64 = self
            .lines
            .iter()
            .filter(|l| l.code == code)
            .filter(|l| match (provider, student_year) {
                (Some(p), false) => l.rendering_npi == p && l.service_date == self.date,
                (Some(p), true) => l.rendering_npi == p && same_student(l),
                (None, _) => same_student(l) && l.service_date == self.date,
            })
            .map(|l| l.units)
            .sum();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

/// Decides a subject on `today`, reading its student's consents, the day's claimed visits and
/// the session's earlier claim from the store.
pub async fn decide_subject(
    store: &Store,
    consent_rules: &ConsentRules,
    rules: &BillingRules,
    subject: &Subject,
    today: NaiveDate,
) -> Result<BillingDecision, StoreError> {
    Ok(decide_subject_counted(store, consent_rules, rules, subject, today).await?.0)
}

/// As [`decide_subject`], with the other sessions whose active claims that day it saw, sorted
/// (the claim worker checks them again when it writes).
pub async fn decide_subject_counted(
    store: &Store,
    consent_rules: &ConsentRules,
    rules: &BillingRules,
    subject: &Subject,
    today: NaiveDate,
) -> Result<(BillingDecision, Vec<String>), StoreError> {
    let dos = subject.facts.date_of_service();
    let date = dos.to_string();
    let npi = subject.valid.clinician_npi.as_str();
    let (consents, visits, lines) = match subject.facts.patient_id.as_deref() {
        Some(p) => {
            let directives = store.patient_directives(&[p]).await?;
            let year = chrono::Datelike::year(&dos);
            let (from, to) = (format!("{year:04}-01-01"), format!("{year:04}-12-31"));
            (
                directives.iter().map(crate::consent::Directive::compile).collect(),
                store.claimed_visits(p, &date, &subject.session_id).await?,
                store.claimed_lines(&subject.session_id, &rules.limited_codes, npi, &date, p, &from, &to).await?,
            )
        }
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let mut seen: Vec<String> = visits.iter().map(|v| v.session_id.clone()).collect();
    seen.sort();
    let claimed = store.claimed_program(&subject.session_id).await?;
    let labels = crate::serve::session_label_facts(&subject.facts, consent_rules);
    let ctx = Gathered {
        consent_rules,
        facts: crate::serve::session_facts_for(&subject.facts, labels, today),
        consents,
        visits,
        claimed,
        lines,
        patient: subject.facts.patient_id.as_deref(),
        date,
        today,
    };
    let mut d = decide::decide(rules, &subject.valid, &ctx, today);
    if let Some(c) = d.claim.as_mut() {
        // Part 2 (SUD) data goes out only under the patient's signed consent: CLM09 "I".
        c.part2 = labels.0.contains(crate::consent::Category::SubstanceUse);
    }
    Ok((d, seen))
}
