//! Cross-field rules the schema cannot express. Each failure names the field (JSON pointer) and
//! says what is wrong in a sentence; all failures of a record are reported together.

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, Utc};

use super::session::{RawSession, TreatmentConsent, ValidSession};
use crate::domain::{self, Icd10, MediCalCin, Npi};
use crate::fhir::{IssueCode, OutcomeIssue};
use crate::settings::{OrgKind, Settings};

struct Issues(Vec<OutcomeIssue>);

impl Issues {
    fn push(&mut self, code: IssueCode, pointer: &str, text: impl Into<String>) {
        self.0.push(OutcomeIssue::error(code, text).at_pointer(pointer));
    }
}

/// Whole years between `born` and `on`.
pub fn age_on(born: NaiveDate, on: NaiveDate) -> i64 {
    let mut years = i64::from(on.year() - born.year());
    if (on.month(), on.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years
}

/// Runs every semantic rule.
pub fn check(raw: RawSession, settings: &Settings, now: DateTime<Utc>) -> Result<ValidSession, Vec<OutcomeIssue>> {
    let limits = &settings.intake;
    let mut issues = Issues(Vec::new());
    let latest = now + chrono::Duration::seconds(limits.future_tolerance_secs);

    // Organisation and site.
    match settings.organization(&raw.lea) {
        Some(org) if org.kind == OrgKind::Lea => {}
        _ => issues.push(IssueCode::CodeInvalid, "/lea", "lea is not a configured local educational agency"),
    }
    match settings.site(&raw.site) {
        None => {
            issues.push(IssueCode::CodeInvalid, "/site", "site is not a configured school site; ask the county administrator to onboard it")
        }
        Some(site) if site.lea != raw.lea => {
            issues.push(IssueCode::BusinessRule, "/site", format!("site belongs to LEA {:?}, not to the submitting LEA", site.lea))
        }
        Some(_) => {}
    }

    // Dates and duration.
    let parse_dt = |s: &str| DateTime::<FixedOffset>::parse_from_rfc3339(s).ok();
    let start = parse_dt(&raw.service.start);
    let end = parse_dt(&raw.service.end);
    if start.is_none() {
        issues.push(IssueCode::Value, "/service/start", "service.start must be a date and time with its UTC offset");
    }
    if end.is_none() {
        issues.push(IssueCode::Value, "/service/end", "service.end must be a date and time with its UTC offset");
    }
    let mut minutes = 0;
    if let (Some(s), Some(e)) = (start, end) {
        if s > latest {
            issues.push(
                IssueCode::BusinessRule,
                "/service/start",
                "service.start is in the future; only sessions that took place can be submitted",
            );
        }
        if e > latest {
            issues.push(
                IssueCode::BusinessRule,
                "/service/end",
                "service.end is in the future; only sessions that took place can be submitted",
            );
        }
        if e <= s {
            issues.push(IssueCode::Invariant, "/service/end", "service.end must be after service.start");
        } else {
            minutes = (e - s).num_minutes();
            if minutes < limits.min_session_minutes {
                issues.push(
                    IssueCode::Invariant,
                    "/service/end",
                    format!("the session lasts less than {} minute(s); check service.start and service.end", limits.min_session_minutes),
                );
            } else if minutes > limits.max_session_minutes {
                issues.push(
                    IssueCode::Invariant,
                    "/service/end",
                    format!(
                        "the session lasts {minutes} minutes, longer than the {} minutes a school session can plausibly last; check service.end",
                        limits.max_session_minutes
                    ),
                );
            }
            if let Some(f2f) = raw.service.minutes_face_to_face
                && f2f > minutes
            {
                issues.push(
                    IssueCode::Invariant,
                    "/service/minutes_face_to_face",
                    format!("service.minutes_face_to_face ({f2f}) is longer than the session itself ({minutes} minutes)"),
                );
            }
        }
    }

    // Student.
    let birth_date = NaiveDate::parse_from_str(&raw.student.birth_date, "%Y-%m-%d").ok();
    match (birth_date, start) {
        (None, _) => issues.push(IssueCode::Value, "/student/birth_date", "student.birth_date must be a calendar date YYYY-MM-DD"),
        (Some(b), _) if b > now.date_naive() => {
            issues.push(IssueCode::BusinessRule, "/student/birth_date", "student.birth_date is in the future")
        }
        (Some(b), Some(s)) => {
            let age = age_on(b, s.date_naive());
            if age < limits.min_student_age_years || age > limits.max_student_age_years {
                issues.push(
                    IssueCode::BusinessRule,
                    "/student/birth_date",
                    format!(
                        "the student would be {age} years old on the date of service; students are {} to {} years old. Check student.birth_date",
                        limits.min_student_age_years, limits.max_student_age_years
                    ),
                );
            }
            match raw.treatment_consent {
                Some(TreatmentConsent::MinorSelf) if !(limits.minor_self_consent_min_age_years..18).contains(&age) => issues.push(
                    IssueCode::BusinessRule,
                    "/treatment_consent",
                    format!(
                        "treatment_consent \"minor-self\" applies to students aged {} to 17 (Family Code 6924); this student is {age}",
                        limits.minor_self_consent_min_age_years
                    ),
                ),
                Some(TreatmentConsent::AdultSelf) if age < 18 => issues.push(
                    IssueCode::BusinessRule,
                    "/treatment_consent",
                    format!("treatment_consent \"adult-self\" needs a student aged 18 or older; this student is {age}"),
                ),
                _ => {}
            }
        }
        (Some(_), None) => {}
    }
    let cin = match raw.student.medi_cal_cin.as_deref().map(MediCalCin::parse) {
        Some(Err(e)) => {
            issues.push(IssueCode::Value, "/student/medi_cal_cin", format!("student.medi_cal_cin: {e}"));
            None
        }
        Some(Ok(c)) => Some(c),
        None => None,
    };
    if let Some(Err(e)) = raw.student.ssid.as_deref().map(domain::check_ssid) {
        issues.push(IssueCode::Value, "/student/ssid", format!("student.ssid: {e}"));
    }

    // Clinician.
    let npi =
        Npi::parse(&raw.clinician.npi).map_err(|e| issues.push(IssueCode::Value, "/clinician/npi", format!("clinician.npi: {e}"))).ok();
    let supervisor_npi = match &raw.clinician.supervisor {
        Some(sup) => Npi::parse(&sup.npi)
            .map_err(|e| issues.push(IssueCode::Value, "/clinician/supervisor/npi", format!("clinician.supervisor.npi: {e}")))
            .ok(),
        None => None,
    };
    if let (Some(n), Some(s)) = (&npi, &supervisor_npi)
        && n == s
    {
        issues.push(IssueCode::BusinessRule, "/clinician/supervisor/npi", "a clinician cannot be their own supervisor");
    }

    // Service shape.
    let svc = &raw.service;
    let group_size = svc.group_size.unwrap_or(0);
    if svc.kind == "group-counseling" && group_size < 2 {
        issues.push(IssueCode::Invariant, "/service/group_size", "a group-counseling session needs service.group_size of at least 2");
    }
    if (svc.kind == "group-counseling" || group_size >= 2) && svc.group_id.is_none() {
        issues.push(
            IssueCode::Required,
            "/service/group_id",
            "a group session needs service.group_id so the group's records can be linked",
        );
    }
    if svc.kind == "family-counseling" && svc.participants.is_empty() {
        issues.push(
            IssueCode::Required,
            "/service/participants",
            "a family-counseling session lists at least one family member in service.participants",
        );
    }

    // Diagnoses.
    let mut diagnoses: Vec<Icd10> = Vec::with_capacity(raw.diagnoses.len());
    for (i, code) in raw.diagnoses.iter().enumerate() {
        match Icd10::parse(code) {
            Ok(d) if diagnoses.contains(&d) => {
                issues.push(IssueCode::Value, &format!("/diagnoses/{i}"), format!("diagnoses[{i}] repeats an earlier diagnosis"))
            }
            Ok(d) => diagnoses.push(d),
            Err(e) => issues.push(IssueCode::CodeInvalid, &format!("/diagnoses/{i}"), format!("diagnoses[{i}] is {e}")),
        }
    }

    match (issues.0.is_empty(), npi, birth_date, start, end) {
        (true, Some(clinician_npi), Some(birth_date), Some(start), Some(end)) => {
            let minutes_face_to_face = raw.service.minutes_face_to_face.unwrap_or(minutes);
            Ok(ValidSession {
                raw,
                clinician_npi,
                supervisor_npi,
                medi_cal_cin: cin,
                birth_date,
                start,
                end,
                minutes_face_to_face,
                diagnoses,
            })
        }
        _ => Err(issues.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn age_counts_whole_years() {
        let b = NaiveDate::from_ymd_opt(2011, 4, 2).unwrap();
        assert_eq!(age_on(b, NaiveDate::from_ymd_opt(2023, 4, 1).unwrap()), 11);
        assert_eq!(age_on(b, NaiveDate::from_ymd_opt(2023, 4, 2).unwrap()), 12);
    }
}
