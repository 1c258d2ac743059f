//! X12 835 (005010X221A1) remittance advice read into typed values, one transaction set at a
//! time, from the streaming reader: memory holds one remittance, never the file. Money is
//! integer cents; every problem names the segment number, id and element.
//!
//! Only syntax and the 835's own structure live here; matching to claims and posting are the
//! gateway's business (issue 7).

use std::io::Read;

use chrono::NaiveDate;

use super::reader::{ReadError, Severity, X12Reader, parse_cents};

/// A short X12 value of a claim payment (CLP01, a procedure code, a CARC, ...), held inline
/// up to 24 bytes: a large 835 holds millions of them, and a heap allocation each cost more
/// than reading them.
pub type Text = compact_str::CompactString;

/// A CAS adjustment: group (CO, PR, OA, PI), reason code (CARC), amount, quantity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adjustment {
    /// Group code.
    pub group: Text,
    /// Claim adjustment reason code.
    pub reason: Text,
    /// Amount in cents (positive reduces payment).
    pub amount_cents: i64,
    /// Quantity, as written.
    pub quantity: Option<Text>,
}

/// One SVC service line of a claim payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServicePayment {
    /// SVC01-1 qualifier (HC, NU, ...).
    pub qualifier: Text,
    /// SVC01-2 procedure as adjudicated.
    pub procedure: Text,
    /// SVC01-3.. modifiers.
    pub modifiers: Vec<Text>,
    /// SVC02 charge.
    pub charge_cents: i64,
    /// SVC03 paid.
    pub paid_cents: i64,
    /// SVC04 revenue code (institutional).
    pub revenue_code: Option<Text>,
    /// SVC05 units paid.
    pub units: Option<Text>,
    /// SVC06-2: the procedure as submitted, when the payer changed it.
    pub submitted_procedure: Option<Text>,
    /// DTM*472 (or 150) date of service.
    pub service_date: Option<NaiveDate>,
    /// REF*6R line item control number.
    pub line_id: Option<Text>,
    /// AMT*B6 allowed amount.
    pub allowed_cents: Option<i64>,
    /// CAS at line level.
    pub adjustments: Vec<Adjustment>,
    /// LQ*HE remark codes (RARC).
    pub remarks: Vec<Text>,
    /// Segment number of the SVC.
    pub segment: usize,
}

/// One CLP claim payment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimPayment {
    /// CLP01: the patient control number (our CLM01).
    pub pcn: Text,
    /// CLP02 status (1, 2, 3, 4, 19, 20, 21, 22, 23).
    pub status: Text,
    /// CLP03 charge.
    pub charge_cents: i64,
    /// CLP04 paid.
    pub paid_cents: i64,
    /// CLP05 patient responsibility.
    pub patient_responsibility_cents: Option<i64>,
    /// CLP06 filing indicator.
    pub filing_indicator: Text,
    /// CLP07 payer claim control number.
    pub payer_claim_number: Option<Text>,
    /// CLP08 facility code / place of service.
    pub facility: Option<Text>,
    /// CLP09 frequency code.
    pub frequency: Option<Text>,
    /// CAS at claim level.
    pub adjustments: Vec<Adjustment>,
    /// MOA / MIA remark codes (claim level).
    pub remarks: Vec<Text>,
    /// Service lines.
    pub services: Vec<ServicePayment>,
    /// Segment number of the CLP.
    pub segment: usize,
}

/// A PLB provider-level adjustment (one reason/amount pair).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderAdjustment {
    /// PLB01 provider identifier.
    pub provider: Text,
    /// PLB02 fiscal period date.
    pub fiscal_date: Option<NaiveDate>,
    /// Reason code (PLB03-1: WO, L6, FB, 72, CS, ...).
    pub reason: Text,
    /// Reference (PLB03-2, e.g. the claim's payer control number for a recoupment).
    pub reference: Option<Text>,
    /// Amount in cents (positive reduces the payment).
    pub amount_cents: i64,
}

/// One 835 transaction set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remittance {
    /// ST02.
    pub control_number: String,
    /// GS08 of its group (must be 005010X221A1).
    pub version: String,
    /// BPR01 handling code (C, D, H, I, P, U, X).
    pub handling: String,
    /// BPR02 total actual provider payment.
    pub paid_cents: i64,
    /// BPR03 credit (C) or debit (D).
    pub credit_debit: String,
    /// BPR04 payment method (ACH, CHK, NON, ...).
    pub method: String,
    /// BPR16 payment date.
    pub payment_date: Option<NaiveDate>,
    /// TRN02 check or EFT trace number.
    pub trace_number: String,
    /// TRN03 payer identifier.
    pub trace_payer: String,
    /// N1*PR name.
    pub payer_name: String,
    /// N1*PR N104 (or REF*2U) payer id.
    pub payer_id: Option<String>,
    /// N1*PE name.
    pub payee_name: String,
    /// N1*PE N104 (NPI when N103 is XX).
    pub payee_id: Option<String>,
    /// Claim payments.
    pub claims: Vec<ClaimPayment>,
    /// Provider-level adjustments.
    pub provider_adjustments: Vec<ProviderAdjustment>,
    /// Segment number of the ST.
    pub segment: usize,
    /// Problems found in this transaction (amounts that do not parse, structure).
    pub problems: Vec<ReadError>,
}

impl Remittance {
    /// Sum of CLP04 (saturating: amounts are at most `MAX_CENTS` each).
    pub fn claims_paid_cents(&self) -> i64 {
        self.claims.iter().fold(0i64, |a, c| a.saturating_add(c.paid_cents))
    }

    /// Sum of PLB amounts (saturating).
    pub fn provider_adjustments_cents(&self) -> i64 {
        self.provider_adjustments.iter().fold(0i64, |a, p| a.saturating_add(p.amount_cents))
    }

    /// Whether BPR02 = ΣCLP04 − ΣPLB (DOMAIN.md 2.4), to the cent (computed in `i128`: exact
    /// for any input).
    pub fn balances(&self) -> bool {
        let signed = if self.credit_debit == "D" { -i128::from(self.paid_cents) } else { i128::from(self.paid_cents) };
        let claims: i128 = self.claims.iter().map(|c| i128::from(c.paid_cents)).sum();
        let plb: i128 = self.provider_adjustments.iter().map(|p| i128::from(p.amount_cents)).sum();
        signed == claims - plb
    }
}

/// An element that may be absent, allocated only when present.
fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn text(s: &str) -> Option<Text> {
    (!s.is_empty()).then(|| Text::from(s))
}

fn date8(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s, "%Y%m%d").ok()
}

fn problem(segment: usize, id: &str, element: &str, message: String) -> ReadError {
    ReadError { segment, id: id.to_string(), element: Some(element.to_string()), message, severity: Severity::Error }
}

/// One step of reading an 835, in file order: a transaction's header (everything before its
/// first CLP: BPR, TRN, payer, payee; `claims` empty), each claim payment as soon as it is
/// complete, then the transaction's end (the header again, with the PLB adjustments and the
/// problems found). Memory holds one claim, never the transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemitItem {
    /// A transaction set begins (header fields only).
    Begin(Remittance),
    /// One complete CLP with its CAS, SVC lines and remarks (boxed: it is built in place and
    /// handed on without copying).
    Claim(Box<ClaimPayment>),
    /// The transaction set ends: header, provider adjustments and problems (`claims` empty).
    End(Remittance),
}

/// The transaction being read and the items it has completed.
#[derive(Default)]
struct Pending {
    /// Header, PLBs and problems (`claims` stays empty).
    current: Option<Remittance>,
    /// The claim being read.
    claim: Option<Box<ClaimPayment>>,
    /// Whether `Begin` was handed out for `current`.
    begun: bool,
    /// Items ready to hand out.
    queue: std::collections::VecDeque<RemitItem>,
}

impl Pending {
    /// Hands out `Begin` for the current transaction if not yet done.
    fn begin(&mut self) {
        if !self.begun
            && let Some(r) = self.current.as_ref()
        {
            self.begun = true;
            let mut header = r.clone();
            header.claims = Vec::new();
            header.provider_adjustments = Vec::new();
            header.problems = Vec::new();
            self.queue.push_back(RemitItem::Begin(header));
        }
    }

    /// Hands out the claim being read, if any.
    fn flush_claim(&mut self) {
        self.begin();
        if let Some(c) = self.claim.take() {
            self.queue.push_back(RemitItem::Claim(c));
        }
    }

    /// Ends the current transaction, if any.
    fn finish(&mut self) {
        if self.current.is_none() {
            return;
        }
        self.flush_claim();
        if let Some(r) = self.current.take() {
            self.queue.push_back(RemitItem::End(r));
        }
        self.begun = false;
    }
}

/// Reads 835 transaction sets, either one claim at a time ([`RemittanceReader::next_item`],
/// memory bounded by one claim) or one whole transaction at a time ([`RemittanceReader::next`]).
pub struct RemittanceReader<R> {
    reader: X12Reader<R>,
    version: String,
    out: Pending,
    /// Where CAS / DTM / REF / AMT / LQ go: 0 = header, 1 = claim, 2 = service.
    level: u8,
    done: bool,
    /// A fatal error to hand out once the queue is drained.
    fatal: Option<ReadError>,
}

/// A segment id of up to three bytes as one number, so dispatch compares integers.
const fn code(id: &[u8]) -> u32 {
    let mut c = 0u32;
    let mut i = 0;
    while i < id.len() && i < 4 {
        c = (c << 8) | id[i] as u32;
        i += 1;
    }
    c
}

const GS: u32 = code(b"GS");
const ST: u32 = code(b"ST");
const SE: u32 = code(b"SE");
const BPR: u32 = code(b"BPR");
const TRN: u32 = code(b"TRN");
const N1: u32 = code(b"N1");
const REF: u32 = code(b"REF");
const CLP: u32 = code(b"CLP");
const SVC: u32 = code(b"SVC");
const CAS: u32 = code(b"CAS");
const DTM: u32 = code(b"DTM");
const AMT: u32 = code(b"AMT");
const LQ: u32 = code(b"LQ");
const MOA: u32 = code(b"MOA");
const MIA: u32 = code(b"MIA");
const PLB: u32 = code(b"PLB");

impl<R: Read> RemittanceReader<R> {
    /// A reader over `input`.
    pub fn new(input: R) -> Self {
        RemittanceReader {
            reader: X12Reader::new(input),
            version: String::new(),
            out: Pending::default(),
            level: 0,
            done: false,
            fatal: None,
        }
    }

    /// The envelope findings of the underlying reader so far.
    pub fn findings(&self) -> &[ReadError] {
        self.reader.findings()
    }

    /// An amount; a problem naming `id` + `position` (e.g. CLP03) when it is not one (the
    /// element name is only built then).
    fn cents(r: &mut Remittance, seg_no: usize, id: &str, position: usize, value: &str) -> i64 {
        if value.is_empty() {
            return 0;
        }
        match parse_cents(value) {
            Some(c) => c,
            None => {
                r.problems.push(problem(seg_no, id, &format!("{id}{position:02}"), "not an amount (or beyond ±$10,000,000,000.00)".into()));
                0
            }
        }
    }

    /// The next item, a fatal read error, or `None` at the end.
    pub fn next_item(&mut self) -> Option<Result<RemitItem, ReadError>> {
        loop {
            if let Some(item) = self.out.queue.pop_front() {
                return Some(Ok(item));
            }
            if let Some(e) = self.fatal.take() {
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            self.step();
        }
    }

    /// The next whole transaction set (claims collected), a fatal read error, or `None` at the
    /// end. For files of any size, prefer [`RemittanceReader::next_item`].
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Remittance, ReadError>> {
        let mut claims = Vec::new();
        loop {
            match self.next_item()? {
                Err(e) => return Some(Err(e)),
                Ok(RemitItem::Begin(_)) => claims.clear(),
                Ok(RemitItem::Claim(c)) => claims.push(*c),
                Ok(RemitItem::End(mut r)) => {
                    r.claims = std::mem::take(&mut claims);
                    return Some(Ok(r));
                }
            }
        }
    }

    /// Reads one segment, queueing what it completes.
    fn step(&mut self) {
        let item = self.reader.next_segment();
        let seg = match item {
            None => {
                self.done = true;
                self.out.finish();
                return;
            }
            Some(Err(e)) if e.is_fatal() => {
                self.done = true;
                self.fatal = Some(e);
                return;
            }
            Some(Err(_)) => return,
            Some(Ok(s)) => s,
        };
        let n = seg.number();
        let id = seg.id();
        let key = if id.len() <= 3 { code(id.as_bytes()) } else { 0 };
        if key == GS {
            self.version = seg.element(8).to_string();
            return;
        }
        if key == ST {
            if seg.element(1) != "835" {
                let e = problem(n, "ST", "ST01", format!("transaction set {} is not an 835 remittance", seg.element(1)));
                self.out.finish();
                self.done = true;
                self.fatal = Some(ReadError { severity: Severity::Fatal, ..e });
                return;
            }
            self.out.finish();
            self.out.current = Some(Remittance {
                control_number: seg.element(2).to_string(),
                version: self.version.clone(),
                segment: n,
                ..Remittance::default()
            });
            self.level = 0;
            return;
        }
        if key == SE {
            self.out.finish();
            return;
        }
        if key == CLP || key == PLB {
            self.out.flush_claim();
        }
        let Pending { current, claim: open_claim, .. } = &mut self.out;
        let Some(r) = current.as_mut() else { return };
        match key {
            BPR => {
                r.handling = seg.element(1).to_string();
                r.paid_cents = Self::cents(r, n, id, 2, seg.element(2));
                r.credit_debit = seg.element(3).to_string();
                r.method = seg.element(4).to_string();
                r.payment_date = date8(seg.element(16));
            }
            TRN => {
                r.trace_number = seg.element(2).to_string();
                r.trace_payer = seg.element(3).to_string();
            }
            N1 if seg.element(1) == "PR" => {
                r.payer_name = seg.element(2).to_string();
                r.payer_id = opt(seg.element(4));
            }
            N1 if seg.element(1) == "PE" => {
                r.payee_name = seg.element(2).to_string();
                r.payee_id = opt(seg.element(4));
            }
            REF if seg.element(1) == "2U" && self.level == 0 => {
                r.payer_id = r.payer_id.clone().or_else(|| Some(seg.element(2).to_string()));
            }
            CLP => {
                let claim = ClaimPayment {
                    pcn: seg.element(1).into(),
                    status: seg.element(2).into(),
                    charge_cents: Self::cents(r, n, id, 3, seg.element(3)),
                    paid_cents: Self::cents(r, n, id, 4, seg.element(4)),
                    patient_responsibility_cents: Some(seg.element(5)).filter(|s| !s.is_empty()).map(|v| Self::cents(r, n, id, 5, v)),
                    filing_indicator: seg.element(6).into(),
                    payer_claim_number: text(seg.element(7)),
                    facility: text(seg.element(8)),
                    frequency: text(seg.element(9)),
                    segment: n,
                    ..ClaimPayment::default()
                };
                *open_claim = Some(Box::new(claim));
                self.level = 1;
            }
            SVC => {
                let mods: Vec<Text> = seg.components(1).skip(2).take(4).filter(|m| !m.is_empty()).map(Text::from).collect();
                let svc = ServicePayment {
                    qualifier: seg.component(1, 1).into(),
                    procedure: seg.component(1, 2).into(),
                    modifiers: mods,
                    charge_cents: Self::cents(r, n, id, 2, seg.element(2)),
                    paid_cents: Self::cents(r, n, id, 3, seg.element(3)),
                    revenue_code: text(seg.element(4)),
                    units: text(seg.element(5)),
                    submitted_procedure: text(seg.component(6, 2)),
                    segment: n,
                    ..ServicePayment::default()
                };
                match open_claim.as_deref_mut() {
                    Some(c) => c.services.push(svc),
                    None => r.problems.push(problem(n, id, "SVC01", "a service line before any CLP".into())),
                }
                self.level = 2;
            }
            CAS => {
                let group: Text = seg.element(1).into();
                let target = match (self.level, open_claim.as_deref_mut()) {
                    (2, Some(c)) => c.services.last_mut().map(|s| &mut s.adjustments),
                    (_, Some(c)) => Some(&mut c.adjustments),
                    (_, None) => {
                        r.problems.push(problem(n, id, "CAS01", "an adjustment before any CLP".into()));
                        None
                    }
                };
                let Some(target) = target else { return };
                for k in 0..6 {
                    let reason = seg.element(2 + 3 * k);
                    if reason.is_empty() {
                        continue;
                    }
                    let amount_cents = Self::cents(r, n, id, 3 + 3 * k, seg.element(3 + 3 * k));
                    let quantity = text(seg.element(4 + 3 * k));
                    target.push(Adjustment { group: group.clone(), reason: reason.into(), amount_cents, quantity });
                }
            }
            DTM if self.level == 2 && matches!(seg.element(1), "472" | "150") => {
                if let Some(s) = open_claim.as_deref_mut().and_then(|c| c.services.last_mut()) {
                    s.service_date = s.service_date.or(date8(seg.element(2)));
                }
            }
            REF if self.level == 2 && seg.element(1) == "6R" => {
                if let Some(s) = open_claim.as_deref_mut().and_then(|c| c.services.last_mut()) {
                    s.line_id = Some(seg.element(2).into());
                }
            }
            AMT if self.level == 2 && seg.element(1) == "B6" => {
                let v = Self::cents(r, n, id, 2, seg.element(2));
                if let Some(s) = open_claim.as_deref_mut().and_then(|c| c.services.last_mut()) {
                    s.allowed_cents = Some(v);
                }
            }
            LQ if self.level == 2 && seg.element(1) == "HE" => {
                if let Some(s) = open_claim.as_deref_mut().and_then(|c| c.services.last_mut()) {
                    s.remarks.push(seg.element(2).into());
                }
            }
            MOA | MIA => {
                let codes: Vec<Text> =
                    seg.elements().skip(1).filter(|e| e.starts_with('M') || e.starts_with('N')).map(Text::from).collect();
                if let Some(c) = open_claim.as_deref_mut() {
                    c.remarks.extend(codes);
                }
            }
            PLB => {
                self.level = 0;
                let provider: Text = seg.element(1).into();
                let fiscal_date = date8(seg.element(2));
                for k in 0..6 {
                    let i = 3 + 2 * k;
                    let reason = seg.component(i, 1);
                    if reason.is_empty() {
                        continue;
                    }
                    let amount_cents = Self::cents(r, n, id, i + 1, seg.element(i + 1));
                    r.provider_adjustments.push(ProviderAdjustment {
                        provider: provider.clone(),
                        fiscal_date,
                        reason: reason.into(),
                        reference: text(seg.component(i, 2)),
                        amount_cents,
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    const SAMPLE: &str = "ISA*00*          *00*          *ZZ*PAYER          *ZZ*WELLNESSGW     *261201*1200*^*00501*000000001*0*T*:~\
GS*HP*PAYER*WELLNESSGW*20261201*1200*1*X*005010X221A1~ST*835*0001~BPR*I*300.5*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999999999*DA*98765*20261201~\
TRN*1*EFT123*1512345678~N1*PR*MEDI-CAL~N1*PE*DEMO CHC*XX*1600000016~LX*1~\
CLP*W1*1*245.67*200*0*MC*ICN1*77*1~CAS*CO*45*45.67~SVC*HC:T1015:SE*245.67*200**1~DTM*472*20261102~CAS*CO*45*45.67~REF*6R*W1-1~AMT*B6*200~\
SVC*HC:90834*0*0**1~DTM*472*20261102~CAS*CO*97*0~REF*6R*W1-2~LQ*HE*N130~\
CLP*W2*4*100*0**MC*ICN2*77*1~CAS*CO*16*100~MOA***MA130~\
CLP*W3*22*-50*-50**MC*ICN3*77*1~\
PLB*1600000016*20261231*L6:INT1*-1.5*WO:ICN9*51~SE*22*0001~GE*1*1~IEA*1*000000001~";

    #[test]
    fn a_remittance_reads_into_typed_values_and_balances() -> R {
        let mut r = RemittanceReader::new(SAMPLE.as_bytes());
        let rem = r.next().ok_or("no remittance")??;
        assert_eq!((rem.paid_cents, rem.trace_number.as_str(), rem.payee_id.as_deref()), (30050, "EFT123", Some("1600000016")));
        assert_eq!(rem.claims.len(), 3);
        let c = &rem.claims[0];
        assert_eq!((c.pcn.as_str(), c.charge_cents, c.paid_cents, c.payer_claim_number.as_deref()), ("W1", 24567, 20000, Some("ICN1")));
        assert_eq!(c.adjustments[0], Adjustment { group: "CO".into(), reason: "45".into(), amount_cents: 4567, quantity: None });
        assert_eq!(c.services[0].modifiers, vec!["SE"]);
        assert_eq!(c.services[0].line_id.as_deref(), Some("W1-1"));
        assert_eq!(c.services[0].allowed_cents, Some(20000));
        assert_eq!(c.services[1].remarks, vec!["N130"]);
        assert_eq!(rem.claims[1].remarks, vec!["MA130"]);
        assert_eq!(rem.claims[2].paid_cents, -5000);
        assert_eq!(rem.provider_adjustments.len(), 2);
        assert_eq!(rem.provider_adjustments[1].reference.as_deref(), Some("ICN9"));
        // 200 + 0 - 50 - (-1.50 + 51) = 100.50 ... the sample pays 300.50: an imbalance.
        assert!(!rem.balances());
        assert!(rem.problems.is_empty(), "{:?}", rem.problems);
        assert!(r.next().is_none());
        Ok(())
    }

    #[test]
    fn items_stream_one_claim_at_a_time_in_file_order() -> R {
        let mut r = RemittanceReader::new(SAMPLE.as_bytes());
        let mut kinds = Vec::new();
        while let Some(item) = r.next_item() {
            kinds.push(match item? {
                RemitItem::Begin(h) => {
                    assert!(h.claims.is_empty() && h.trace_number == "EFT123");
                    "begin".to_string()
                }
                RemitItem::Claim(c) => c.pcn.to_string(),
                RemitItem::End(e) => {
                    assert!(e.claims.is_empty());
                    assert_eq!(e.provider_adjustments.len(), 2);
                    "end".to_string()
                }
            });
        }
        assert_eq!(kinds, ["begin", "W1", "W2", "W3", "end"]);
        // Two transactions, the first without claims and without SE: each begins and ends.
        let two = SAMPLE.replace("LX*1~", "LX*1~SE*5*0001~ST*835*0002~BPR*I*0*C*NON************20261201~TRN*1*EFT124*1512345678~");
        let mut r = RemittanceReader::new(two.as_bytes());
        let mut traces = Vec::new();
        while let Some(rem) = r.next() {
            let rem = rem?;
            traces.push((rem.trace_number, rem.claims.len()));
        }
        assert_eq!(traces, [("EFT123".to_string(), 0), ("EFT124".to_string(), 3)]);
        Ok(())
    }

    /// Found by `cargo fuzz` (target remit835): a PLB amount near `i64::MAX` overflowed the
    /// balance sums. Amounts beyond ±$10,000,000,000.00 are refused; sums cannot overflow.
    #[test]
    fn a_huge_amount_is_refused_not_summed() -> R {
        let input = "ISA****************:~ST*835~PLB***C*92233720368547758*N*1";
        let rem = RemittanceReader::new(input.as_bytes()).next().ok_or("no remittance")??;
        assert!(!rem.balances());
        assert!(rem.problems.iter().any(|p| p.element.as_deref() == Some("PLB04")), "{:?}", rem.problems);
        let text = SAMPLE.replace("L6:INT1*-1.5", "L6:INT1*10000000000.01");
        let rem = RemittanceReader::new(text.as_bytes()).next().ok_or("no remittance")??;
        assert!(rem.problems.iter().any(|p| p.message.contains("beyond")), "{:?}", rem.problems);
        Ok(())
    }

    #[test]
    fn a_bad_amount_names_the_segment_and_element() -> R {
        let text = SAMPLE.replace("CLP*W2*4*100*0", "CLP*W2*4*1O0*0");
        let rem = RemittanceReader::new(text.as_bytes()).next().ok_or("no remittance")??;
        assert!(
            rem.problems.iter().any(|p| p.to_string().contains("(CLP)") && p.element.as_deref() == Some("CLP03")),
            "{:?}",
            rem.problems
        );
        Ok(())
    }
}
