//! Posting one CLP (pure: no store). Matches service lines to the claim's lines, turns the
//! claim payment into ledger entries (CLP04 paid; every CAS, claim or line level, with its group
//! and reason), checks that the claim and each line balance, and opens exceptions for what
//! finance must look at: a claim or line that matches nothing, a denial, an imbalance.
//!
//! Matching, in order (DOMAIN.md §2.4): the line item control number (REF*6R, which the
//! gateway wrote in the 837); then the procedure as submitted (SVC06, else SVC01) or the
//! revenue code, with the charge and the date of service, preferring a line whose modifiers
//! agree but accepting one whose modifiers the payer dropped or changed.

use crate::store::{ChunkRows, ExceptionRow, LedgerRow, PaymentLineRow, PaymentRow, PostTarget, TargetLine};
use crate::x12::remit835::{Adjustment, ClaimPayment, ServicePayment, Text};

use super::codes::{CarcCategory, ClaimOutcome, RemitCodes};

/// Who posts what, when.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// Code tables.
    pub codes: &'a RemitCodes,
    /// The payment being posted.
    pub remittance_id: &'a str,
    /// Who posts.
    pub actor: &'a str,
    /// When.
    pub now_us: i64,
}

/// What posting one CLP found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    /// The claim it was posted to.
    pub claim_id: Option<String>,
    /// CLP02 outcome.
    pub outcome: ClaimOutcome,
    /// A denial was opened (the claim or a line needs action).
    pub denial: bool,
}

fn owned(value: &Option<Text>) -> Option<String> {
    value.as_deref().map(str::to_owned)
}

fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let a = cents.unsigned_abs();
    format!("{sign}${}.{:02}", a / 100, a % 100)
}

fn exception(
    ctx: &Context<'_>,
    payment_id: &str,
    claim_id: Option<&str>,
    line_no: Option<i64>,
    kind: &str,
    detail: String,
    amount_cents: i64,
) -> ExceptionRow {
    let id = match line_no {
        Some(l) => format!("{payment_id}:{kind}:{l}"),
        None => format!("{payment_id}:{kind}"),
    };
    ExceptionRow {
        id,
        remittance_id: ctx.remittance_id.to_string(),
        payment_id: Some(payment_id.to_string()),
        claim_id: claim_id.map(str::to_string),
        line_no,
        kind: kind.to_string(),
        detail,
        amount_cents,
        status: "open".into(),
        resolution: None,
        resolved_by: None,
        resolved_us: None,
        created_us: ctx.now_us,
    }
}

fn adjustments_text(ctx: &Context<'_>, list: &[Adjustment]) -> String {
    list.iter()
        .map(|a| format!("{}-{} {} ({})", a.group, a.reason, money(a.amount_cents), ctx.codes.carc(&a.reason).0))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds the claim line a service line pays; `used` marks lines already matched.
pub fn match_line(svc: &ServicePayment, lines: &[TargetLine], used: &mut [bool], claim_date: &str) -> (Option<i64>, &'static str) {
    if let Some(id) = svc.line_id.as_deref().filter(|s| !s.is_empty())
        && let Some(i) = lines.iter().position(|l| l.line_id == id)
        && !used[i]
    {
        used[i] = true;
        return (Some(lines[i].line_no), "line-id");
    }
    let code = svc.submitted_procedure.as_deref().unwrap_or(&svc.procedure);
    let date_ok = svc.service_date.is_none_or(|d| d.format("%Y-%m-%d").to_string() == claim_date);
    if !date_ok {
        return (None, "none");
    }
    let mods = svc.modifiers.join(":");
    let candidate = |l: &TargetLine| {
        (l.code == code || l.code == svc.procedure || l.revenue_code.as_deref() == Some(code)) && l.charge_cents == svc.charge_cents
    };
    let best = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| !used[*i] && candidate(l))
        .min_by_key(|(_, l)| if l.modifiers == mods { 0 } else { 1 })
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            used[i] = true;
            (Some(lines[i].line_no), "code-date-charge")
        }
        None => (None, "none"),
    }
}

/// Posts one CLP into `out`.
pub fn post_claim(ctx: &Context<'_>, ordinal: i64, c: &ClaimPayment, target: Option<&PostTarget>, out: &mut ChunkRows) -> Posted {
    let payment_id = format!("{}-{ordinal}", ctx.remittance_id);
    let claim_id = target.map(|t| t.id.clone());
    let (status_text, outcome) = ctx.codes.status(&c.status);
    out.payments.push(PaymentRow {
        id: payment_id.clone(),
        remittance_id: ctx.remittance_id.to_string(),
        ordinal,
        claim_id: claim_id.clone(),
        pcn: c.pcn.to_string(),
        status: c.status.to_string(),
        charge_cents: c.charge_cents,
        paid_cents: c.paid_cents,
        patient_responsibility_cents: c.patient_responsibility_cents.unwrap_or(0),
        payer_claim_number: owned(&c.payer_claim_number),
        facility: owned(&c.facility),
        frequency: owned(&c.frequency),
        remarks: c.remarks.join(":"),
        segment: c.segment as i64,
        posted_us: ctx.now_us,
    });
    if let (Some(id), Some(n)) = (claim_id.as_ref(), c.payer_claim_number.as_ref()) {
        out.payer_numbers.push((id.clone(), n.to_string()));
    }
    let ledger = |line_no: Option<i64>, kind: &str, a: Option<&Adjustment>, amount: i64| LedgerRow {
        remittance_id: ctx.remittance_id.to_string(),
        payment_id: payment_id.clone(),
        claim_id: claim_id.clone(),
        line_no,
        kind: kind.to_string(),
        group_code: a.map(|a| a.group.to_string()),
        reason: a.map(|a| a.reason.to_string()),
        quantity: a.and_then(|a| owned(&a.quantity)),
        amount_cents: amount,
        actor: ctx.actor.to_string(),
        at_us: ctx.now_us,
    };
    out.ledger.push(ledger(None, "paid", None, c.paid_cents));
    for a in &c.adjustments {
        out.ledger.push(ledger(None, "adjustment", Some(a), a.amount_cents));
    }
    let mut denial = false;
    let mut used = target.map(|t| vec![false; t.lines.len()]).unwrap_or_default();
    let mut adjusted = c.adjustments.iter().fold(0i64, |s, a| s.saturating_add(a.amount_cents));
    for (i, svc) in c.services.iter().enumerate() {
        let line_no = i as i64 + 1;
        let (matched, how) = match target {
            Some(t) => match_line(svc, &t.lines, &mut used, &t.service_date),
            None => (None, "none"),
        };
        out.lines.push(PaymentLineRow {
            payment_id: payment_id.clone(),
            line_no,
            claim_line_no: matched,
            matched_by: how.to_string(),
            qualifier: svc.qualifier.to_string(),
            procedure_code: svc.procedure.to_string(),
            modifiers: svc.modifiers.join(":"),
            revenue_code: owned(&svc.revenue_code),
            units: owned(&svc.units),
            submitted_procedure: owned(&svc.submitted_procedure),
            service_date: svc.service_date.map(|d| d.format("%Y-%m-%d").to_string()),
            line_id: owned(&svc.line_id),
            charge_cents: svc.charge_cents,
            paid_cents: svc.paid_cents,
            allowed_cents: svc.allowed_cents,
            remarks: svc.remarks.join(":"),
            segment: svc.segment as i64,
        });
        for a in &svc.adjustments {
            out.ledger.push(ledger(Some(line_no), "adjustment", Some(a), a.amount_cents));
        }
        let line_adjusted = svc.adjustments.iter().fold(0i64, |s, a| s.saturating_add(a.amount_cents));
        adjusted = adjusted.saturating_add(line_adjusted);
        if target.is_some() && matched.is_none() {
            out.exceptions.push(exception(
                ctx,
                &payment_id,
                claim_id.as_deref(),
                Some(line_no),
                "unmatched-line",
                format!(
                    "SVC {} {} charge {} (segment {}) matches no line of claim {}",
                    svc.procedure,
                    svc.modifiers.join(":"),
                    money(svc.charge_cents),
                    svc.segment,
                    c.pcn
                ),
                svc.paid_cents,
            ));
        }
        if svc.charge_cents.saturating_sub(line_adjusted) != svc.paid_cents && !svc.adjustments.is_empty() {
            out.exceptions.push(exception(
                ctx,
                &payment_id,
                claim_id.as_deref(),
                Some(line_no),
                "line-out-of-balance",
                format!(
                    "segment {}: SVC02 {} − CAS {} ≠ SVC03 {}",
                    svc.segment,
                    money(svc.charge_cents),
                    money(line_adjusted),
                    money(svc.paid_cents)
                ),
                svc.charge_cents.saturating_sub(line_adjusted).saturating_sub(svc.paid_cents),
            ));
        }
        // A zero-paid line with a contractual/payer-initiated reason other than the fee
        // schedule (45) or bundling into a paid line (97) needs action (DOMAIN.md §2.4 step 7).
        let denied_reasons: Vec<&Adjustment> = svc
            .adjustments
            .iter()
            .filter(|a| matches!(a.group.as_str(), "CO" | "PI") && ctx.codes.carc_category(&a.reason) == CarcCategory::Denial)
            .collect();
        if outcome != ClaimOutcome::Denied && svc.paid_cents == 0 && svc.charge_cents > 0 && !denied_reasons.is_empty() {
            denial = true;
            let remarks = svc.remarks.iter().map(|r| format!("{r} ({})", ctx.codes.rarc(r))).collect::<Vec<_>>().join("; ");
            out.exceptions.push(exception(
                ctx,
                &payment_id,
                claim_id.as_deref(),
                Some(line_no),
                "denial",
                format!(
                    "line {} {} denied: {}{}",
                    line_no,
                    svc.procedure,
                    adjustments_text(ctx, &svc.adjustments),
                    if remarks.is_empty() { String::new() } else { format!("; remarks {remarks}") }
                ),
                svc.charge_cents,
            ));
        }
    }
    if outcome == ClaimOutcome::Denied {
        denial = true;
        let all: Vec<Adjustment> = c.adjustments.iter().chain(c.services.iter().flat_map(|s| s.adjustments.iter())).cloned().collect();
        let remarks = c.remarks.iter().map(|r| format!("{r} ({})", ctx.codes.rarc(r))).collect::<Vec<_>>().join("; ");
        out.exceptions.push(exception(
            ctx,
            &payment_id,
            claim_id.as_deref(),
            None,
            "denial",
            format!(
                "claim {} denied (CLP02 4): {}{}",
                c.pcn,
                adjustments_text(ctx, &all),
                if remarks.is_empty() { String::new() } else { format!("; remarks {remarks}") }
            ),
            c.charge_cents,
        ));
    }
    if c.charge_cents.saturating_sub(adjusted) != c.paid_cents {
        out.exceptions.push(exception(
            ctx,
            &payment_id,
            claim_id.as_deref(),
            None,
            "claim-out-of-balance",
            format!("segment {}: CLP03 {} − CAS {} ≠ CLP04 {}", c.segment, money(c.charge_cents), money(adjusted), money(c.paid_cents)),
            c.charge_cents.saturating_sub(adjusted).saturating_sub(c.paid_cents),
        ));
    }
    if target.is_none() {
        out.exceptions.push(exception(
            ctx,
            &payment_id,
            None,
            None,
            "unmatched-claim",
            format!(
                "CLP01 {} (segment {}, {} {}, paid {}) matches no claim of this gateway",
                c.pcn,
                c.segment,
                c.status,
                status_text,
                money(c.paid_cents)
            ),
            c.paid_cents,
        ));
    }
    Posted { claim_id, outcome, denial }
}

/// The status a claim moves to after a payment: a reversal reopens it (`accepted`: awaiting
/// the payer's readjudication); otherwise `closed` when nothing is left to collect or act on,
/// else `adjudicated`.
pub fn next_status(outcome: ClaimOutcome, denial: bool, balance_cents: i64) -> &'static str {
    match outcome {
        ClaimOutcome::Reversal => "accepted",
        _ if balance_cents == 0 && !denial => "closed",
        _ => "adjudicated",
    }
}

/// Statuses a payment may move a claim from (an active claim the payer has).
pub const POSTABLE: &[&str] = &["batched", "submitted", "accepted", "rejected", "adjudicated", "closed"];

#[cfg(test)]
mod tests {
    use super::*;

    fn line(no: i64, id: &str, code: &str, mods: &str, charge: i64) -> TargetLine {
        TargetLine {
            claim_id: "C".into(),
            line_no: no,
            line_id: id.into(),
            revenue_code: None,
            code: code.into(),
            modifiers: mods.into(),
            charge_cents: charge,
        }
    }

    #[test]
    fn lines_match_by_control_number_then_code_date_charge_tolerating_modifiers() {
        let lines = [line(1, "A-1", "90834", "HA", 15000), line(2, "A-2", "90840", "HA", 7000), line(3, "A-3", "90834", "95", 15000)];
        let mut used = [false; 3];
        let by_id = ServicePayment { line_id: Some("A-2".into()), procedure: "X".into(), ..Default::default() };
        assert_eq!(match_line(&by_id, &lines, &mut used, "2026-10-01"), (Some(2), "line-id"));
        // Modifier changed by the payer (95 -> GT): still the 95 line? No: prefers an exact
        // modifier match, else the first free line with code + charge.
        let changed = ServicePayment { procedure: "90834".into(), modifiers: vec!["95".into()], charge_cents: 15000, ..Default::default() };
        assert_eq!(match_line(&changed, &lines, &mut used, "2026-10-01"), (Some(3), "code-date-charge"));
        let dropped = ServicePayment { procedure: "90834".into(), charge_cents: 15000, ..Default::default() };
        assert_eq!(match_line(&dropped, &lines, &mut used, "2026-10-01"), (Some(1), "code-date-charge"));
        // All used: nothing left.
        assert_eq!(match_line(&dropped, &lines, &mut used, "2026-10-01"), (None, "none"));
        let other_day = ServicePayment {
            procedure: "90834".into(),
            charge_cents: 15000,
            service_date: chrono::NaiveDate::from_ymd_opt(2026, 10, 2),
            ..Default::default()
        };
        assert_eq!(match_line(&other_day, &lines, &mut [false; 3], "2026-10-01"), (None, "none"));
    }

    #[test]
    fn status_after_payment() {
        assert_eq!(next_status(ClaimOutcome::Paid, false, 0), "closed");
        assert_eq!(next_status(ClaimOutcome::Paid, false, 100), "adjudicated");
        assert_eq!(next_status(ClaimOutcome::Denied, true, 0), "adjudicated");
        assert_eq!(next_status(ClaimOutcome::Reversal, false, 5000), "accepted");
        assert_eq!(money(-5), "-$0.05");
    }
}
