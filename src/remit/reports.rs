//! Finance reports, to the cent (JSON, and CSV with the same columns):
//!
//! - reconciliation by payer, site, clinician, month or program: billed, expected, paid,
//!   contractual adjustment, patient responsibility, denied, other adjustments, outstanding;
//!   for every row `billed = paid + contractual + patient + denied + other + outstanding`;
//! - aging of what is outstanding (0-30, 31-60, 61-90, 91-120, over 120 days since the date of
//!   service);
//! - denials ranked by dollars, by group and CARC, with the text and the remark codes;
//! - the PPS wrap-around gap: expected (the FQHC's PPS rate per visit) against paid;
//! - sustainability per site and month: what billable hours earned against the configured
//!   clinician cost of the site, the share of sessions that were billable and why the rest
//!   were not.
//!
//! The claims counted are each session's active claim that went to the payer (voids and
//! claims not yet sent aside). Adjustment columns follow the CARC categories of
//! `mappings/remit/carc.toml`; PR-group amounts are the patient's whatever the reason.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use crate::billing::BillingRules;
use crate::settings::Settings;
use crate::store::{Dim, ReportFilter, Store, StoreError};

use super::codes::{CarcCategory, RemitCodes};

/// One reconciliation row.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReconRow {
    /// Key (payer id, site id, NPI, YYYY-MM, program id).
    pub key: String,
    /// Readable name.
    pub label: String,
    /// Claims.
    pub claims: i64,
    /// Σ charge.
    pub billed_cents: i64,
    /// Σ expected payment.
    pub expected_cents: i64,
    /// Σ paid (reversals net).
    pub paid_cents: i64,
    /// Contractual adjustments (CARC category contractual, not PR).
    pub contractual_cents: i64,
    /// Patient responsibility (group PR).
    pub patient_responsibility_cents: i64,
    /// Denied (CARC category denial, not PR).
    pub denied_cents: i64,
    /// Other adjustments and write-offs.
    pub other_adjustment_cents: i64,
    /// billed − everything above.
    pub outstanding_cents: i64,
}

impl ReconRow {
    fn add(&mut self, o: &ReconRow) {
        self.claims = self.claims.saturating_add(o.claims);
        self.billed_cents = self.billed_cents.saturating_add(o.billed_cents);
        self.expected_cents = self.expected_cents.saturating_add(o.expected_cents);
        self.paid_cents = self.paid_cents.saturating_add(o.paid_cents);
        self.contractual_cents = self.contractual_cents.saturating_add(o.contractual_cents);
        self.patient_responsibility_cents = self.patient_responsibility_cents.saturating_add(o.patient_responsibility_cents);
        self.denied_cents = self.denied_cents.saturating_add(o.denied_cents);
        self.other_adjustment_cents = self.other_adjustment_cents.saturating_add(o.other_adjustment_cents);
        self.outstanding_cents = self.outstanding_cents.saturating_add(o.outstanding_cents);
    }
}

/// A reconciliation report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Reconciliation {
    /// `reconciliation`.
    pub report: &'static str,
    /// payer | site | clinician | month | program.
    pub by: String,
    /// First date of service.
    pub from: Option<String>,
    /// Last date of service.
    pub to: Option<String>,
    /// Rows by key.
    pub rows: Vec<ReconRow>,
    /// Sum of the rows.
    pub total: ReconRow,
}

/// Labels for keys.
pub struct Labels<'a> {
    /// Settings (site names).
    pub settings: &'a Settings,
    /// Billing rules (payer names, programs).
    pub billing: &'a BillingRules,
}

impl Labels<'_> {
    fn label(&self, dim: Dim, key: &str) -> String {
        match dim {
            Dim::Payer => self.billing.payers.get(key).map(|p| p.name.clone()),
            Dim::Site => self.settings.sites.iter().find(|s| s.id == key).map(|s| s.name.clone()),
            Dim::Program => self.billing.programs.iter().find(|p| p.id == key).map(|p| p.name.clone()),
            Dim::Clinician => Some(format!("NPI {key}")),
            Dim::Month | Dim::SiteMonth => None,
        }
        .unwrap_or_else(|| key.to_string())
    }
}

/// Parses `by`.
pub fn dim(by: &str) -> Option<Dim> {
    Some(match by {
        "payer" => Dim::Payer,
        "site" => Dim::Site,
        "clinician" => Dim::Clinician,
        "month" => Dim::Month,
        "program" => Dim::Program,
        _ => return None,
    })
}

/// Reconciliation rows per key (no labels).
async fn recon_rows(store: &Store, codes: &RemitCodes, d: Dim, f: &ReportFilter) -> Result<BTreeMap<String, ReconRow>, StoreError> {
    let mut rows: BTreeMap<String, ReconRow> = BTreeMap::new();
    for (k, claims, billed, expected) in store.report_claims(d, f).await? {
        let r = rows.entry(k.clone()).or_default();
        r.key = k;
        r.claims = claims;
        r.billed_cents = billed;
        r.expected_cents = expected;
    }
    for (k, kind, group, reason, amount) in store.report_ledger(d, f).await? {
        let Some(r) = rows.get_mut(&k) else { continue };
        match (kind.as_str(), group.as_deref()) {
            ("paid", _) => r.paid_cents += amount,
            ("adjustment", Some("PR")) => r.patient_responsibility_cents += amount,
            ("adjustment", _) => match codes.carc_category(reason.as_deref().unwrap_or_default()) {
                CarcCategory::Contractual => r.contractual_cents += amount,
                CarcCategory::Patient => r.patient_responsibility_cents += amount,
                CarcCategory::Denial => r.denied_cents += amount,
                CarcCategory::Other => r.other_adjustment_cents += amount,
            },
            _ => r.other_adjustment_cents += amount,
        }
    }
    for r in rows.values_mut() {
        r.outstanding_cents = r.billed_cents
            - r.paid_cents
            - r.contractual_cents
            - r.patient_responsibility_cents
            - r.denied_cents
            - r.other_adjustment_cents;
    }
    Ok(rows)
}

/// The reconciliation report.
pub async fn reconciliation(
    store: &Store,
    codes: &RemitCodes,
    labels: &Labels<'_>,
    by: &str,
    f: &ReportFilter,
) -> Result<Reconciliation, StoreError> {
    let d = dim(by).unwrap_or(Dim::Payer);
    let rows = recon_rows(store, codes, d, f).await?;
    let mut total = ReconRow { key: "total".into(), label: "Total".into(), ..ReconRow::default() };
    let rows: Vec<ReconRow> = rows
        .into_values()
        .map(|mut r| {
            r.label = labels.label(d, &r.key);
            total.add(&r);
            r
        })
        .collect();
    Ok(Reconciliation { report: "reconciliation", by: by.to_string(), from: f.from.clone(), to: f.to.clone(), rows, total })
}

/// One aging row.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AgingRow {
    /// Key.
    pub key: String,
    /// Name.
    pub label: String,
    /// Claims with a balance.
    pub claims: i64,
    /// 0-30 days since the date of service.
    pub days_0_30_cents: i64,
    /// 31-60.
    pub days_31_60_cents: i64,
    /// 61-90.
    pub days_61_90_cents: i64,
    /// 91-120.
    pub days_91_120_cents: i64,
    /// Over 120.
    pub days_over_120_cents: i64,
    /// Sum of the buckets.
    pub outstanding_cents: i64,
}

impl AgingRow {
    fn put(&mut self, days: i64, claims: i64, cents: i64) {
        self.claims += claims;
        self.outstanding_cents += cents;
        match days {
            ..=30 => self.days_0_30_cents += cents,
            31..=60 => self.days_31_60_cents += cents,
            61..=90 => self.days_61_90_cents += cents,
            91..=120 => self.days_91_120_cents += cents,
            _ => self.days_over_120_cents += cents,
        }
    }
}

/// The aging report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Aging {
    /// `aging`.
    pub report: &'static str,
    /// The day ages are counted to.
    pub as_of: String,
    /// payer | site | clinician | month | program.
    pub by: String,
    /// Rows.
    pub rows: Vec<AgingRow>,
    /// Sum.
    pub total: AgingRow,
}

/// Outstanding balances by age since the date of service.
pub async fn aging(store: &Store, labels: &Labels<'_>, by: &str, f: &ReportFilter, as_of: NaiveDate) -> Result<Aging, StoreError> {
    let d = dim(by).unwrap_or(Dim::Payer);
    let mut rows: BTreeMap<String, AgingRow> = BTreeMap::new();
    let mut total = AgingRow { key: "total".into(), label: "Total".into(), ..AgingRow::default() };
    for (k, date, claims, cents) in store.report_outstanding(d, f).await? {
        let days = NaiveDate::parse_from_str(&date, "%Y-%m-%d").map(|dos| (as_of - dos).num_days()).unwrap_or(0);
        let r = rows.entry(k.clone()).or_insert_with(|| AgingRow { label: labels.label(d, &k), key: k.clone(), ..AgingRow::default() });
        r.put(days, claims, cents);
        total.put(days, claims, cents);
    }
    Ok(Aging { report: "aging", as_of: as_of.to_string(), by: by.to_string(), rows: rows.into_values().collect(), total })
}

/// A remark code with its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Remark {
    /// RARC.
    pub code: String,
    /// Text from `mappings/remit/rarc.toml`.
    pub description: String,
}

/// One denial reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DenialRow {
    /// CAS group.
    pub group: String,
    /// CARC.
    pub carc: String,
    /// Its text.
    pub description: String,
    /// Claims it touched.
    pub claims: i64,
    /// Service lines it touched.
    pub lines: i64,
    /// Dollars denied (reversals net).
    pub amount_cents: i64,
    /// Remark codes that came with it.
    pub remarks: Vec<Remark>,
}

/// The denials report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Denials {
    /// `denials`.
    pub report: &'static str,
    /// Ranked by dollars.
    pub rows: Vec<DenialRow>,
    /// Σ amount.
    pub total_cents: i64,
}

/// Denials ranked by dollars.
pub async fn denials(store: &Store, codes: &RemitCodes, f: &ReportFilter) -> Result<Denials, StoreError> {
    let mut remarks: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (g, r, list) in store.report_adjustment_remarks(f).await? {
        let e = remarks.entry((g, r)).or_default();
        for code in list.split(':').filter(|c| !c.is_empty()) {
            if !e.iter().any(|x| x == code) {
                e.push(code.to_string());
            }
        }
    }
    let mut rows: Vec<DenialRow> = store
        .report_adjustments(f)
        .await?
        .into_iter()
        .filter(|(_, reason, _, _, amount)| codes.carc_category(reason) == CarcCategory::Denial && *amount != 0)
        .map(|(group, carc, claims, lines, amount_cents)| {
            let mut rs = remarks.get(&(group.clone(), carc.clone())).cloned().unwrap_or_default();
            rs.sort();
            DenialRow {
                description: codes.carc(&carc).0,
                remarks: rs.into_iter().map(|c| Remark { description: codes.rarc(&c), code: c }).collect(),
                group,
                carc,
                claims,
                lines,
                amount_cents,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.amount_cents.cmp(&a.amount_cents).then_with(|| a.carc.cmp(&b.carc)).then_with(|| a.group.cmp(&b.group)));
    let total_cents = rows.iter().map(|r| r.amount_cents).sum();
    Ok(Denials { report: "denials", rows, total_cents })
}

/// One PPS row.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PpsRow {
    /// Key.
    pub key: String,
    /// Name.
    pub label: String,
    /// PPS visits claimed.
    pub visits: i64,
    /// Σ expected (PPS rate per visit).
    pub expected_cents: i64,
    /// Σ paid.
    pub paid_cents: i64,
    /// expected − paid (what the wrap-around must make up).
    pub gap_cents: i64,
}

/// The PPS wrap-around report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PpsGap {
    /// `pps-gap`.
    pub report: &'static str,
    /// Dimension.
    pub by: String,
    /// Rows.
    pub rows: Vec<PpsRow>,
    /// Sum.
    pub total: PpsRow,
}

/// PPS expected against paid per visit, for the programs whose funding path is `fqhc-pps`.
pub async fn pps_gap(store: &Store, codes: &RemitCodes, labels: &Labels<'_>, by: &str, f: &ReportFilter) -> Result<PpsGap, StoreError> {
    let d = dim(by).unwrap_or(Dim::Month);
    let programs: Vec<String> = labels.billing.programs.iter().filter(|p| p.funding_path == "fqhc-pps").map(|p| p.id.clone()).collect();
    let f = ReportFilter { programs: Some(programs), ..f.clone() };
    let mut total = PpsRow { key: "total".into(), label: "Total".into(), ..PpsRow::default() };
    let rows = recon_rows(store, codes, d, &f)
        .await?
        .into_values()
        .map(|r| {
            let row = PpsRow {
                label: labels.label(d, &r.key),
                key: r.key,
                visits: r.claims,
                expected_cents: r.expected_cents,
                paid_cents: r.paid_cents,
                gap_cents: r.expected_cents - r.paid_cents,
            };
            total.visits += row.visits;
            total.expected_cents += row.expected_cents;
            total.paid_cents += row.paid_cents;
            total.gap_cents += row.gap_cents;
            row
        })
        .collect();
    Ok(PpsGap { report: "pps-gap", by: by.to_string(), rows, total })
}

/// Sessions of a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ReasonCount {
    /// The first reason code billing gave (`not-settled`: not decided yet).
    pub reason: String,
    /// Sessions.
    pub sessions: i64,
}

/// One site-month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SustainabilityRow {
    /// Site id.
    pub site: String,
    /// Site name.
    pub site_name: String,
    /// YYYY-MM.
    pub month: String,
    /// Sessions held.
    pub sessions: i64,
    /// Sessions billing found billable.
    pub billable_sessions: i64,
    /// billable / sessions, one decimal.
    pub billable_share_percent: String,
    /// Face-to-face minutes of billable sessions.
    pub billable_minutes: i64,
    /// What the claims filed are expected to earn.
    pub earned_cents: i64,
    /// What the payers paid on them so far.
    pub paid_cents: i64,
    /// Configured clinician cost of the site for the month (0 when not configured).
    pub cost_cents: i64,
    /// earned − cost.
    pub margin_cents: i64,
    /// earned / cost, one decimal ("" when no cost is configured).
    pub covered_percent: String,
    /// Why the other sessions were not billable.
    pub not_billable: Vec<ReasonCount>,
}

/// The sustainability report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Sustainability {
    /// `sustainability`.
    pub report: &'static str,
    /// Rows by site and month.
    pub rows: Vec<SustainabilityRow>,
}

/// `part / whole` as a percentage with one decimal, rounded half up, from integers.
pub fn percent(part: i64, whole: i64) -> String {
    if whole <= 0 {
        return String::new();
    }
    let tenths = (part.saturating_mul(1000) + whole / 2).div_euclid(whole);
    let sign = if tenths < 0 { "-" } else { "" };
    format!("{sign}{}.{}", tenths.unsigned_abs() / 10, tenths.unsigned_abs() % 10)
}

/// Revenue from billable hours against clinician cost per site and month.
pub async fn sustainability(
    store: &Store,
    codes: &RemitCodes,
    labels: &Labels<'_>,
    f: &ReportFilter,
) -> Result<Sustainability, StoreError> {
    let money = recon_rows(store, codes, Dim::SiteMonth, f).await?;
    let (sessions, reasons) = store.report_sessions(f).await?;
    let mut why: BTreeMap<(String, String), BTreeMap<String, i64>> = BTreeMap::new();
    for (site, month, codes, n) in reasons {
        let first = codes.split(',').next().unwrap_or("not-settled").to_string();
        *why.entry((site, month)).or_default().entry(first).or_default() += n;
    }
    let mut keys: BTreeMap<(String, String), (i64, i64, i64)> = BTreeMap::new();
    for (site, month, n, billable, minutes) in sessions {
        keys.insert((site, month), (n, billable, minutes));
    }
    for k in money.keys() {
        if let Some((site, month)) = k.split_once('|') {
            keys.entry((site.to_string(), month.to_string())).or_insert((0, 0, 0));
        }
    }
    let rows = keys
        .into_iter()
        .map(|((site, month), (n, billable, minutes))| {
            let m = money.get(&format!("{site}|{month}"));
            let earned = m.map_or(0, |r| r.expected_cents);
            let cost = labels.settings.sites.iter().find(|s| s.id == site).and_then(|s| s.clinician_cost_cents_per_month).unwrap_or(0);
            let mut not_billable: Vec<ReasonCount> = why
                .get(&(site.clone(), month.clone()))
                .map(|m| m.iter().map(|(r, n)| ReasonCount { reason: r.clone(), sessions: *n }).collect())
                .unwrap_or_default();
            not_billable.sort_by(|a, b| b.sessions.cmp(&a.sessions).then_with(|| a.reason.cmp(&b.reason)));
            SustainabilityRow {
                site_name: labels.label(Dim::Site, &site),
                site,
                month,
                sessions: n,
                billable_sessions: billable,
                billable_share_percent: percent(billable, n),
                billable_minutes: minutes,
                earned_cents: earned,
                paid_cents: m.map_or(0, |r| r.paid_cents),
                cost_cents: cost,
                margin_cents: earned - cost,
                covered_percent: percent(earned, cost),
                not_billable,
            }
        })
        .collect();
    Ok(Sustainability { report: "sustainability", rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_come_from_integers() {
        assert_eq!(percent(7, 10), "70.0");
        assert_eq!(percent(2, 3), "66.7");
        assert_eq!(percent(1, 8), "12.5");
        assert_eq!(percent(0, 5), "0.0");
        assert_eq!(percent(5, 0), "");
        assert_eq!(percent(-1, 3), "-33.3");
    }

    #[test]
    fn aging_buckets_have_their_edges() {
        let mut r = AgingRow::default();
        for d in [0, 30, 31, 60, 61, 90, 91, 120, 121] {
            r.put(d, 1, 1);
        }
        assert_eq!(
            (r.days_0_30_cents, r.days_31_60_cents, r.days_61_90_cents, r.days_91_120_cents, r.days_over_120_cents, r.claims),
            (2, 2, 2, 2, 1, 9)
        );
    }
}
