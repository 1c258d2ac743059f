//! The one consent decision: may partner X receive this record for purpose Z? (DOMAIN.md 4.8).
//!
//! [`decide`] is pure and allocation-free: the caller gathers the [`Facts`] of the record (its
//! patient, site, date of service and security labels) and the patient's compiled consents,
//! and gets a [`Decision`]: permit with [`Obligations`], or deny with the [`Rule`] that decided.
//! Every partner channel (read, vread, history, search, `_include`, counts, paging, export)
//! calls it; [`explain`] gives the same answer with every consent's evaluation for admins.
//!
//! Rules, in order:
//! 1. `partner-site`: the partner must be the FQHC linked to the record's school site on the date
//!    of service (configuration `[[partnerships]]`);
//! 2. `purpose`: the purpose must be one an FQHC may ask for (TREAT, HPAYMT, HOPERAT);
//! 3. `psychotherapy-notes`: psychotherapy-note content (PSYTHPN) is never disclosed;
//!    `minimum-necessary`: session notes go out for treatment only (DOMAIN.md 4.8 table:
//!    progress text never for payment or operations);
//! 4. `consent-exception`: a deny exception of an applicable consent that matches wins;
//! 5. `consent`: an active consent in force today that names the partner (Part 2 data: by name,
//!    not by `*`), the purpose, every data category of the record and its date of service, signed
//!    by someone who may open it (a minor's self-consented services only by the minor; a
//!    parent's consent never opens them), permits;
//! 6. `no-consent`: otherwise deny.

use chrono::NaiveDate;

use super::model::{Categories, Category, Compiled, Grantor};
use crate::domain::PurposeOfUse;

/// What the decision knows about one record.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The school site of the session.
    pub site: &'a str,
    /// Date of service.
    pub service_date: NaiveDate,
    /// Data categories of the record (from its security labels); empty = general.
    pub categories: Categories,
    /// The student consented to the service themself (`minor-consent` label).
    pub minor_consented: bool,
    /// Psychotherapy-note content (`PSYTHPN` label).
    pub psychotherapy_note: bool,
    /// The student is 18 or older today: a parent's or guardian's consent no longer opens
    /// anything (the adult student decides).
    pub student_adult: bool,
}

/// Who asks, for what, when.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The partner's FQHC (configuration id).
    pub partner: &'a str,
    /// Purpose of use.
    pub purpose: PurposeOfUse,
    /// Today (consents are judged in force on this date).
    pub today: NaiveDate,
}

/// The rule that decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Not the FQHC of the record's site.
    PartnerSite,
    /// Purpose not allowed for this partner.
    Purpose,
    /// Psychotherapy notes are never disclosed.
    PsychotherapyNotes,
    /// Session notes are disclosed for treatment only.
    MinimumNecessary,
    /// A consent's deny exception matched.
    ConsentException,
    /// A consent permits.
    Consent,
    /// No consent permits.
    NoConsent,
}

impl Rule {
    /// Stable rule id (audit trail, explain).
    pub fn id(self) -> &'static str {
        match self {
            Rule::PartnerSite => "partner-site",
            Rule::Purpose => "purpose",
            Rule::PsychotherapyNotes => "psychotherapy-notes",
            Rule::MinimumNecessary => "minimum-necessary",
            Rule::ConsentException => "consent-exception",
            Rule::Consent => "consent",
            Rule::NoConsent => "no-consent",
        }
    }
}

/// What a permit obliges the discloser to do to the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Obligations {
    /// Add confidentiality `R` (restricted) to `meta.security` if absent.
    pub restricted: bool,
    /// Add the purpose of use to `meta.security`.
    pub purpose: PurposeOfUse,
    /// Part 2 data: add `NORDSCLCD` and the 42 CFR 2.32 notice.
    pub part2: bool,
    /// Remove narrative (`text`) and notes (`note`) elements: purposes other than treatment get the
    /// minimum necessary (DOMAIN.md 4.8 table).
    pub minimum_necessary: bool,
}

/// The outcome.
#[derive(Debug, Clone, Copy)]
pub enum Decision<'c> {
    /// Disclose, under these obligations, because of this consent.
    Permit {
        /// The consent that permits.
        consent: &'c Compiled,
        /// What to do to the record.
        obligations: Obligations,
    },
    /// Withhold.
    Deny {
        /// The rule that decided.
        rule: Rule,
        /// The consent whose exception decided, if any.
        consent: Option<&'c Compiled>,
    },
}

impl Decision<'_> {
    /// Whether the record may be disclosed.
    pub fn permitted(&self) -> bool {
        matches!(self, Decision::Permit { .. })
    }

    /// The rule that decided.
    pub fn rule(&self) -> Rule {
        match self {
            Decision::Permit { .. } => Rule::Consent,
            Decision::Deny { rule, .. } => *rule,
        }
    }
}

/// Why one consent does not permit (for [`explain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// Not active (revoked, draft, ...).
    NotActive,
    /// Not in force today.
    NotInForce,
    /// Signed by someone who cannot open this record.
    Grantor,
    /// Does not name the partner.
    Recipient,
    /// Part 2 data and the partner is not named (only `*`).
    Part2Recipient,
    /// Does not name the purpose.
    Purpose,
    /// Does not cover every data category of the record.
    Category,
    /// The date of service is outside its data period.
    ServiceDate,
}

impl Mismatch {
    /// A sentence for explain.
    pub fn text(self) -> &'static str {
        match self {
            Mismatch::NotActive => "the consent is not active (revoked, expired, draft or entered in error)",
            Mismatch::NotInForce => "today is outside the consent's period",
            Mismatch::Grantor => {
                "the consent's signer cannot open this record (a minor's self-consented services need the minor's own consent)"
            }
            Mismatch::Recipient => "the consent does not name this partner",
            Mismatch::Part2Recipient => "substance-use (42 CFR Part 2) data needs a consent that names this partner, not a general one",
            Mismatch::Purpose => "the consent does not allow this purpose of use",
            Mismatch::Category => "the consent does not cover every data category of the record",
            Mismatch::ServiceDate => "the date of service is outside the consent's data period",
        }
    }
}

/// Which FQHC serves which site when (configuration `[[partnerships]]`).
#[derive(Debug, Clone, Default)]
pub struct Partnerships {
    links: Vec<(String, String, super::model::Period)>,
}

impl Partnerships {
    /// From configuration.
    pub fn from_settings(settings: &crate::settings::Settings) -> Partnerships {
        let mut links = Vec::new();
        for p in &settings.partnerships {
            for s in &p.sites {
                links.push((s.clone(), p.fqhc.clone(), super::model::Period { start: p.effective_from, end: p.effective_to }));
            }
        }
        Partnerships { links }
    }

    /// Whether `fqhc` served `site` on `date`.
    pub fn serves(&self, fqhc: &str, site: &str, date: NaiveDate) -> bool {
        self.links.iter().any(|(s, f, p)| s == site && f == fqhc && p.contains(date))
    }

    /// The FQHC that served `site` on `date` (the first configured, if several).
    pub fn fqhc_of(&self, site: &str, date: NaiveDate) -> Option<&str> {
        self.links.iter().find(|(s, _, p)| s == site && p.contains(date)).map(|(_, f, _)| f.as_str())
    }
}

/// The purposes an FQHC partner may ask for (DOMAIN.md 4.8 step 3). Payers and TPAs, when they
/// become partners, get HPAYMT only.
fn purpose_allowed(purpose: PurposeOfUse) -> bool {
    matches!(purpose, PurposeOfUse::Treat | PurposeOfUse::Payment | PurposeOfUse::Operations)
}

fn grantor_may_open(g: Grantor, minor_consented: bool) -> bool {
    match (g, minor_consented) {
        (Grantor::MinorSelf | Grantor::AdultSelf, true) => true,
        (Grantor::Guardian, true) => false,
        (Grantor::Guardian | Grantor::AdultSelf, false) => true,
        (Grantor::MinorSelf, false) => false,
    }
}

fn required(facts: &Facts<'_>) -> Categories {
    if facts.categories == Categories::NONE { Categories::NONE.with(Category::GeneralCounselling) } else { facts.categories }
}

fn names(c: &Compiled, partner: &str) -> bool {
    c.recipients.iter().any(|r| r == partner)
}

/// Whether consent `c` is one whose provisions apply to this record at all (active, in force,
/// signed by someone who may open it).
fn applicable(c: &Compiled, ask: &Ask<'_>, facts: &Facts<'_>) -> Result<(), Mismatch> {
    if !c.active {
        return Err(Mismatch::NotActive);
    }
    if !c.period.contains(ask.today) {
        return Err(Mismatch::NotInForce);
    }
    if !grantor_may_open(c.granted_by, facts.minor_consented) || (c.granted_by == Grantor::Guardian && facts.student_adult) {
        return Err(Mismatch::Grantor);
    }
    Ok(())
}

/// Whether consent `c` permits this record; the first reason it does not otherwise.
pub fn evaluate(c: &Compiled, ask: &Ask<'_>, facts: &Facts<'_>) -> Result<(), Mismatch> {
    applicable(c, ask, facts)?;
    let part2 = facts.categories.contains(Category::SubstanceUse);
    if !names(c, ask.partner) {
        if !c.any_recipient {
            return Err(Mismatch::Recipient);
        }
        if part2 {
            return Err(Mismatch::Part2Recipient);
        }
    }
    if !c.purposes.contains(ask.purpose) {
        return Err(Mismatch::Purpose);
    }
    if !c.categories.covers(required(facts)) {
        return Err(Mismatch::Category);
    }
    if !c.data_period.contains(facts.service_date) {
        return Err(Mismatch::ServiceDate);
    }
    Ok(())
}

fn exception_matches(c: &Compiled, ask: &Ask<'_>, facts: &Facts<'_>) -> bool {
    let req = required(facts);
    c.exceptions.iter().any(|e| {
        e.recipients.as_ref().is_none_or(|r| r.iter().any(|x| x == ask.partner || x == super::model::ANY_RECIPIENT))
            && e.purposes.is_none_or(|p| p.contains(ask.purpose))
            && e.categories.is_none_or(|cats| cats.intersects(req))
            && e.data_period.contains(facts.service_date)
    })
}

/// Decides one record. `consents` are the record's patient's consents (any order).
pub fn decide<'c>(ask: &Ask<'_>, facts: &Facts<'_>, consents: &'c [Compiled], partnerships: &Partnerships) -> Decision<'c> {
    if !partnerships.serves(ask.partner, facts.site, facts.service_date) {
        return Decision::Deny { rule: Rule::PartnerSite, consent: None };
    }
    if !purpose_allowed(ask.purpose) {
        return Decision::Deny { rule: Rule::Purpose, consent: None };
    }
    decide_by_consents(ask, facts, consents, |_| true)
}

/// Whether the record may go to `recipient` for payment (HPAYMT): the same rules as [`decide`]
/// after the partner-site rule, which is for partners' reads. Billing asks this of the
/// organisation that bills (an FQHC, or an LEA under a fee-schedule program). With
/// `by_name_only` a consent must name the recipient: "every partnered FQHC" (`*`) does not
/// open payment disclosures by an LEA.
pub fn decide_payment<'c>(
    recipient: &str,
    by_name_only: bool,
    facts: &Facts<'_>,
    consents: &'c [Compiled],
    today: NaiveDate,
) -> Decision<'c> {
    let ask = Ask { partner: recipient, purpose: PurposeOfUse::Payment, today };
    decide_by_consents(&ask, facts, consents, |c| !by_name_only || names(c, recipient))
}

fn decide_by_consents<'c>(
    ask: &Ask<'_>,
    facts: &Facts<'_>,
    consents: &'c [Compiled],
    may_permit: impl Fn(&Compiled) -> bool,
) -> Decision<'c> {
    if facts.psychotherapy_note {
        return Decision::Deny { rule: Rule::PsychotherapyNotes, consent: None };
    }
    if facts.categories.contains(Category::SessionNotes) && ask.purpose != PurposeOfUse::Treat {
        return Decision::Deny { rule: Rule::MinimumNecessary, consent: None };
    }
    // Deny beats permit: any applicable consent's matching exception withholds the record.
    if let Some(c) = consents.iter().find(|c| applicable(c, ask, facts).is_ok() && exception_matches(c, ask, facts)) {
        return Decision::Deny { rule: Rule::ConsentException, consent: Some(c) };
    }
    match consents.iter().find(|c| may_permit(c) && evaluate(c, ask, facts).is_ok()) {
        Some(c) => Decision::Permit {
            consent: c,
            obligations: Obligations {
                restricted: true,
                purpose: ask.purpose,
                part2: facts.categories.contains(Category::SubstanceUse),
                minimum_necessary: ask.purpose != PurposeOfUse::Treat,
            },
        },
        None => Decision::Deny { rule: Rule::NoConsent, consent: None },
    }
}

/// One consent's verdict in an explanation.
#[derive(Debug, Clone)]
pub struct ConsentVerdict<'c> {
    /// The consent.
    pub consent: &'c Compiled,
    /// `Ok` when it permits; why not otherwise.
    pub result: Result<(), Mismatch>,
    /// Whether one of its deny exceptions matches.
    pub exception_matches: bool,
}

/// The decision and every consent's verdict (admin explain).
pub fn explain<'c>(
    ask: &Ask<'_>,
    facts: &Facts<'_>,
    consents: &'c [Compiled],
    partnerships: &Partnerships,
) -> (Decision<'c>, Vec<ConsentVerdict<'c>>) {
    let verdicts = consents
        .iter()
        .map(|c| ConsentVerdict {
            consent: c,
            result: evaluate(c, ask, facts),
            exception_matches: applicable(c, ask, facts).is_ok() && exception_matches(c, ask, facts),
        })
        .collect();
    (decide(ask, facts, consents, partnerships), verdicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::model::{Directive, Exception, Period, Status};

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn partnerships() -> Partnerships {
        Partnerships {
            links: vec![
                ("site-a".into(), "fqhc-a".into(), Period { start: Some(day("2026-01-01")), end: None }),
                ("site-b".into(), "fqhc-b".into(), Period::default()),
            ],
        }
    }

    fn consent(f: impl FnOnce(&mut Directive)) -> Compiled {
        let mut d = Directive {
            id: "c1".into(),
            version: 1,
            patient: "p".into(),
            lea: "lea".into(),
            status: Status::Active,
            granted_by: Grantor::Guardian,
            recipients: vec!["fqhc-a".into()],
            purposes: vec![PurposeOfUse::Treat],
            categories: vec![Category::GeneralCounselling],
            period: Period { start: Some(day("2026-08-01")), end: Some(day("2027-06-30")) },
            data_period: None,
            signed_on: day("2026-08-01"),
            document_sha256: "0".repeat(64),
            exceptions: vec![],
        };
        f(&mut d);
        d.compile()
    }

    fn facts() -> Facts<'static> {
        Facts {
            site: "site-a",
            service_date: day("2026-10-01"),
            categories: Categories::NONE.with(Category::GeneralCounselling),
            minor_consented: false,
            psychotherapy_note: false,
            student_adult: false,
        }
    }

    fn ask() -> Ask<'static> {
        Ask { partner: "fqhc-a", purpose: PurposeOfUse::Treat, today: day("2026-11-30") }
    }

    fn rule(ask: Ask<'_>, facts: Facts<'_>, consents: &[Compiled]) -> Rule {
        decide(&ask, &facts, consents, &partnerships()).rule()
    }

    #[test]
    fn a_matching_consent_permits_with_labels() {
        let c = [consent(|_| {})];
        let d = decide(&ask(), &facts(), &c, &partnerships());
        let Decision::Permit { consent, obligations } = d else { panic!("{d:?}") };
        assert_eq!(consent.id, "c1");
        assert!(obligations.restricted && !obligations.part2 && !obligations.minimum_necessary);
    }

    #[test]
    fn deny_by_default() {
        assert_eq!(rule(ask(), facts(), &[]), Rule::NoConsent);
    }

    #[test]
    fn only_the_fqhc_of_the_site_on_the_date_of_service() {
        let c = [consent(|d| d.recipients = vec!["fqhc-a".into(), "fqhc-b".into()])];
        assert_eq!(rule(Ask { partner: "fqhc-b", ..ask() }, facts(), &c), Rule::PartnerSite);
        assert_eq!(rule(ask(), Facts { service_date: day("2025-12-31"), ..facts() }, &c), Rule::PartnerSite);
    }

    #[test]
    fn expired_revoked_wrong_purpose_wrong_partner() {
        assert_eq!(rule(Ask { today: day("2027-07-01"), ..ask() }, facts(), &[consent(|_| {})]), Rule::NoConsent);
        assert_eq!(rule(ask(), facts(), &[consent(|d| d.status = Status::Inactive)]), Rule::NoConsent);
        assert_eq!(rule(Ask { purpose: PurposeOfUse::Payment, ..ask() }, facts(), &[consent(|_| {})]), Rule::NoConsent);
        assert_eq!(rule(ask(), facts(), &[consent(|d| d.recipients = vec!["fqhc-b".into()])]), Rule::NoConsent);
        // Service before the consent's data period.
        assert_eq!(rule(ask(), Facts { service_date: day("2026-07-01"), ..facts() }, &[consent(|_| {})]), Rule::NoConsent);
    }

    #[test]
    fn categories_must_all_be_covered() {
        let psy =
            Facts { categories: Categories::NONE.with(Category::GeneralCounselling).with(Category::MentalHealthDiagnosis), ..facts() };
        assert_eq!(rule(ask(), psy, &[consent(|_| {})]), Rule::NoConsent);
        let both = consent(|d| d.categories = vec![Category::GeneralCounselling, Category::MentalHealthDiagnosis]);
        assert_eq!(rule(ask(), psy, &[both]), Rule::Consent);
        // A record without labels needs the general category.
        assert_eq!(rule(ask(), Facts { categories: Categories::NONE, ..facts() }, &[consent(|_| {})]), Rule::Consent);
    }

    #[test]
    fn parent_consent_does_not_open_minor_consented_services() {
        let minor = Facts { minor_consented: true, ..facts() };
        assert_eq!(rule(ask(), minor, &[consent(|_| {})]), Rule::NoConsent);
        assert_eq!(rule(ask(), minor, &[consent(|d| d.granted_by = Grantor::MinorSelf)]), Rule::Consent);
        // And the minor's own consent does not open the services the parent consented to.
        assert_eq!(rule(ask(), facts(), &[consent(|d| d.granted_by = Grantor::MinorSelf)]), Rule::NoConsent);
    }

    #[test]
    fn a_guardians_consent_lapses_at_18() {
        let adult = Facts { student_adult: true, ..facts() };
        assert_eq!(rule(ask(), adult, &[consent(|_| {})]), Rule::NoConsent);
        assert_eq!(rule(ask(), adult, &[consent(|d| d.granted_by = Grantor::AdultSelf)]), Rule::Consent);
    }

    #[test]
    fn part2_needs_the_recipient_named() {
        let sud = Facts { categories: Categories::NONE.with(Category::GeneralCounselling).with(Category::SubstanceUse), ..facts() };
        let cats = vec![Category::GeneralCounselling, Category::SubstanceUse];
        let general = consent(|d| {
            d.recipients = vec!["*".into()];
            d.categories = cats.clone();
        });
        assert_eq!(rule(ask(), sud, std::slice::from_ref(&general)), Rule::NoConsent);
        assert_eq!(rule(ask(), facts(), &[general]), Rule::Consent, "a general consent opens non-Part 2 data");
        let named = consent(|d| d.categories = cats.clone());
        let d = decide(&ask(), &sud, std::slice::from_ref(&named), &partnerships());
        assert!(matches!(d, Decision::Permit { obligations: Obligations { part2: true, .. }, .. }));
    }

    #[test]
    fn psychotherapy_notes_never() {
        let all = consent(|d| d.categories = Category::ALL.to_vec());
        assert_eq!(rule(ask(), Facts { psychotherapy_note: true, ..facts() }, &[all]), Rule::PsychotherapyNotes);
    }

    #[test]
    fn notes_need_the_notes_category_and_treatment() {
        let notes = Facts { categories: Categories::NONE.with(Category::SessionNotes), ..facts() };
        assert_eq!(rule(ask(), notes, &[consent(|_| {})]), Rule::NoConsent);
        let all = consent(|d| {
            d.categories = vec![Category::SessionNotes];
            d.purposes = PurposeOfUse::ALL.to_vec();
        });
        assert_eq!(rule(ask(), notes, std::slice::from_ref(&all)), Rule::Consent);
        assert_eq!(rule(Ask { purpose: PurposeOfUse::Payment, ..ask() }, notes, &[all]), Rule::MinimumNecessary);
    }

    #[test]
    fn deny_exception_beats_any_permit() {
        let sud = Facts { categories: Categories::NONE.with(Category::GeneralCounselling).with(Category::SubstanceUse), ..facts() };
        let permits = consent(|d| {
            d.id = "c-permit".into();
            d.categories = vec![Category::GeneralCounselling, Category::SubstanceUse];
        });
        let withholds = consent(|d| {
            d.id = "c-deny".into();
            d.exceptions = vec![Exception { categories: Some(vec![Category::SubstanceUse]), ..Default::default() }];
        });
        let consents = [permits, withholds];
        let d = decide(&ask(), &sud, &consents, &partnerships());
        assert!(matches!(d, Decision::Deny { rule: Rule::ConsentException, consent: Some(c) } if c.id == "c-deny"), "{d:?}");
        // The exception does not touch other categories.
        assert_eq!(rule(ask(), facts(), &consents), Rule::Consent);
        // A revoked consent's exception no longer applies.
        let revoked = consent(|d| {
            d.status = Status::Inactive;
            d.exceptions = vec![Exception::default()];
        });
        assert_eq!(rule(ask(), facts(), &[consent(|_| {}), revoked]), Rule::Consent);
    }

    #[test]
    fn payment_gets_the_minimum_necessary() {
        let c = [consent(|d| d.purposes = vec![PurposeOfUse::Payment])];
        let d = decide(&Ask { purpose: PurposeOfUse::Payment, ..ask() }, &facts(), &c, &partnerships());
        assert!(matches!(
            d,
            Decision::Permit { obligations: Obligations { minimum_necessary: true, purpose: PurposeOfUse::Payment, .. }, .. }
        ));
    }

    #[test]
    fn explain_gives_each_consents_reason() {
        let consents = [consent(|d| d.status = Status::Inactive), consent(|d| d.purposes = vec![PurposeOfUse::Payment]), consent(|_| {})];
        let (d, verdicts) = explain(&ask(), &facts(), &consents, &partnerships());
        assert!(d.permitted());
        let r: Vec<_> = verdicts.iter().map(|v| v.result).collect();
        assert_eq!(r, vec![Err(Mismatch::NotActive), Err(Mismatch::Purpose), Ok(())]);
    }
}
