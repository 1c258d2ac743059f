//! The billing decision for one session version: which funding path takes it, and either the
//! claim it becomes (codes, units, modifiers, place of service, charge and expected amount) or
//! every reason it is not billable, by name. Pure: what needs the database (the FQHC serving a
//! site, payment consent, other visits that day, an earlier claim) comes through [`Context`].
//!
//! Programs are tried in ascending priority. A program whose funding path does not fit the
//! session (site outside the FQHC's scope, LEA not enrolled, tier, service or credential not
//! billable under it) is passed over with its reasons; the first that fits is *selected*, and
//! then the session is billable under it or held with the reasons (too short, no coverage, no
//! diagnosis, no payment consent, filing window closed, visit limit, no rate). A session whose
//! earlier version was claimed stays with that program: one funding path per service.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use super::rules::{Biller, BillingRules, ClaimForm, CodeRule, Program, ProgramVersion};
use crate::domain::Cents;
use crate::validate::ValidSession;

/// What billing needs from outside the session.
pub trait Context {
    /// The FQHC whose scope of project included `site` on `date`.
    fn fqhc_for_site(&self, site: &str, date: NaiveDate) -> Option<String>;
    /// Whether an active consent lets the session's data go to `biller` for payment: the
    /// consent id, or why not. `by_name_only`: the consent must name the biller (LEA billers).
    fn payment_consent(&self, biller: &str, by_name_only: bool) -> Result<String, String>;
    /// Ids of other sessions of the same student that already hold a visit of `category` with
    /// `biller` on the date of service.
    fn visits_same_day(&self, biller: &str, category: &str) -> Vec<String>;
    /// The program an earlier version of this session was claimed under.
    fn claimed_program(&self) -> Option<String>;
    /// Units of `code` on other sessions' active claims: by `provider` on the date of service
    /// (all students), or, with `student_year`, by `provider` for this student in the service's
    /// calendar year; with no provider, any provider's for this student on the date of service.
    fn claimed_units(&self, code: &str, provider: Option<&str>, student_year: bool) -> u32;
}

/// Why a session is not billable (stable codes; the API shows them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReasonCode {
    /// The site is not in the scope of project of any FQHC on the date of service.
    SiteOutOfScope,
    /// The LEA is not enrolled in the program.
    BillerNotEnrolled,
    /// No version of the program is in force on the date of service.
    NoProgramVersion,
    /// The MTSS tier is not billable (tier 1 universal activities).
    TierNotBillable,
    /// The service type is not covered by the program.
    ServiceNotCovered,
    /// The clinician's credential is not a billable provider type for the program.
    CredentialNotBillable,
    /// The renderer must bill under a supervising licensee who is missing or not eligible.
    SupervisorNotEligible,
    /// Fewer minutes than the shortest billable code needs.
    TooShort,
    /// The code's frequency limits (per provider per day or year, or a code already billed
    /// that day) leave nothing to bill.
    FrequencyLimit,
    /// No code in the program's table fits the session.
    NoCode,
    /// No Medi-Cal CIN.
    NoCoverage,
    /// No diagnosis.
    NoDiagnosis,
    /// No home address (the 837 subscriber address).
    NoMemberAddress,
    /// No active payment-purpose consent naming the biller.
    NoPaymentConsent,
    /// The timely-filing window has closed.
    TimelyFilingExpired,
    /// The student already has the program's visits for the day with this biller.
    VisitLimit,
    /// No rate for the biller or code.
    NoRate,
    /// More modifiers apply than a claim line holds (4).
    TooManyModifiers,
    /// An earlier version was claimed under another program.
    ClaimedUnderOtherProgram,
}

/// One reason.
#[derive(Debug, Clone, Serialize)]
pub struct Reason {
    /// Stable code.
    pub code: ReasonCode,
    /// The program that gave it.
    pub program: String,
    /// Explanation (no personal data).
    pub message: String,
}

/// A planned claim line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlannedLine {
    /// Revenue code (institutional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revenue_code: Option<String>,
    /// CPT / HCPCS code.
    pub code: String,
    /// Modifiers (at most 4).
    pub modifiers: Vec<String>,
    /// Units.
    pub units: u32,
    /// Charge in cents.
    pub charge_cents: Cents,
    /// Expected payment in cents.
    pub expected_cents: Cents,
    /// A $0 line reporting the service performed (FQHC PPS).
    pub informational: bool,
}

/// The claim a billable session becomes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedClaim {
    /// Professional or institutional.
    pub form: ClaimForm,
    /// Billing organisation (configuration id).
    pub biller: String,
    /// Payer (configuration id).
    pub payer: String,
    /// Place of service (professional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place_of_service: Option<String>,
    /// Facility type (institutional).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facility_type: Option<String>,
    /// Rendering clinician's NPI.
    pub rendering_npi: String,
    /// Supervising licensee's NPI (associates, coaches).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervising_npi: Option<String>,
    /// Renderer class (licensed, associate, ...).
    pub renderer_class: String,
    /// Diagnoses (ICD-10-CM, dotted), principal first.
    pub diagnoses: Vec<String>,
    /// Lines.
    pub lines: Vec<PlannedLine>,
    /// Sum of line charges.
    pub charge_cents: Cents,
    /// Expected payment.
    pub expected_cents: Cents,
    /// The consent that permits the payment disclosure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<String>,
    /// The record carries 42 CFR Part 2 (SUD) data (CLM09 `I`).
    #[serde(default)]
    pub part2: bool,
    /// The visit category the claim counts against (`visits_per_day`).
    #[serde(default)]
    pub visit_category: String,
    /// SHA-256 of what the claim says about the service beyond its lines (date, student,
    /// clinician, site): an amendment that changes any of it changes the claim.
    #[serde(default)]
    pub subject_sha256: String,
}

/// What happened to one program.
#[derive(Debug, Clone, Serialize)]
pub struct Considered {
    /// Program id.
    pub program: String,
    /// `selected`, `passed-over` or `not-considered`.
    pub outcome: &'static str,
    /// Why passed over.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}

/// The decision.
#[derive(Debug, Clone, Serialize)]
pub struct BillingDecision {
    /// Date of service.
    pub date_of_service: NaiveDate,
    /// The day the decision was made (timely filing counts to it).
    pub evaluated_on: NaiveDate,
    /// Billable now.
    pub billable: bool,
    /// The program whose funding path the session takes, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    /// Its funding path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub funding_path: Option<String>,
    /// The program version (its effective date).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub program_version: Option<NaiveDate>,
    /// Last day to file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filing_deadline: Option<NaiveDate>,
    /// Days left to file (negative once late).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filing_days_left: Option<i64>,
    /// The claim, when billable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim: Option<PlannedClaim>,
    /// Why not billable (empty when billable).
    pub reasons: Vec<Reason>,
    /// Every program and what it said.
    pub considered: Vec<Considered>,
}

fn reason(p: &Program, code: ReasonCode, message: String) -> Reason {
    Reason { code, program: p.id.clone(), message }
}

/// The funding-path checks; the biller and version when the program fits.
fn fits<'p>(
    p: &'p Program,
    s: &ValidSession,
    ctx: &dyn Context,
    dos: NaiveDate,
) -> Result<(String, &'p ProgramVersion, &'p str), Vec<Reason>> {
    let mut out = Vec::new();
    let biller = match p.biller {
        Biller::SiteFqhc => ctx.fqhc_for_site(s.site(), dos),
        Biller::Lea => p.billers.iter().any(|b| b == s.lea()).then(|| s.lea().to_string()),
    };
    if biller.is_none() {
        out.push(match p.biller {
            Biller::SiteFqhc => {
                reason(p, ReasonCode::SiteOutOfScope, format!("site {} is in no FQHC's scope of project on {dos}", s.site()))
            }
            Biller::Lea => reason(p, ReasonCode::BillerNotEnrolled, format!("LEA {} is not enrolled in {}", s.lea(), p.id)),
        });
    }
    let Some(v) = p.version_on(dos) else {
        out.push(reason(p, ReasonCode::NoProgramVersion, format!("no version of {} is in force on {dos}", p.id)));
        return Err(out);
    };
    let svc = &s.raw.service;
    if !v.tiers.contains(&svc.tier) {
        out.push(reason(p, ReasonCode::TierNotBillable, format!("MTSS tier {} is not billable (billable tiers: {:?})", svc.tier, v.tiers)));
    }
    if !v.services.contains(&svc.kind) {
        out.push(reason(p, ReasonCode::ServiceNotCovered, format!("service type {} is not covered", svc.kind)));
    }
    let class = v.renderers.get(&s.raw.clinician.credential);
    if class.is_none() {
        out.push(reason(
            p,
            ReasonCode::CredentialNotBillable,
            format!("credential {} is not a billable provider type", s.raw.clinician.credential),
        ));
    }
    match (biller, class) {
        (Some(b), Some(c)) if out.is_empty() => Ok((b, v, c.as_str())),
        _ => Err(out),
    }
}

/// Selects the code rule: the first whose service, renderer, student presence and minutes fit.
fn select_code<'v>(p: &Program, v: &'v ProgramVersion, s: &ValidSession, class: &str) -> Result<&'v CodeRule, Reason> {
    let svc = &s.raw.service;
    let present = svc.student_present.unwrap_or(true);
    let minutes = s.minutes_face_to_face;
    let mut candidates = v.codes.rules.iter().filter(|r| {
        r.services.contains(&svc.kind)
            && r.renderers.as_ref().is_none_or(|rs| rs.iter().any(|x| x == class))
            && r.student_present.is_none_or(|sp| sp == present)
    });
    let mut least: Option<i64> = None;
    for r in candidates.by_ref() {
        if minutes >= r.from && r.to.is_none_or(|t| minutes <= t) {
            return Ok(r);
        }
        least = Some(least.map_or(r.from, |l| l.min(r.from)));
    }
    Err(match least {
        Some(min) if minutes < min => reason(
            p,
            ReasonCode::TooShort,
            format!("{minutes} face-to-face minutes; {} by a {class} renderer needs at least {min}", svc.kind),
        ),
        _ => reason(
            p,
            ReasonCode::NoCode,
            format!("code table {} has no code for {} by a {class} renderer lasting {minutes} minutes", v.codes.name, svc.kind),
        ),
    })
}

fn modifiers(v: &ProgramVersion, s: &ValidSession, class: &str, age: i64) -> Vec<String> {
    let svc = &s.raw.service;
    let mut out: Vec<String> = Vec::new();
    for m in &v.modifiers {
        let w = &m.when;
        let hit = w.modality.as_ref().is_none_or(|x| x.contains(&svc.modality))
            && w.service.as_ref().is_none_or(|x| x.contains(&svc.kind))
            && w.renderer.as_ref().is_none_or(|x| x.iter().any(|y| y == class))
            && w.max_age.is_none_or(|a| age <= a)
            && w.min_age.is_none_or(|a| age >= a);
        if hit && !out.contains(&m.add) {
            out.push(m.add.clone());
        }
    }
    out
}

/// Decides one session version on `today`.
pub fn decide(rules: &BillingRules, s: &ValidSession, ctx: &dyn Context, today: NaiveDate) -> BillingDecision {
    let dos = s.service_date();
    let mut d = BillingDecision {
        date_of_service: dos,
        evaluated_on: today,
        billable: false,
        program: None,
        funding_path: None,
        program_version: None,
        filing_deadline: None,
        filing_days_left: None,
        claim: None,
        reasons: Vec::new(),
        considered: Vec::new(),
    };
    let claimed = ctx.claimed_program();
    let mut passed_over = Vec::new();
    for p in &rules.programs {
        if d.program.is_some() || claimed.as_deref().is_some_and(|c| c != p.id) {
            d.considered.push(Considered { program: p.id.clone(), outcome: "not-considered", reasons: Vec::new() });
            continue;
        }
        match fits(p, s, ctx, dos) {
            Ok((biller, v, class)) => {
                d.program = Some(p.id.clone());
                d.funding_path = Some(p.funding_path.clone());
                d.program_version = Some(v.effective_from);
                d.considered.push(Considered { program: p.id.clone(), outcome: "selected", reasons: Vec::new() });
                match plan(p, v, s, ctx, &biller, class, today) {
                    Ok((claim, deadline)) => {
                        d.billable = true;
                        d.claim = Some(claim);
                        d.filing_deadline = Some(deadline);
                        d.filing_days_left = Some((deadline - today).num_days());
                    }
                    Err((reasons, deadline)) => {
                        d.reasons = reasons;
                        d.filing_deadline = Some(deadline);
                        d.filing_days_left = Some((deadline - today).num_days());
                    }
                }
            }
            Err(reasons) => {
                passed_over.extend(reasons.iter().cloned());
                d.considered.push(Considered { program: p.id.clone(), outcome: "passed-over", reasons });
            }
        }
    }
    if d.program.is_none() {
        d.reasons = passed_over;
        if let Some(c) = claimed
            && rules.program(&c).is_none()
        {
            d.reasons.push(Reason {
                code: ReasonCode::ClaimedUnderOtherProgram,
                program: c.clone(),
                message: format!("an earlier version was claimed under {c}, which no longer exists"),
            });
        }
    }
    d
}

#[allow(clippy::too_many_arguments)]
fn plan(
    p: &Program,
    v: &ProgramVersion,
    s: &ValidSession,
    ctx: &dyn Context,
    biller: &str,
    class: &str,
    today: NaiveDate,
) -> Result<(PlannedClaim, NaiveDate), (Vec<Reason>, NaiveDate)> {
    let dos = s.service_date();
    let deadline = v.timely_filing.deadline(dos);
    let mut why = Vec::new();
    let supervisor_class = s.raw.clinician.supervisor.as_ref().and_then(|sup| v.renderers.get(&sup.credential));
    let supervised = v.supervised.iter().any(|c| c == class);
    if supervised && !supervisor_class.is_some_and(|sc| v.supervisors.contains(sc)) {
        why.push(reason(
            p,
            ReasonCode::SupervisorNotEligible,
            format!(
                "a {class} renderer bills under a supervising licensee ({}), and the session names none who qualifies",
                v.supervisors.join(", ")
            ),
        ));
    }
    let rule = select_code(p, v, s, class).map_err(|r| why.push(r)).ok();
    if v.require_coverage && s.medi_cal_cin.is_none() {
        why.push(reason(p, ReasonCode::NoCoverage, "no Medi-Cal CIN: coverage is required".into()));
    }
    if s.raw.student.address.is_none() {
        why.push(reason(p, ReasonCode::NoMemberAddress, "no student.address: the claim carries the member's address".into()));
    }
    if v.require_diagnosis && s.diagnoses.is_empty() {
        why.push(reason(p, ReasonCode::NoDiagnosis, "no diagnosis: the program requires one".into()));
    }
    let consent = if v.payment_consent {
        match ctx.payment_consent(biller, p.biller == Biller::Lea) {
            Ok(id) => Some(id),
            Err(e) => {
                why.push(reason(
                    p,
                    ReasonCode::NoPaymentConsent,
                    format!("no active consent lets the session go to {biller} for payment (HPAYMT): {e}"),
                ));
                None
            }
        }
    } else {
        None
    };
    if today > deadline {
        why.push(reason(p, ReasonCode::TimelyFilingExpired, format!("the filing window closed on {deadline}")));
    }
    let category = v.visit_category(&s.raw.service.kind);
    if let Some(max) = v.visits_per_day {
        let others = ctx.visits_same_day(biller, category);
        if others.len() >= max as usize {
            why.push(reason(
                p,
                ReasonCode::VisitLimit,
                format!(
                    "{max} {category} visit(s) per student per day with {biller}: {} other session(s) of the student hold it",
                    others.len()
                ),
            ));
        }
    }
    let age = crate::validate::semantic::age_on(s.birth_date, dos);
    let mods = modifiers(v, s, class, age);
    let mut lines = Vec::new();
    if let Some(rule) = rule {
        let minutes = s.minutes_face_to_face;
        let mut units = rule.max_units.map_or(rule.units.count(minutes), |m| rule.units.count(minutes).min(m));
        let npi = s.clinician_npi.as_str();
        let l = &rule.limits;
        if let Some(max) = l.per_day_per_provider {
            units = units.min(max.saturating_sub(ctx.claimed_units(&rule.code, Some(npi), false)));
        }
        if let Some(max) = l.per_year_per_student_provider {
            units = units.min(max.saturating_sub(ctx.claimed_units(&rule.code, Some(npi), true)));
        }
        if let Some(other) = l.not_same_day_as.iter().find(|c| ctx.claimed_units(c, None, false) > 0) {
            units = 0;
            why.push(reason(
                p,
                ReasonCode::FrequencyLimit,
                format!("{} is not billed the same day as {other}, already claimed for the student", rule.code),
            ));
        } else if units == 0 {
            why.push(reason(p, ReasonCode::FrequencyLimit, format!("the frequency limits of {} are used up", rule.code)));
        }
        let add_on = rule.add_on.as_ref().map(|a| (a.code.as_str(), a.units(minutes))).filter(|(_, n)| *n > 0);
        match p.claim_form {
            ClaimForm::Institutional => {
                let rate = v.rates.get(biller).copied();
                match (rate, &v.visit_line) {
                    (Some(rate), Some(vl)) => {
                        let mut m = vl.modifiers.clone();
                        m.extend(mods.iter().filter(|x| !vl.modifiers.contains(x)).cloned());
                        lines.push(PlannedLine {
                            revenue_code: Some(vl.revenue_code.clone()),
                            code: vl.code.clone(),
                            modifiers: m,
                            units: 1,
                            charge_cents: rate,
                            expected_cents: rate,
                            informational: false,
                        });
                        let rev = v.informational_revenue_code.clone();
                        lines.push(PlannedLine {
                            revenue_code: rev.clone(),
                            code: rule.code.clone(),
                            modifiers: mods.clone(),
                            units,
                            charge_cents: Cents::ZERO,
                            expected_cents: Cents::ZERO,
                            informational: true,
                        });
                        if let Some((code, n)) = add_on {
                            lines.push(PlannedLine {
                                revenue_code: rev,
                                code: code.to_string(),
                                modifiers: mods.clone(),
                                units: n,
                                charge_cents: Cents::ZERO,
                                expected_cents: Cents::ZERO,
                                informational: true,
                            });
                        }
                    }
                    _ => why.push(reason(p, ReasonCode::NoRate, format!("no PPS visit rate for {biller} in version {}", v.effective_from))),
                }
            }
            ClaimForm::Professional => {
                let mut priced = |code: &str, n: u32| match v.fee(code, class).and_then(|f| f.times(n)) {
                    Some(amount) => lines.push(PlannedLine {
                        revenue_code: None,
                        code: code.to_string(),
                        modifiers: mods.clone(),
                        units: n,
                        charge_cents: amount,
                        expected_cents: amount,
                        informational: false,
                    }),
                    None => {
                        why.push(reason(p, ReasonCode::NoRate, format!("no rate for {code} ({class}) in version {}", v.effective_from)))
                    }
                };
                priced(&rule.code, units);
                if let Some((code, n)) = add_on {
                    priced(code, n);
                }
            }
        }
    }
    if lines.iter().any(|l| l.modifiers.len() > 4) {
        why.push(reason(p, ReasonCode::TooManyModifiers, format!("modifiers {} exceed the 4 a claim line holds", mods.join(", "))));
    }
    if !why.is_empty() {
        return Err((why, deadline));
    }
    let claim = PlannedClaim {
        form: p.claim_form,
        biller: biller.to_string(),
        payer: p.payer.clone(),
        place_of_service: match p.claim_form {
            ClaimForm::Professional => v.place_of_service.get(&s.raw.service.modality).cloned(),
            ClaimForm::Institutional => None,
        },
        facility_type: match p.claim_form {
            ClaimForm::Institutional => v.facility_type.clone(),
            ClaimForm::Professional => None,
        },
        rendering_npi: s.clinician_npi.as_str().to_string(),
        supervising_npi: if supervised { s.supervisor_npi.as_ref().map(|n| n.as_str().to_string()) } else { None },
        renderer_class: class.to_string(),
        diagnoses: s.diagnoses.iter().map(crate::domain::Icd10::dotted).collect(),
        charge_cents: lines.iter().map(|l| l.charge_cents).sum(),
        expected_cents: lines.iter().map(|l| l.expected_cents).sum(),
        lines,
        consent,
        part2: false,
        visit_category: category.to_string(),
        subject_sha256: subject_digest(s),
    };
    Ok((claim, deadline))
}

/// SHA-256 (hex) of the claim-relevant facts of a session other than its codes: the date of
/// service, the student, the clinician and supervisor, and the site.
fn subject_digest(s: &ValidSession) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(s.service_date().to_string());
    h.update([0]);
    h.update(s.raw.site.as_bytes());
    h.update([0]);
    if let Ok(v) = serde_json::to_vec(&s.raw.student) {
        h.update(v);
    }
    h.update([0]);
    if let Ok(v) = serde_json::to_vec(&s.raw.clinician) {
        h.update(v);
    }
    hex::encode(h.finalize())
}
