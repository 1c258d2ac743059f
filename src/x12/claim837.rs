//! 837 claim builders: professional (837P, 005010X222A1) and institutional (837I, 005010X223A2).
//!
//! The model is plain data; [`build_interchange`] checks it against the implementation guide
//! (TR3) rules that matter for a clean claim and writes it with [`X12Writer`]:
//!
//! ```text
//! ISA GS ST BHT
//!   1000A NM1*41 PER*IC        1000B NM1*40
//!   2000A HL*1**20*1 PRV*BI    2010AA NM1*85 N3 N4 REF*EI
//!   2000B HL*n*1*22*0 SBR*P*18 (one per distinct subscriber, who is the patient)
//!     2010BA NM1*IL N3 N4 DMG  2010BB NM1*PR
//!     2300 CLM [DTP*434 CL1 (837I)] [REF*F8] HI
//!       837P: 2310B NM1*82 PRV*PE, 2310C NM1*77 N3 N4, 2310D NM1*DQ
//!       837I: 2310A NM1*71 PRV*AT, 2310D NM1*82, 2310E NM1*77 N3 N4
//!       2400 LX SV1|SV2 DTP*472 REF*6R
//! SE GE IEA
//! ```
//!
//! Money is integer cents; each claim's stated total must equal the sum of its line charges.

use std::collections::HashMap;

use chrono::{NaiveDate, NaiveDateTime};

use super::writer::{Delimiters, GsHeader, IsaHeader, TransactionSummary, Usage, X12Error, X12Writer, d8, hhmm, money, rd8};

/// Which 837 implementation guide an interchange follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Implementation {
    /// 837P, `005010X222A1`.
    Professional,
    /// 837I, `005010X223A2`.
    Institutional,
}

impl Implementation {
    /// The GS08 / ST03 version identifier.
    pub fn version(self) -> &'static str {
        match self {
            Implementation::Professional => "005010X222A1",
            Implementation::Institutional => "005010X223A2",
        }
    }
}

/// A postal address (N3/N4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// N301 street line, 1-55 characters.
    pub line1: String,
    /// N302 second street line.
    pub line2: Option<String>,
    /// N401 city, 2-30 characters.
    pub city: String,
    /// N402 two-letter state code.
    pub state: String,
    /// N403 ZIP code, 5 or 9 digits without a dash (9 required for billing provider and
    /// service facility).
    pub zip: String,
}

/// Loop 1000A: the submitter (`NM1*41*2*name*****46*id`, `PER*IC*contact*TE*phone`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitter {
    /// NM103 organisation name.
    pub name: String,
    /// NM109 submitter id assigned by the receiver.
    pub id: String,
    /// PER02 contact name.
    pub contact_name: String,
    /// PER04 telephone: 10 digits.
    pub phone: String,
}

/// Loop 1000B: the receiver (`NM1*40*2*name*****46*id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receiver {
    /// NM103 receiver name.
    pub name: String,
    /// NM109 receiver primary identifier.
    pub id: String,
}

/// Loops 2000A/2010AA: the billing provider (an organisation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingProvider {
    /// NM103 organisation name.
    pub name: String,
    /// NM109 NPI (10 digits, Luhn check digit).
    pub npi: String,
    /// REF*EI employer identification number: 9 digits, no dash.
    pub tin: String,
    /// PRV*BI*PXC taxonomy code (10 characters).
    pub taxonomy: String,
    /// Street address (no PO box; 9-digit ZIP).
    pub address: Address,
}

/// An individual provider: rendering, supervising or attending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// NM103 last name.
    pub last: String,
    /// NM104 first name.
    pub first: String,
    /// NM109 NPI.
    pub npi: String,
    /// PRV03 taxonomy code, written for rendering (837P) and attending (837I) providers.
    pub taxonomy: Option<String>,
}

/// The service facility location (837P 2310C, 837I 2310E).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facility {
    /// NM103 name.
    pub name: String,
    /// NM109 NPI, when the facility has one.
    pub npi: Option<String>,
    /// Address (9-digit ZIP).
    pub address: Address,
}

/// DMG03 administrative sex.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sex {
    /// `F`.
    Female,
    /// `M`.
    Male,
    /// `U`.
    Unknown,
}

impl Sex {
    fn code(self) -> &'static str {
        match self {
            Sex::Female => "F",
            Sex::Male => "M",
            Sex::Unknown => "U",
        }
    }
}

/// Loop 2010BA: the subscriber, who is also the patient (SBR02 `18`, self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    /// NM109 member id (`MI`).
    pub member_id: String,
    /// NM103 last name.
    pub last: String,
    /// NM104 first name.
    pub first: String,
    /// DMG02 date of birth.
    pub birth_date: NaiveDate,
    /// DMG03 sex.
    pub sex: Sex,
    /// N3/N4 address.
    pub address: Address,
}

/// Loop 2010BB: the payer, and the SBR09 claim filing indicator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payer {
    /// NM103 payer name.
    pub name: String,
    /// NM109 payer id (`PI`).
    pub id: String,
    /// SBR09 claim filing indicator, e.g. `MC` (Medicaid), `CI` (commercial), `MB` (Medicare B).
    pub filing_indicator: String,
}

/// The 837I-only claim fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstitutionalForm {
    /// CLM05-1: the first two digits of the type of bill (facility type + classification),
    /// each 1-9, e.g. `77` for a federally qualified health center.
    pub facility_type: String,
    /// CL103 patient status code (2 digits), `01` for discharged to home / outpatient.
    pub patient_status: String,
    /// CL101 admission type code (1 digit); required on inpatient claims.
    pub admission_type: Option<String>,
    /// CL102 point of origin (admission source) code (1 character).
    pub admission_source: Option<String>,
    /// HI*APR patient's reason for visit (ICD-10-CM without the dot), at most 3; the TR3 wants
    /// it on unscheduled outpatient visits.
    pub reason_for_visit: Vec<String>,
}

/// What kind of claim, with the fields that differ between 837P and 837I.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimForm {
    /// 837P claim.
    Professional {
        /// CLM05-1 place of service code (2 digits), e.g. `11` office, `10` telehealth in the patient's home.
        place_of_service: String,
    },
    /// 837I claim.
    Institutional(InstitutionalForm),
}

/// CLM05-3 claim frequency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frequency {
    /// `1`: original claim.
    Original,
    /// `7`: replacement of a prior claim (REF*F8 required).
    Replacement,
    /// `8`: void / cancel of a prior claim (REF*F8 required).
    Void,
}

impl Frequency {
    /// The CLM05-3 code.
    pub fn code(self) -> &'static str {
        match self {
            Frequency::Original => "1",
            Frequency::Replacement => "7",
            Frequency::Void => "8",
        }
    }
}

/// CLM09 release of information code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOfInformation {
    /// `Y`: signed statement permitting release of medical data.
    Yes,
    /// `I`: informed authorization to release data for conditions under federal confidentiality
    /// rules (e.g. 42 CFR Part 2).
    Informed,
}

impl ReleaseOfInformation {
    fn code(self) -> &'static str {
        match self {
            ReleaseOfInformation::Yes => "Y",
            ReleaseOfInformation::Informed => "I",
        }
    }
}

/// Loop 2300: one claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// CLM01 patient control number, 1-20 characters (echoed back as CLP01 in the 835).
    pub patient_control_number: String,
    /// 837P or 837I specifics.
    pub form: ClaimForm,
    /// CLM05-3 frequency.
    pub frequency: Frequency,
    /// REF*F8 payer claim control number of the claim being replaced or voided; required
    /// for [`Frequency::Replacement`] and [`Frequency::Void`], refused otherwise.
    pub payer_claim_number: Option<String>,
    /// CLM09.
    pub release_of_information: ReleaseOfInformation,
    /// CLM02 total charge in cents; must equal the sum of the line charges.
    pub total_charge_cents: i64,
    /// ICD-10-CM codes without the dot; the first is the principal diagnosis
    /// (837P: at most 12; 837I: at most 25).
    pub diagnoses: Vec<String>,
    /// Rendering provider (837P 2310B with PRV*PE, 837I 2310D).
    pub rendering: Option<Person>,
    /// Supervising provider (837P 2310D only; 837I has no such loop).
    pub supervising: Option<Person>,
    /// Attending provider (837I 2310A with PRV*AT only).
    pub attending: Option<Person>,
    /// Service facility location (837P 2310C, 837I 2310E).
    pub service_facility: Option<Facility>,
    /// First date of service of the claim (837I DTP*434).
    pub statement_from: NaiveDate,
    /// Last date of service of the claim (837I DTP*434).
    pub statement_to: NaiveDate,
    /// Service lines (837P: 1-50, 837I: 1-999).
    pub lines: Vec<Line>,
    /// The subscriber, who is the patient; claims of the same member id share one 2000B loop.
    pub subscriber: Subscriber,
}

/// Loop 2400: one service line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// REF*6R line item control number (echoed back in the 835), 1-50 characters.
    pub line_id: String,
    /// HCPCS/CPT code (5 letters or digits); may be empty on an 837I line that only carries a
    /// revenue code.
    pub procedure: String,
    /// Procedure modifiers (2 letters or digits each), at most 4.
    pub modifiers: Vec<String>,
    /// 837I SV201 revenue code (4 digits); required on 837I, refused on 837P.
    pub revenue_code: Option<String>,
    /// Line charge in cents (0 allowed, e.g. informational lines; not negative).
    pub charge_cents: i64,
    /// Units of service (at least 1).
    pub units: u32,
    /// DTP*472 date of service, within the claim's statement dates.
    pub service_date: NaiveDate,
    /// 837P SV107 diagnosis pointers (1-4 entries, each 1..=number of diagnoses); refused on 837I.
    pub diagnosis_pointers: Vec<u8>,
}

/// One 837 transaction set (ST/SE): one billing provider and payer, many claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction837 {
    /// ST02 control number, 4-9 letters or digits, unique within the group.
    pub control_number: String,
    /// BHT03 originator application transaction identifier, 1-50 characters.
    pub reference: String,
    /// BHT04/BHT05 creation date and time.
    pub created: NaiveDateTime,
    /// Loop 1000A.
    pub submitter: Submitter,
    /// Loop 1000B.
    pub receiver: Receiver,
    /// Loops 2000A/2010AA.
    pub billing_provider: BillingProvider,
    /// Loop 2010BB and SBR09.
    pub payer: Payer,
    /// The claims, grouped by subscriber in the output (first appearance order kept).
    pub claims: Vec<Claim>,
}

/// One interchange (ISA/IEA) holding one functional group (GS/GE) of 837 transaction sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interchange {
    /// ISA05 sender id qualifier, e.g. `ZZ`.
    pub sender_qualifier: String,
    /// ISA06 sender id (at most 15 characters).
    pub sender_id: String,
    /// ISA07 receiver id qualifier.
    pub receiver_qualifier: String,
    /// ISA08 receiver id (at most 15 characters).
    pub receiver_id: String,
    /// GS02 application sender's code (2-15 characters).
    pub gs_sender: String,
    /// GS03 application receiver's code (2-15 characters).
    pub gs_receiver: String,
    /// ISA15.
    pub usage: Usage,
    /// ISA14: request a TA1.
    pub ack_requested: bool,
    /// ISA13 control number, 1..=999999999.
    pub isa_control: u32,
    /// GS06 control number, 1..=999999999.
    pub gs_control: u32,
    /// ISA09/10 and GS04/05.
    pub created: NaiveDateTime,
    /// 837P or 837I; every claim's [`ClaimForm`] must match.
    pub implementation: Implementation,
    /// The transaction sets (at least one).
    pub transactions: Vec<Transaction837>,
}

/// A written interchange and what each of its transaction sets holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written837 {
    /// The X12 text.
    pub text: String,
    /// ST02 and SE01 of each transaction set, in order.
    pub transactions: Vec<TransactionSummary>,
}

/// Writes an interchange with the given delimiters.
pub fn write_interchange(interchange: &Interchange, delimiters: &Delimiters) -> Result<String, X12Error> {
    build_interchange(interchange, delimiters).map(|w| w.text)
}

/// Writes an interchange and reports each transaction set's ST02 and segment count.
pub fn build_interchange(interchange: &Interchange, delimiters: &Delimiters) -> Result<Written837, X12Error> {
    let i = interchange;
    if i.transactions.is_empty() {
        return Err(invalid("interchange", "has no transaction sets"));
    }
    let mut w = X12Writer::new(*delimiters)?;
    w.begin_interchange(&IsaHeader {
        sender_qualifier: i.sender_qualifier.clone(),
        sender_id: i.sender_id.clone(),
        receiver_qualifier: i.receiver_qualifier.clone(),
        receiver_id: i.receiver_id.clone(),
        created: i.created,
        control_number: i.isa_control,
        ack_requested: i.ack_requested,
        usage: i.usage,
    })?;
    w.begin_group(&GsHeader {
        functional_id: "HC".to_owned(),
        sender_code: i.gs_sender.clone(),
        receiver_code: i.gs_receiver.clone(),
        created: i.created,
        control_number: i.gs_control,
        version: i.implementation.version().to_owned(),
    })?;
    let mut seen: Vec<&str> = Vec::with_capacity(i.transactions.len());
    let mut transactions = Vec::with_capacity(i.transactions.len());
    for t in &i.transactions {
        if seen.contains(&t.control_number.as_str()) {
            return Err(invalid(&format!("transaction {}", t.control_number), "ST02 is repeated within the group"));
        }
        seen.push(&t.control_number);
        transactions.push(write_transaction(&mut w, t, i.implementation)?);
    }
    w.end_group()?;
    w.end_interchange()?;
    Ok(Written837 { text: w.finish()?, transactions })
}

/// Writes one 837 transaction set (ST..SE) into an open functional group of `writer`.
pub fn write_transaction(
    writer: &mut X12Writer,
    t: &Transaction837,
    implementation: Implementation,
) -> Result<TransactionSummary, X12Error> {
    let ctx = format!("transaction {}", t.control_number);
    if t.claims.is_empty() {
        return Err(invalid(&ctx, "has no claims"));
    }
    let w = writer;
    w.begin_transaction("837", &t.control_number, implementation.version())?;
    w.seg("BHT").el("0019").el("00").el_len(&t.reference, 1, 50).el(d8(t.created.date())?).el(hhmm(t.created.time())).el("CH").end()?;

    // 1000A submitter, 1000B receiver
    let s = &t.submitter;
    check_digits(&format!("{ctx} submitter phone"), &s.phone, 10, 10)?;
    w.seg("NM1").el("41").el("2").el_len(&s.name, 1, 60).empties(4).el("46").el_len(&s.id, 2, 80).end()?;
    w.seg("PER").el("IC").el_len(&s.contact_name, 1, 60).el("TE").el(&s.phone).end()?;
    let r = &t.receiver;
    w.seg("NM1").el("40").el("2").el_len(&r.name, 1, 60).empties(4).el("46").el_len(&r.id, 2, 80).end()?;

    // 2000A / 2010AA billing provider
    let bp = &t.billing_provider;
    let bctx = format!("{ctx} billing provider");
    check_taxonomy(&bctx, &bp.taxonomy)?;
    check_npi(&bctx, &bp.npi)?;
    check_digits(&format!("{bctx} tin"), &bp.tin, 9, 9)?;
    w.seg("HL").el("1").empty().el("20").el("1").end()?;
    w.seg("PRV").el("BI").el("PXC").el(&bp.taxonomy).end()?;
    w.seg("NM1").el("85").el("2").el_len(&bp.name, 1, 60).empties(4).el("XX").el(&bp.npi).end()?;
    address(w, &bctx, &bp.address, true)?;
    w.seg("REF").el("EI").el(&bp.tin).end()?;

    // 2000B per distinct subscriber, in first-appearance order
    let payer = &t.payer;
    check_filing_indicator(&ctx, &payer.filing_indicator)?;
    let mut groups: Vec<(&Subscriber, Vec<&Claim>)> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for c in &t.claims {
        let sub = &c.subscriber;
        match index.get(sub.member_id.as_str()).and_then(|&k| groups.get_mut(k)) {
            Some((first, list)) => {
                if *first != sub {
                    return Err(invalid(
                        &format!("{ctx} claim {}", c.patient_control_number),
                        format!("subscriber {} differs from an earlier claim with the same member id", sub.member_id),
                    ));
                }
                list.push(c);
            }
            None => {
                index.insert(sub.member_id.as_str(), groups.len());
                groups.push((sub, vec![c]));
            }
        }
    }
    let mut seen_pcn: std::collections::HashSet<&str> = std::collections::HashSet::with_capacity(t.claims.len());
    // Loop 2300 repeats at most 100 times under one 2000B: a subscriber with more claims gets
    // another subscriber level for each further hundred.
    let mut hl = 1usize;
    for (sub, claims) in &groups {
        let sctx = format!("{ctx} subscriber {}", sub.member_id);
        for chunk in claims.chunks(100) {
            hl += 1;
            w.seg("HL").el(hl.to_string()).el("1").el("22").el("0").end()?;
            w.seg("SBR").el("P").el("18").empties(6).el(&payer.filing_indicator).end()?;
            w.seg("NM1")
                .el("IL")
                .el("1")
                .el_len(&sub.last, 1, 60)
                .el_len(&sub.first, 1, 35)
                .empties(3)
                .el("MI")
                .el_len(&sub.member_id, 2, 80)
                .end()?;
            address(w, &sctx, &sub.address, false)?;
            w.seg("DMG").el("D8").el(d8(sub.birth_date)?).el(sub.sex.code()).end()?;
            w.seg("NM1").el("PR").el("2").el_len(&payer.name, 1, 60).empties(4).el("PI").el_len(&payer.id, 2, 80).end()?;
            for c in chunk {
                if !seen_pcn.insert(c.patient_control_number.as_str()) {
                    return Err(invalid(&format!("{ctx} claim {}", c.patient_control_number), "CLM01 is repeated within the transaction"));
                }
                claim(w, &ctx, c, implementation)?;
            }
        }
    }
    w.end_transaction()
}

fn claim(w: &mut X12Writer, ctx: &str, c: &Claim, implementation: Implementation) -> Result<(), X12Error> {
    let cctx = format!("{ctx} claim {}", c.patient_control_number);
    let professional = match (&c.form, implementation) {
        (ClaimForm::Professional { .. }, Implementation::Professional) => true,
        (ClaimForm::Institutional(_), Implementation::Institutional) => false,
        _ => return Err(invalid(&cctx, format!("claim form does not match the {} interchange", implementation.version()))),
    };

    // money: the stated total must be the sum of the lines
    if c.lines.is_empty() {
        return Err(invalid(&cctx, "has no service lines"));
    }
    let max_lines = if professional { 50 } else { 999 };
    if c.lines.len() > max_lines {
        return Err(invalid(&cctx, format!("has {} service lines, at most {max_lines} allowed", c.lines.len())));
    }
    let mut sum: i64 = 0;
    for (k, l) in c.lines.iter().enumerate() {
        if l.charge_cents < 0 {
            return Err(invalid(&format!("{cctx} line {}", k + 1), "charge is negative"));
        }
        sum = sum.checked_add(l.charge_cents).ok_or_else(|| invalid(&cctx, "sum of line charges overflows"))?;
    }
    if sum != c.total_charge_cents {
        return Err(X12Error::ChargeMismatch {
            claim: c.patient_control_number.clone(),
            total_cents: c.total_charge_cents,
            lines_cents: sum,
        });
    }

    // frequency and the prior claim's number
    let f8 = match (c.frequency, &c.payer_claim_number) {
        (Frequency::Original, None) => None,
        (Frequency::Original, Some(_)) => return Err(invalid(&cctx, "payer claim number (REF*F8) is only sent with frequency 7 or 8")),
        (_, Some(n)) if !n.is_empty() => Some(n),
        (f, _) => return Err(invalid(&cctx, format!("frequency {} requires the payer claim number (REF*F8)", f.code()))),
    };

    if c.statement_from > c.statement_to {
        return Err(invalid(&cctx, "statement from date is after the to date"));
    }
    let max_dx = if professional { 12 } else { 25 };
    if c.diagnoses.is_empty() || c.diagnoses.len() > max_dx {
        return Err(invalid(&cctx, format!("needs 1-{max_dx} diagnoses, has {}", c.diagnoses.len())));
    }
    for dx in &c.diagnoses {
        check_icd10(&cctx, dx)?;
    }

    // CLM and the claim-level segments
    match &c.form {
        ClaimForm::Professional { place_of_service } => {
            check_digits(&format!("{cctx} place of service"), place_of_service, 2, 2)?;
            w.seg("CLM")
                .el_len(&c.patient_control_number, 1, 20)
                .el(money(c.total_charge_cents))
                .empties(2)
                .comp(&[place_of_service.as_str(), "B", c.frequency.code()])
                .el("Y")
                .el("A")
                .el("Y")
                .el(c.release_of_information.code())
                .end()?;
        }
        ClaimForm::Institutional(form) => {
            let ft = &form.facility_type;
            if ft.len() != 2 || !ft.bytes().all(|b| (b'1'..=b'9').contains(&b)) {
                return Err(invalid(&format!("{cctx} facility type"), format!("{ft:?} must be 2 digits, each 1-9")));
            }
            check_digits(&format!("{cctx} patient status"), &form.patient_status, 2, 2)?;
            w.seg("CLM")
                .el_len(&c.patient_control_number, 1, 20)
                .el(money(c.total_charge_cents))
                .empties(2)
                .comp(&[ft.as_str(), "A", c.frequency.code()])
                .empty()
                .el("A")
                .el("Y")
                .el(c.release_of_information.code())
                .end()?;
            w.seg("DTP").el("434").el("RD8").el(rd8(c.statement_from, c.statement_to)?).end()?;
            w.seg("CL1").opt(form.admission_type.as_deref()).opt(form.admission_source.as_deref()).el(&form.patient_status).end()?;
        }
    }
    if let Some(n) = f8 {
        w.seg("REF").el("F8").el_len(n, 1, 50).end()?;
    }
    let (principal, others) = c.diagnoses.split_first().ok_or_else(|| invalid(&cctx, "has no diagnoses"))?;
    if professional {
        let mut hi = w.seg("HI").comp(&["ABK", principal.as_str()]);
        for dx in others {
            hi = hi.comp(&["ABF", dx.as_str()]);
        }
        hi.end()?;
    } else {
        w.seg("HI").comp(&["ABK", principal.as_str()]).end()?;
        if let ClaimForm::Institutional(form) = &c.form
            && !form.reason_for_visit.is_empty()
        {
            if form.reason_for_visit.len() > 3 {
                return Err(invalid(&cctx, "at most 3 reasons for visit"));
            }
            let mut hi = w.seg("HI");
            for dx in &form.reason_for_visit {
                check_icd10(&cctx, dx)?;
                hi = hi.comp(&["APR", dx.as_str()]);
            }
            hi.end()?;
        }
        for chunk in others.chunks(12) {
            let mut hi = w.seg("HI");
            for dx in chunk {
                hi = hi.comp(&["ABF", dx.as_str()]);
            }
            hi.end()?;
        }
    }

    // 2310 providers and facility, in TR3 order
    if professional {
        if c.attending.is_some() {
            return Err(invalid(&cctx, "837P has no attending provider loop"));
        }
        if let Some(p) = &c.rendering {
            person(w, &format!("{cctx} rendering"), "82", p)?;
            if let Some(tax) = &p.taxonomy {
                check_taxonomy(&format!("{cctx} rendering"), tax)?;
                w.seg("PRV").el("PE").el("PXC").el(tax).end()?;
            }
        }
        if let Some(f) = &c.service_facility {
            facility(w, &cctx, f)?;
        }
        if let Some(p) = &c.supervising {
            person(w, &format!("{cctx} supervising"), "DQ", p)?;
        }
    } else {
        if c.supervising.is_some() {
            return Err(invalid(&cctx, "837I has no supervising provider loop"));
        }
        if let Some(p) = &c.attending {
            person(w, &format!("{cctx} attending"), "71", p)?;
            if let Some(tax) = &p.taxonomy {
                check_taxonomy(&format!("{cctx} attending"), tax)?;
                w.seg("PRV").el("AT").el("PXC").el(tax).end()?;
            }
        }
        if let Some(p) = &c.rendering {
            person(w, &format!("{cctx} rendering"), "82", p)?;
        }
        if let Some(f) = &c.service_facility {
            facility(w, &cctx, f)?;
        }
    }

    // 2400 service lines
    for (k, l) in c.lines.iter().enumerate() {
        let lctx = format!("{cctx} line {}", k + 1);
        if l.units == 0 {
            return Err(invalid(&lctx, "units must be at least 1"));
        }
        if l.service_date < c.statement_from || l.service_date > c.statement_to {
            return Err(invalid(&lctx, format!("service date {} is outside the statement dates", l.service_date)));
        }
        if l.modifiers.len() > 4 {
            return Err(invalid(&lctx, "at most 4 modifiers"));
        }
        for m in &l.modifiers {
            if m.len() != 2 || !m.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(invalid(&lctx, format!("modifier {m:?} must be 2 letters or digits")));
            }
        }
        let procedure_ok = l.procedure.len() == 5 && l.procedure.bytes().all(|b| b.is_ascii_alphanumeric());
        let mut code: Vec<&str> = vec!["HC", l.procedure.as_str()];
        code.extend(l.modifiers.iter().map(String::as_str));
        w.seg("LX").el((k + 1).to_string()).end()?;
        if professional {
            if !procedure_ok {
                return Err(invalid(&lctx, format!("procedure {:?} must be 5 letters or digits", l.procedure)));
            }
            if l.revenue_code.is_some() {
                return Err(invalid(&lctx, "revenue code is only sent on 837I"));
            }
            if l.diagnosis_pointers.is_empty() || l.diagnosis_pointers.len() > 4 {
                return Err(invalid(&lctx, "needs 1-4 diagnosis pointers"));
            }
            let mut pointers = Vec::with_capacity(l.diagnosis_pointers.len());
            for p in &l.diagnosis_pointers {
                if *p == 0 || usize::from(*p) > c.diagnoses.len() {
                    return Err(invalid(&lctx, format!("diagnosis pointer {p} does not point at one of {} diagnoses", c.diagnoses.len())));
                }
                pointers.push(p.to_string());
            }
            w.seg("SV1").comp(&code).el(money(l.charge_cents)).el("UN").el(l.units.to_string()).empties(2).comp(&pointers).end()?;
        } else {
            if !l.diagnosis_pointers.is_empty() {
                return Err(invalid(&lctx, "diagnosis pointers are only sent on 837P"));
            }
            let revenue = l.revenue_code.as_deref().ok_or_else(|| invalid(&lctx, "837I line needs a revenue code"))?;
            check_digits(&format!("{lctx} revenue code"), revenue, 4, 4)?;
            let sv2 = w.seg("SV2").el(revenue);
            let sv2 = if l.procedure.is_empty() {
                if !l.modifiers.is_empty() {
                    return Err(invalid(&lctx, "modifiers without a procedure code"));
                }
                sv2.empty()
            } else if procedure_ok {
                sv2.comp(&code)
            } else {
                return Err(invalid(&lctx, format!("procedure {:?} must be 5 letters or digits", l.procedure)));
            };
            sv2.el(money(l.charge_cents)).el("UN").el(l.units.to_string()).end()?;
        }
        w.seg("DTP").el("472").el("D8").el(d8(l.service_date)?).end()?;
        w.seg("REF").el("6R").el_len(&l.line_id, 1, 50).end()?;
    }
    Ok(())
}

fn person(w: &mut X12Writer, ctx: &str, entity: &str, p: &Person) -> Result<(), X12Error> {
    check_npi(ctx, &p.npi)?;
    w.seg("NM1").el(entity).el("1").el_len(&p.last, 1, 60).el_len(&p.first, 1, 35).empties(3).el("XX").el(&p.npi).end()
}

fn facility(w: &mut X12Writer, cctx: &str, f: &Facility) -> Result<(), X12Error> {
    let fctx = format!("{cctx} service facility");
    let nm1 = w.seg("NM1").el("77").el("2").el_len(&f.name, 1, 60);
    match &f.npi {
        Some(npi) => {
            check_npi(&fctx, npi)?;
            nm1.empties(4).el("XX").el(npi).end()?;
        }
        None => nm1.end()?,
    }
    address(w, &fctx, &f.address, true)
}

fn address(w: &mut X12Writer, ctx: &str, a: &Address, nine_digit_zip: bool) -> Result<(), X12Error> {
    if a.state.len() != 2 || !a.state.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(invalid(&format!("{ctx} address"), format!("state {:?} must be 2 upper-case letters", a.state)));
    }
    let zip_ok = a.zip.bytes().all(|b| b.is_ascii_digit()) && (a.zip.len() == 9 || (!nine_digit_zip && a.zip.len() == 5));
    if !zip_ok {
        let want = if nine_digit_zip { "9 digits" } else { "5 or 9 digits" };
        return Err(invalid(&format!("{ctx} address"), format!("ZIP {:?} must be {want}", a.zip)));
    }
    let n3 = w.seg("N3").el_len(&a.line1, 1, 55);
    match &a.line2 {
        Some(l2) if !l2.is_empty() => n3.el_len(l2, 1, 55).end()?,
        _ => n3.end()?,
    }
    w.seg("N4").el_len(&a.city, 2, 30).el(&a.state).el(&a.zip).end()
}

fn invalid(field: &str, problem: impl Into<String>) -> X12Error {
    X12Error::Invalid { field: field.to_owned(), problem: problem.into() }
}

fn check_digits(field: &str, v: &str, min: usize, max: usize) -> Result<(), X12Error> {
    if (min..=max).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else if min == max {
        Err(invalid(field, format!("{v:?} must be {min} digits")))
    } else {
        Err(invalid(field, format!("{v:?} must be {min}-{max} digits")))
    }
}

/// NPI: 10 digits whose last is the Luhn check digit over the prefix 80840 and the first nine.
fn check_npi(ctx: &str, npi: &str) -> Result<(), X12Error> {
    let field = format!("{ctx} NPI");
    check_digits(&field, npi, 10, 10)?;
    let full: Vec<u32> = "80840".bytes().chain(npi.bytes()).map(|b| u32::from(b - b'0')).collect();
    let sum: u32 = full
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                *d
            }
        })
        .sum();
    if sum.is_multiple_of(10) { Ok(()) } else { Err(invalid(&field, format!("{npi:?} fails the NPI check digit"))) }
}

fn check_taxonomy(ctx: &str, t: &str) -> Result<(), X12Error> {
    if t.len() == 10 && t.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(invalid(&format!("{ctx} taxonomy"), format!("{t:?} must be 10 upper-case letters or digits")))
    }
}

fn check_icd10(ctx: &str, dx: &str) -> Result<(), X12Error> {
    let b = dx.as_bytes();
    let ok = (3..=7).contains(&b.len())
        && b.first().is_some_and(u8::is_ascii_uppercase)
        && b.iter().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
    if ok { Ok(()) } else { Err(invalid(&format!("{ctx} diagnosis"), format!("{dx:?} must be an ICD-10-CM code without the dot"))) }
}

const FILING_INDICATORS: &[&str] = &[
    "11", "12", "13", "14", "15", "16", "17", "AM", "BL", "CH", "CI", "DS", "FI", "HM", "LM", "MA", "MB", "MC", "OF", "TV", "VA", "WC",
    "ZZ",
];

fn check_filing_indicator(ctx: &str, code: &str) -> Result<(), X12Error> {
    if FILING_INDICATORS.contains(&code) {
        Ok(())
    } else {
        Err(invalid(&format!("{ctx} payer"), format!("claim filing indicator {code:?} is not an SBR09 code")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn date(y: i32, m: u32, d: u32) -> Result<NaiveDate, Box<dyn std::error::Error>> {
        Ok(NaiveDate::from_ymd_opt(y, m, d).ok_or("bad date")?)
    }

    fn addr(zip: &str) -> Address {
        Address { line1: "100 MAIN ST".into(), line2: None, city: "SACRAMENTO".into(), state: "CA".into(), zip: zip.into() }
    }

    fn subscriber(member: &str) -> Result<Subscriber, Box<dyn std::error::Error>> {
        Ok(Subscriber {
            member_id: member.into(),
            last: "DOE".into(),
            first: "ALEX".into(),
            birth_date: date(2010, 5, 6)?,
            sex: Sex::Unknown,
            address: addr("95814"),
        })
    }

    fn line(id: &str, charge: i64) -> Result<Line, Box<dyn std::error::Error>> {
        Ok(Line {
            line_id: id.into(),
            procedure: "90834".into(),
            modifiers: vec!["95".into()],
            revenue_code: None,
            charge_cents: charge,
            units: 1,
            service_date: date(2025, 2, 3)?,
            diagnosis_pointers: vec![1],
        })
    }

    fn claim(pcn: &str, member: &str) -> Result<Claim, Box<dyn std::error::Error>> {
        Ok(Claim {
            patient_control_number: pcn.into(),
            form: ClaimForm::Professional { place_of_service: "10".into() },
            frequency: Frequency::Original,
            payer_claim_number: None,
            release_of_information: ReleaseOfInformation::Yes,
            total_charge_cents: 15_000,
            diagnoses: vec!["F411".into(), "Z658".into()],
            rendering: Some(Person {
                last: "ROE".into(),
                first: "SAM".into(),
                npi: "1234567893".into(),
                taxonomy: Some("1041C0700X".into()),
            }),
            supervising: None,
            attending: None,
            service_facility: None,
            statement_from: date(2025, 2, 3)?,
            statement_to: date(2025, 2, 3)?,
            lines: vec![line(&format!("{pcn}-1"), 10_000)?, line(&format!("{pcn}-2"), 5_000)?],
            subscriber: subscriber(member)?,
        })
    }

    fn interchange(claims: Vec<Claim>) -> Result<Interchange, Box<dyn std::error::Error>> {
        let created = date(2025, 2, 10)?.and_hms_opt(8, 30, 0).ok_or("bad time")?;
        Ok(Interchange {
            sender_qualifier: "ZZ".into(),
            sender_id: "SUBMITTER1".into(),
            receiver_qualifier: "ZZ".into(),
            receiver_id: "PAYER1".into(),
            gs_sender: "SUBMITTER1".into(),
            gs_receiver: "PAYER1".into(),
            usage: Usage::Test,
            ack_requested: false,
            isa_control: 12,
            gs_control: 34,
            created,
            implementation: Implementation::Professional,
            transactions: vec![Transaction837 {
                control_number: "0001".into(),
                reference: "BATCH1".into(),
                created,
                submitter: Submitter {
                    name: "CLINIC".into(),
                    id: "SUBMITTER1".into(),
                    contact_name: "EDI DESK".into(),
                    phone: "9165550100".into(),
                },
                receiver: Receiver { name: "PAYER".into(), id: "PAYER1".into() },
                billing_provider: BillingProvider {
                    name: "CLINIC".into(),
                    npi: "1245319599".into(),
                    tin: "123456789".into(),
                    taxonomy: "261QF0400X".into(),
                    address: addr("958141234"),
                },
                payer: Payer { name: "MEDI-CAL".into(), id: "610442".into(), filing_indicator: "MC".into() },
                claims,
            }],
        })
    }

    #[test]
    fn writes_837p_with_exact_counts_and_grouped_subscribers() -> TestResult {
        let i = interchange(vec![claim("A1", "M1")?, claim("A2", "M2")?, claim("A3", "M1")?])?;
        let out = build_interchange(&i, &Delimiters::readable())?;
        let lines: Vec<&str> = out.text.lines().collect();
        let st = lines.iter().position(|l| l.starts_with("ST*")).ok_or("no ST")?;
        let se = lines.iter().position(|l| l.starts_with("SE*")).ok_or("no SE")?;
        let count = se - st + 1;
        assert_eq!(lines.get(se).copied(), Some(format!("SE*{count}*0001~").as_str()));
        assert_eq!(out.transactions, vec![TransactionSummary { control_number: "0001".into(), segment_count: count }]);
        assert_eq!(lines.first().map(|l| l.len()), Some(106));
        // two subscribers: M1 (claims A1, A3) then M2 (A2)
        let hls: Vec<&&str> = lines.iter().filter(|l| l.starts_with("HL*")).collect();
        assert_eq!(hls, vec![&"HL*1**20*1~", &"HL*2*1*22*0~", &"HL*3*1*22*0~"]);
        let clms: Vec<&str> = lines.iter().filter(|l| l.starts_with("CLM*")).copied().collect();
        assert_eq!(clms, vec!["CLM*A1*150***10:B:1*Y*A*Y*Y~", "CLM*A3*150***10:B:1*Y*A*Y*Y~", "CLM*A2*150***10:B:1*Y*A*Y*Y~"]);
        assert!(lines.contains(&"SV1*HC:90834:95*100*UN*1***1~"));
        assert!(lines.contains(&"HI*ABK:F411*ABF:Z658~"));
        assert!(lines.contains(&"NM1*82*1*ROE*SAM****XX*1234567893~"));
        assert!(lines.contains(&"SBR*P*18*******MC~"));
        assert!(lines.contains(&"GE*1*34~"));
        assert!(lines.contains(&"IEA*1*000000012~"));
        Ok(())
    }

    #[test]
    fn total_must_equal_sum_of_lines() -> TestResult {
        let mut c = claim("A1", "M1")?;
        c.total_charge_cents = 15_001;
        let err = write_interchange(&interchange(vec![c])?, &Delimiters::default()).err().ok_or("accepted a wrong total")?;
        assert_eq!(err, X12Error::ChargeMismatch { claim: "A1".into(), total_cents: 15_001, lines_cents: 15_000 });
        assert_eq!(err.to_string(), "claim A1: total charge 150.01 differs from the sum of line charges 150");
        Ok(())
    }

    #[test]
    fn replacement_needs_payer_claim_number() -> TestResult {
        let mut c = claim("A1", "M1")?;
        c.frequency = Frequency::Replacement;
        assert!(write_interchange(&interchange(vec![c.clone()])?, &Delimiters::default()).is_err());
        c.payer_claim_number = Some("ICN123".into());
        let text = write_interchange(&interchange(vec![c])?, &Delimiters::readable())?;
        assert!(text.contains("CLM*A1*150***10:B:7*Y*A*Y*Y~\nREF*F8*ICN123~\nHI*"));
        Ok(())
    }

    #[test]
    fn model_errors_name_the_place() -> TestResult {
        let mut c = claim("A1", "M1")?;
        c.subscriber.last = "O*NEIL".into();
        let err = write_interchange(&interchange(vec![c])?, &Delimiters::default()).err().ok_or("accepted a delimiter")?;
        assert!(err.to_string().starts_with("NM1-03: "), "{err}");

        let mut c = claim("A1", "M1")?;
        if let Some(l) = c.lines.first_mut() {
            l.diagnosis_pointers = vec![3];
        }
        assert!(write_interchange(&interchange(vec![c])?, &Delimiters::default()).is_err());

        let mut c = claim("A1", "M1")?;
        c.patient_control_number = "X".repeat(21);
        let err = write_interchange(&interchange(vec![c])?, &Delimiters::default()).err().ok_or("accepted 21 chars")?;
        assert!(err.to_string().starts_with("CLM-01: "), "{err}");

        let mut other = claim("A2", "M1")?;
        other.subscriber.first = "SOMEONE".into();
        assert!(write_interchange(&interchange(vec![claim("A1", "M1")?, other])?, &Delimiters::default()).is_err());

        let mut c = claim("A1", "M1")?;
        c.form = ClaimForm::Institutional(InstitutionalForm {
            facility_type: "77".into(),
            patient_status: "01".into(),
            admission_type: None,
            admission_source: None,
            reason_for_visit: vec![],
        });
        assert!(write_interchange(&interchange(vec![c])?, &Delimiters::default()).is_err(), "837I claim in an 837P interchange");
        Ok(())
    }

    #[test]
    fn writes_837i_claim_shape() -> TestResult {
        let mut c = claim("I1", "M1")?;
        c.form = ClaimForm::Institutional(InstitutionalForm {
            facility_type: "77".into(),
            patient_status: "01".into(),
            admission_type: None,
            admission_source: None,
            reason_for_visit: vec!["F411".into()],
        });
        c.attending = c.rendering.take();
        c.total_charge_cents = 25_000;
        c.lines = vec![
            Line {
                revenue_code: Some("0521".into()),
                procedure: "T1015".into(),
                modifiers: vec!["SE".into()],
                charge_cents: 25_000,
                diagnosis_pointers: vec![],
                ..line("I1-1", 0)?
            },
            Line { revenue_code: Some("0900".into()), modifiers: vec![], diagnosis_pointers: vec![], ..line("I1-2", 0)? },
        ];
        let mut i = interchange(vec![c])?;
        i.implementation = Implementation::Institutional;
        let text = write_interchange(&i, &Delimiters::readable())?;
        let lines: Vec<&str> = text.lines().collect();
        for want in [
            "GS*HC*SUBMITTER1*PAYER1*20250210*0830*34*X*005010X223A2~",
            "CLM*I1*250***77:A:1**A*Y*Y~",
            "DTP*434*RD8*20250203-20250203~",
            "CL1***01~",
            "HI*ABK:F411~",
            "HI*APR:F411~",
            "HI*ABF:Z658~",
            "NM1*71*1*ROE*SAM****XX*1234567893~",
            "PRV*AT*PXC*1041C0700X~",
            "SV2*0521*HC:T1015:SE*250*UN*1~",
            "SV2*0900*HC:90834*0*UN*1~",
        ] {
            assert!(lines.contains(&want), "missing {want}");
        }
        Ok(())
    }

    #[test]
    fn npi_check_digit() {
        assert!(check_npi("t", "1234567893").is_ok());
        assert!(check_npi("t", "1234567890").is_err());
        assert!(check_npi("t", "123456789").is_err());
    }
}
