//! A small typed X12 writer: delimiters, elements, segments and the ISA/GS/ST envelopes.
//!
//! Segments are built from typed [`Element`]s, never from string templates:
//!
//! ```text
//! w.seg("NM1").el("85").el("2").el_len(name, 1, 60).empty().empty().empty().el("XX").el(npi).end()?;
//! w.seg("SV1").comp(&["HC", code, "95"]).el(money(charge)).el("UN").el(units).end()?;
//! ```
//!
//! Every value is checked when its segment is finished: it must be printable ASCII and must not
//! contain any of the four delimiters; a value given with [`Segment::el_len`] must also be present
//! and within its length range. Errors name the position, e.g. `NM1-03` or `SV1-01-2`. Trailing
//! empty elements and trailing empty components are trimmed, so `NM1*IL*1*DOE****` is written
//! `NM1*IL*1*DOE`.
//!
//! The envelope calls ([`X12Writer::begin_interchange`], [`X12Writer::begin_group`],
//! [`X12Writer::begin_transaction`] and their `end_*` partners) must nest properly; the trailers
//! (SE01, GE01, IEA01) are counted by the writer. Control numbers come from the caller, which
//! persists them.

use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};

/// Everything the X12 writer and the 837 builders can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum X12Error {
    /// A value inside a segment is not allowed (delimiter, non-printable character, length).
    #[error("{}: {problem}", position(segment, *element, *component))]
    Value {
        /// Segment id, e.g. `NM1`.
        segment: String,
        /// Element position, 1-based (`NM1-03` is 3).
        element: usize,
        /// Component position inside a composite, 1-based; `None` for a simple element.
        component: Option<usize>,
        /// What is wrong, in words.
        problem: String,
    },
    /// A segment as a whole is malformed (bad id, nothing in it).
    #[error("segment {segment}: {problem}")]
    Segment {
        /// Segment id as given.
        segment: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// The delimiter set cannot be used.
    #[error("delimiters: {0}")]
    Delimiters(String),
    /// An envelope value (ISA/GS/ST field, control number) is out of range, or the
    /// envelope calls are not properly nested.
    #[error("envelope {field}: {problem}")]
    Envelope {
        /// The field, e.g. `ISA13`, or the call that was out of order.
        field: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// A value of the claim model cannot be written as the implementation guide requires.
    #[error("{field}: {problem}")]
    Invalid {
        /// Where in the model, e.g. `claim PCN1 line 2 modifiers`.
        field: String,
        /// What is wrong, in words.
        problem: String,
    },
    /// The claim total does not equal the sum of its line charges.
    #[error("claim {claim}: total charge {} differs from the sum of line charges {}", money(*total_cents), money(*lines_cents))]
    ChargeMismatch {
        /// Patient control number (CLM01).
        claim: String,
        /// The claim's stated total, in cents.
        total_cents: i64,
        /// The sum of its line charges, in cents.
        lines_cents: i64,
    },
}

fn position(segment: &str, element: usize, component: Option<usize>) -> String {
    match component {
        Some(c) => format!("{segment}-{element:02}-{c}"),
        None => format!("{segment}-{element:02}"),
    }
}

fn envelope(field: &str, problem: impl Into<String>) -> X12Error {
    X12Error::Envelope { field: field.to_owned(), problem: problem.into() }
}

/// The four X12 delimiters, plus an optional suffix written after each segment terminator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// Element separator (ISA position 4), `*` by default.
    pub element: u8,
    /// Component (sub-element) separator (ISA16), `:` by default.
    pub component: u8,
    /// Repetition separator (ISA11), `^` by default.
    pub repetition: u8,
    /// Segment terminator, `~` by default.
    pub segment: u8,
    /// Written after each segment terminator: `""` (default) or a line break (`"\n"` or
    /// `"\r\n"`) for readability.
    pub segment_suffix: &'static str,
}

impl Default for Delimiters {
    fn default() -> Self {
        Self { element: b'*', component: b':', repetition: b'^', segment: b'~', segment_suffix: "" }
    }
}

impl Delimiters {
    /// The default delimiters with a newline after each segment terminator.
    pub fn readable() -> Self {
        Self { segment_suffix: "\n", ..Self::default() }
    }

    /// Checks that the four delimiters are distinct, ASCII, and neither letters, digits nor
    /// space, and that the suffix is only line-break characters.
    pub fn validate(&self) -> Result<(), X12Error> {
        let all = [("element", self.element), ("component", self.component), ("repetition", self.repetition), ("segment", self.segment)];
        for (i, (name, b)) in all.iter().enumerate() {
            if !b.is_ascii() || b.is_ascii_alphanumeric() || *b == b' ' {
                return Err(X12Error::Delimiters(format!("{name} separator {:?} must be an ASCII symbol", char::from(*b))));
            }
            if let Some((other, _)) = all.iter().skip(i + 1).find(|(_, o)| o == b) {
                return Err(X12Error::Delimiters(format!("{name} and {other} separators are both {:?}", char::from(*b))));
            }
        }
        if !self.segment_suffix.bytes().all(|b| b == b'\r' || b == b'\n') {
            return Err(X12Error::Delimiters("segment suffix may only hold line breaks".to_owned()));
        }
        if self.segment_suffix.bytes().any(|b| self.is_delimiter(b)) {
            return Err(X12Error::Delimiters("segment suffix repeats a delimiter".to_owned()));
        }
        Ok(())
    }

    fn is_delimiter(&self, b: u8) -> bool {
        b == self.element || b == self.component || b == self.repetition || b == self.segment
    }

    /// Describes why `value` cannot be written with these delimiters, or `None` when it can.
    fn problem_in(&self, value: &str) -> Option<String> {
        for c in value.chars() {
            if !(' '..='~').contains(&c) {
                return Some(format!("character {c:?} is not printable ASCII"));
            }
            let b = c as u8; // printable ASCII: fits in one byte
            let name = if b == self.element {
                "element separator"
            } else if b == self.component {
                "component separator"
            } else if b == self.repetition {
                "repetition separator"
            } else if b == self.segment {
                "segment terminator"
            } else {
                continue;
            };
            // The value itself is never quoted: it may be a name or an identifier.
            return Some(format!("the value contains the {name} {c:?}"));
        }
        None
    }
}

/// One element of a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Element {
    /// Nothing (two separators side by side).
    Empty,
    /// A simple data element.
    Simple(String),
    /// A composite data element: components joined by the component separator.
    Composite(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    element: Element,
    /// `(min, max)` characters; the value is then required.
    len: Option<(usize, usize)>,
}

/// A segment under construction: an id and its elements, rendered with [`Segment::render`] or
/// written with [`X12Writer::put`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    id: String,
    slots: Vec<Slot>,
}

impl Segment {
    /// A new segment with id `id` (two or three upper-case letters or digits, checked on render).
    pub fn new(id: &str) -> Self {
        Self { id: id.to_owned(), slots: Vec::new() }
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Appends a typed element.
    pub fn element(mut self, element: Element) -> Self {
        self.slots.push(Slot { element, len: None });
        self
    }

    /// Appends a simple element; an empty string is an empty element.
    pub fn el(self, value: impl AsRef<str>) -> Self {
        let v = value.as_ref();
        if v.is_empty() { self.element(Element::Empty) } else { self.element(Element::Simple(v.to_owned())) }
    }

    /// Appends a required simple element whose length must be within `min..=max` characters.
    pub fn el_len(mut self, value: impl AsRef<str>, min: usize, max: usize) -> Self {
        self.slots.push(Slot { element: Element::Simple(value.as_ref().to_owned()), len: Some((min, max)) });
        self
    }

    /// Appends a simple element when `value` is `Some`, else an empty element.
    pub fn opt<S: AsRef<str>>(self, value: Option<S>) -> Self {
        match value {
            Some(v) => self.el(v),
            None => self.empty(),
        }
    }

    /// Appends an empty element.
    pub fn empty(self) -> Self {
        self.element(Element::Empty)
    }

    /// Appends `n` empty elements.
    pub fn empties(mut self, n: usize) -> Self {
        for _ in 0..n {
            self = self.empty();
        }
        self
    }

    /// Appends a composite element; trailing empty components are trimmed.
    pub fn comp<S: AsRef<str>>(self, components: &[S]) -> Self {
        self.element(Element::Composite(components.iter().map(|c| c.as_ref().to_owned()).collect()))
    }

    /// Renders the segment, terminator and suffix included.
    pub fn render(&self, d: &Delimiters) -> Result<String, X12Error> {
        let id = &self.id;
        let id_ok = (2..=3).contains(&id.len())
            && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
            && id.bytes().next().is_some_and(|b| b.is_ascii_uppercase());
        if !id_ok {
            return Err(X12Error::Segment { segment: id.clone(), problem: "id must be 2-3 upper-case letters or digits".to_owned() });
        }
        let value_err = |element: usize, component: Option<usize>, problem: String| X12Error::Value {
            segment: id.clone(),
            element,
            component,
            problem,
        };
        let mut rendered: Vec<String> = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let pos = i + 1;
            let text = match &slot.element {
                Element::Empty => {
                    if let Some((min, _)) = slot.len
                        && min > 0
                    {
                        return Err(value_err(pos, None, "required value is empty".to_owned()));
                    }
                    String::new()
                }
                Element::Simple(v) => {
                    if let Some(p) = d.problem_in(v) {
                        return Err(value_err(pos, None, p));
                    }
                    if let Some((min, max)) = slot.len {
                        let n = v.chars().count();
                        if n == 0 && min > 0 {
                            return Err(value_err(pos, None, "required value is empty".to_owned()));
                        }
                        if n < min || n > max {
                            return Err(value_err(pos, None, format!("the value has {n} characters, allowed {min}-{max}")));
                        }
                    }
                    v.clone()
                }
                Element::Composite(parts) => {
                    for (j, part) in parts.iter().enumerate() {
                        if let Some(p) = d.problem_in(part) {
                            return Err(value_err(pos, Some(j + 1), p));
                        }
                    }
                    let keep = parts.iter().rposition(|p| !p.is_empty()).map_or(0, |k| k + 1);
                    let sep = char::from(d.component).to_string();
                    parts[..keep].join(&sep)
                }
            };
            rendered.push(text);
        }
        while rendered.last().is_some_and(String::is_empty) {
            rendered.pop();
        }
        if rendered.is_empty() {
            return Err(X12Error::Segment { segment: id.clone(), problem: "segment has no data".to_owned() });
        }
        let mut out = String::with_capacity(id.len() + rendered.iter().map(|r| r.len() + 1).sum::<usize>() + 3);
        out.push_str(id);
        for r in &rendered {
            out.push(char::from(d.element));
            out.push_str(r);
        }
        out.push(char::from(d.segment));
        out.push_str(d.segment_suffix);
        Ok(out)
    }
}

/// Formats integer cents as an X12 `R` (decimal) value: `123.45`, `120`, `0`, `-5.5`.
pub fn money(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let (whole, frac) = (abs / 100, abs % 100);
    if frac == 0 {
        format!("{sign}{whole}")
    } else if frac % 10 == 0 {
        format!("{sign}{whole}.{}", frac / 10)
    } else {
        format!("{sign}{whole}.{frac:02}")
    }
}

/// Formats a date as X12 `D8` (`CCYYMMDD`); years outside 1..=9999 are an error.
pub fn d8(date: NaiveDate) -> Result<String, X12Error> {
    use chrono::Datelike;
    if !(1..=9999).contains(&date.year()) {
        return Err(X12Error::Invalid { field: "date".to_owned(), problem: format!("year {} cannot be written as CCYY", date.year()) });
    }
    Ok(date.format("%Y%m%d").to_string())
}

/// Formats a date range as X12 `RD8` (`CCYYMMDD-CCYYMMDD`); `from` must not be after `to`.
pub fn rd8(from: NaiveDate, to: NaiveDate) -> Result<String, X12Error> {
    if from > to {
        return Err(X12Error::Invalid { field: "date range".to_owned(), problem: format!("{from} is after {to}") });
    }
    Ok(format!("{}-{}", d8(from)?, d8(to)?))
}

/// Formats a time as X12 `HHMM`.
pub fn hhmm(time: NaiveTime) -> String {
    format!("{:02}{:02}", time.hour(), time.minute())
}

/// ISA15: whether the interchange is production or test data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// `P`: production data.
    Production,
    /// `T`: test data.
    Test,
}

impl Usage {
    /// The ISA15 code.
    pub fn code(self) -> &'static str {
        match self {
            Usage::Production => "P",
            Usage::Test => "T",
        }
    }
}

/// The values of an ISA interchange header. ISA01-04 are always `00` and blanks (no
/// authorization or security information); ISA12 is `00501`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsaHeader {
    /// ISA05 interchange id qualifier of the sender (e.g. `ZZ`, `30`).
    pub sender_qualifier: String,
    /// ISA06 sender id, at most 15 characters (padded with spaces).
    pub sender_id: String,
    /// ISA07 interchange id qualifier of the receiver.
    pub receiver_qualifier: String,
    /// ISA08 receiver id, at most 15 characters (padded with spaces).
    pub receiver_id: String,
    /// ISA09/ISA10 date and time of the interchange.
    pub created: NaiveDateTime,
    /// ISA13 interchange control number, 1..=999999999 (written zero-padded to 9 digits).
    pub control_number: u32,
    /// ISA14: whether a TA1 acknowledgment is requested.
    pub ack_requested: bool,
    /// ISA15 usage indicator.
    pub usage: Usage,
}

/// The values of a GS functional group header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GsHeader {
    /// GS01 functional identifier code, e.g. `HC` for 837.
    pub functional_id: String,
    /// GS02 application sender's code, 2-15 characters.
    pub sender_code: String,
    /// GS03 application receiver's code, 2-15 characters.
    pub receiver_code: String,
    /// GS04/GS05 date and time of the group.
    pub created: NaiveDateTime,
    /// GS06 group control number, 1..=999999999.
    pub control_number: u32,
    /// GS08 version / release / industry identifier, e.g. `005010X222A1`.
    pub version: String,
}

/// What was written for one transaction set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionSummary {
    /// ST02 transaction set control number.
    pub control_number: String,
    /// SE01: the number of segments in the set, ST and SE included.
    pub segment_count: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Idle,
    Interchange,
    Group,
    Transaction,
}

/// Accumulates segments into an X12 document, tracking envelopes and counts.
#[derive(Debug, Clone)]
pub struct X12Writer {
    d: Delimiters,
    out: String,
    state: State,
    isa_control: u32,
    gs_control: u32,
    st_control: String,
    segments_in_set: usize,
    sets_in_group: usize,
    groups_in_interchange: usize,
    summaries: Vec<TransactionSummary>,
}

/// A segment being built for an [`X12Writer`]; finish it with [`SegmentBuilder::end`].
#[derive(Debug)]
#[must_use = "a segment is only written by end()"]
pub struct SegmentBuilder<'w> {
    writer: &'w mut X12Writer,
    segment: Segment,
}

impl SegmentBuilder<'_> {
    /// Appends a typed element.
    pub fn element(mut self, element: Element) -> Self {
        self.segment = self.segment.element(element);
        self
    }
    /// Appends a simple element; an empty string is an empty element.
    pub fn el(mut self, value: impl AsRef<str>) -> Self {
        self.segment = self.segment.el(value);
        self
    }
    /// Appends a required simple element of `min..=max` characters.
    pub fn el_len(mut self, value: impl AsRef<str>, min: usize, max: usize) -> Self {
        self.segment = self.segment.el_len(value, min, max);
        self
    }
    /// Appends a simple element when `Some`, else an empty element.
    pub fn opt<S: AsRef<str>>(mut self, value: Option<S>) -> Self {
        self.segment = self.segment.opt(value);
        self
    }
    /// Appends an empty element.
    pub fn empty(mut self) -> Self {
        self.segment = self.segment.empty();
        self
    }
    /// Appends `n` empty elements.
    pub fn empties(mut self, n: usize) -> Self {
        self.segment = self.segment.empties(n);
        self
    }
    /// Appends a composite element.
    pub fn comp<S: AsRef<str>>(mut self, components: &[S]) -> Self {
        self.segment = self.segment.comp(components);
        self
    }
    /// Checks and writes the segment.
    pub fn end(self) -> Result<(), X12Error> {
        self.writer.put(self.segment)
    }
}

impl X12Writer {
    /// A writer using `delimiters` (checked here).
    pub fn new(delimiters: Delimiters) -> Result<Self, X12Error> {
        delimiters.validate()?;
        Ok(Self {
            d: delimiters,
            out: String::new(),
            state: State::Idle,
            isa_control: 0,
            gs_control: 0,
            st_control: String::new(),
            segments_in_set: 0,
            sets_in_group: 0,
            groups_in_interchange: 0,
            summaries: Vec::new(),
        })
    }

    /// The delimiters in use.
    pub fn delimiters(&self) -> &Delimiters {
        &self.d
    }

    /// Starts a segment inside the open transaction set.
    pub fn seg(&mut self, id: &str) -> SegmentBuilder<'_> {
        SegmentBuilder { writer: self, segment: Segment::new(id) }
    }

    /// Checks and writes a segment inside the open transaction set.
    pub fn put(&mut self, segment: Segment) -> Result<(), X12Error> {
        if self.state != State::Transaction {
            return Err(envelope(segment.id(), "segment written outside a transaction set (ST/SE)"));
        }
        if matches!(segment.id(), "ISA" | "IEA" | "GS" | "GE" | "ST" | "SE") {
            return Err(envelope(segment.id(), "envelope segments are written by the begin_/end_ calls"));
        }
        self.push(&segment)?;
        self.segments_in_set += 1;
        Ok(())
    }

    fn push(&mut self, segment: &Segment) -> Result<(), X12Error> {
        let text = segment.render(&self.d)?;
        self.out.push_str(&text);
        Ok(())
    }

    fn require_state(&self, state: State, call: &str) -> Result<(), X12Error> {
        if self.state == state { Ok(()) } else { Err(envelope(call, format!("called while {:?} is open", self.state))) }
    }

    /// Writes the ISA segment (exactly 106 characters, terminator included, suffix excluded).
    pub fn begin_interchange(&mut self, isa: &IsaHeader) -> Result<(), X12Error> {
        self.require_state(State::Idle, "begin_interchange")?;
        if !(1..=999_999_999).contains(&isa.control_number) {
            return Err(envelope("ISA13", format!("control number {} is outside 1..=999999999", isa.control_number)));
        }
        let fixed = |field: &str, value: &str, width: usize| -> Result<String, X12Error> {
            if value.is_empty() || value.len() > width {
                return Err(envelope(field, format!("value {value:?} must have 1-{width} characters")));
            }
            if let Some(p) = self.d.problem_in(value) {
                return Err(envelope(field, p));
            }
            if value.starts_with(' ') {
                return Err(envelope(field, "value must not start with a space"));
            }
            Ok(format!("{value:<width$}"))
        };
        let qualifier = |field: &str, value: &str| -> Result<String, X12Error> {
            if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
                Ok(value.to_owned())
            } else {
                Err(envelope(field, format!("qualifier {value:?} must be 2 upper-case letters or digits")))
            }
        };
        let e = char::from(self.d.element);
        let fields = [
            "00".to_owned(),
            " ".repeat(10),
            "00".to_owned(),
            " ".repeat(10),
            qualifier("ISA05", &isa.sender_qualifier)?,
            fixed("ISA06", &isa.sender_id, 15)?,
            qualifier("ISA07", &isa.receiver_qualifier)?,
            fixed("ISA08", &isa.receiver_id, 15)?,
            isa.created.format("%y%m%d").to_string(),
            hhmm(isa.created.time()),
            char::from(self.d.repetition).to_string(),
            "00501".to_owned(),
            format!("{:09}", isa.control_number),
            if isa.ack_requested { "1" } else { "0" }.to_owned(),
            isa.usage.code().to_owned(),
            char::from(self.d.component).to_string(),
        ];
        let mut text = String::with_capacity(106 + self.d.segment_suffix.len());
        text.push_str("ISA");
        for f in &fields {
            text.push(e);
            text.push_str(f);
        }
        text.push(char::from(self.d.segment));
        if text.len() != 106 {
            return Err(envelope("ISA", format!("rendered {} characters instead of 106", text.len())));
        }
        text.push_str(self.d.segment_suffix);
        self.out.push_str(&text);
        self.isa_control = isa.control_number;
        self.groups_in_interchange = 0;
        self.state = State::Interchange;
        Ok(())
    }

    /// Writes a GS segment.
    pub fn begin_group(&mut self, gs: &GsHeader) -> Result<(), X12Error> {
        self.require_state(State::Interchange, "begin_group")?;
        if !(1..=999_999_999).contains(&gs.control_number) {
            return Err(envelope("GS06", format!("control number {} is outside 1..=999999999", gs.control_number)));
        }
        let seg = Segment::new("GS")
            .el_len(&gs.functional_id, 2, 2)
            .el_len(&gs.sender_code, 2, 15)
            .el_len(&gs.receiver_code, 2, 15)
            .el(d8(gs.created.date())?)
            .el(hhmm(gs.created.time()))
            .el(gs.control_number.to_string())
            .el("X")
            .el_len(&gs.version, 1, 12);
        self.push(&seg)?;
        self.gs_control = gs.control_number;
        self.sets_in_group = 0;
        self.state = State::Group;
        Ok(())
    }

    /// Writes an ST segment: `ST*{set_id}*{control_number}*{implementation}`. ST02 must be 4-9
    /// letters or digits, unique within the group (the caller's duty).
    pub fn begin_transaction(&mut self, set_id: &str, control_number: &str, implementation: &str) -> Result<(), X12Error> {
        self.require_state(State::Group, "begin_transaction")?;
        if !(4..=9).contains(&control_number.len()) || !control_number.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(envelope("ST02", format!("control number {control_number:?} must be 4-9 letters or digits")));
        }
        let seg = Segment::new("ST").el_len(set_id, 3, 3).el(control_number).el_len(implementation, 1, 35);
        self.push(&seg)?;
        self.st_control = control_number.to_owned();
        self.segments_in_set = 1;
        self.state = State::Transaction;
        Ok(())
    }

    /// Writes the SE segment with the segment count (ST and SE included).
    pub fn end_transaction(&mut self) -> Result<TransactionSummary, X12Error> {
        self.require_state(State::Transaction, "end_transaction")?;
        let count = self.segments_in_set + 1;
        let seg = Segment::new("SE").el(count.to_string()).el(&self.st_control);
        self.push(&seg)?;
        let summary = TransactionSummary { control_number: std::mem::take(&mut self.st_control), segment_count: count };
        self.summaries.push(summary.clone());
        self.sets_in_group += 1;
        self.segments_in_set = 0;
        self.state = State::Group;
        Ok(summary)
    }

    /// Writes the GE segment with the number of transaction sets; a group needs at least one.
    pub fn end_group(&mut self) -> Result<(), X12Error> {
        self.require_state(State::Group, "end_group")?;
        if self.sets_in_group == 0 {
            return Err(envelope("GE01", "a functional group needs at least one transaction set"));
        }
        let seg = Segment::new("GE").el(self.sets_in_group.to_string()).el(self.gs_control.to_string());
        self.push(&seg)?;
        self.groups_in_interchange += 1;
        self.state = State::Interchange;
        Ok(())
    }

    /// Writes the IEA segment with the number of functional groups; an interchange needs at
    /// least one.
    pub fn end_interchange(&mut self) -> Result<(), X12Error> {
        self.require_state(State::Interchange, "end_interchange")?;
        if self.groups_in_interchange == 0 {
            return Err(envelope("IEA01", "an interchange needs at least one functional group"));
        }
        let seg = Segment::new("IEA").el(self.groups_in_interchange.to_string()).el(format!("{:09}", self.isa_control));
        self.push(&seg)?;
        self.state = State::Idle;
        Ok(())
    }

    /// The transaction sets written so far.
    pub fn summaries(&self) -> &[TransactionSummary] {
        &self.summaries
    }

    /// The finished document; every envelope must be closed.
    pub fn finish(self) -> Result<String, X12Error> {
        self.require_state(State::Idle, "finish")?;
        if self.out.is_empty() {
            return Err(envelope("finish", "nothing was written"));
        }
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn at(y: i32, m: u32, d: u32, h: u32, min: u32) -> Result<NaiveDateTime, Box<dyn std::error::Error>> {
        let date = NaiveDate::from_ymd_opt(y, m, d).ok_or("bad date")?;
        Ok(date.and_hms_opt(h, min, 0).ok_or("bad time")?)
    }

    fn isa(control: u32) -> Result<IsaHeader, Box<dyn std::error::Error>> {
        Ok(IsaHeader {
            sender_qualifier: "ZZ".into(),
            sender_id: "SENDER".into(),
            receiver_qualifier: "ZZ".into(),
            receiver_id: "RECEIVER".into(),
            created: at(2025, 3, 4, 9, 5)?,
            control_number: control,
            ack_requested: false,
            usage: Usage::Test,
        })
    }

    fn gs() -> Result<GsHeader, Box<dyn std::error::Error>> {
        Ok(GsHeader {
            functional_id: "HC".into(),
            sender_code: "SENDER".into(),
            receiver_code: "RECEIVER".into(),
            created: at(2025, 3, 4, 9, 5)?,
            control_number: 17,
            version: "005010X222A1".into(),
        })
    }

    #[test]
    fn money_formats_as_r_type() {
        assert_eq!(money(0), "0");
        assert_eq!(money(5), "0.05");
        assert_eq!(money(1234), "12.34");
        assert_eq!(money(-250), "-2.5");
        assert_eq!(money(100_000), "1000");
        assert_eq!(money(12_000), "120");
        assert_eq!(money(-550), "-5.5");
        assert_eq!(money(12_345), "123.45");
        assert_eq!(money(i64::MIN), "-92233720368547758.08");
    }

    #[test]
    fn dates_and_times() -> TestResult {
        let t = at(2025, 1, 9, 7, 3)?;
        assert_eq!(d8(t.date())?, "20250109");
        assert_eq!(hhmm(t.time()), "0703");
        assert_eq!(rd8(t.date(), t.date())?, "20250109-20250109");
        let later = NaiveDate::from_ymd_opt(2025, 2, 1).ok_or("bad date")?;
        assert!(rd8(later, t.date()).is_err());
        Ok(())
    }

    #[test]
    fn isa_is_exactly_106_characters() -> TestResult {
        let mut w = X12Writer::new(Delimiters::readable())?;
        w.begin_interchange(&isa(42)?)?;
        let line = w.out.lines().next().ok_or("no ISA")?;
        assert_eq!(line.len(), 106);
        assert_eq!(line, "ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *250304*0905*^*00501*000000042*0*T*:~");
        Ok(())
    }

    #[test]
    fn isa_control_number_range_is_checked() -> TestResult {
        let mut w = X12Writer::new(Delimiters::default())?;
        assert!(matches!(w.begin_interchange(&isa(0)?), Err(X12Error::Envelope { ref field, .. }) if field == "ISA13"));
        assert!(w.begin_interchange(&isa(1_000_000_000)?).is_err());
        assert!(w.begin_interchange(&isa(999_999_999)?).is_ok());
        Ok(())
    }

    #[test]
    fn envelope_counts_are_exact() -> TestResult {
        let mut w = X12Writer::new(Delimiters::readable())?;
        w.begin_interchange(&isa(7)?)?;
        w.begin_group(&gs()?)?;
        w.begin_transaction("837", "0001", "005010X222A1")?;
        w.seg("BHT").el("0019").el("00").el("REF1").el("20250304").el("0905").el("CH").end()?;
        w.seg("NM1").el("41").el("2").el("ACME").empties(4).el("46").el("X1").end()?;
        let summary = w.end_transaction()?;
        assert_eq!(summary, TransactionSummary { control_number: "0001".into(), segment_count: 4 });
        w.begin_transaction("837", "0002", "005010X222A1")?;
        w.seg("BHT").el("0019").end()?;
        w.end_transaction()?;
        w.end_group()?;
        w.end_interchange()?;
        let text = w.finish()?;
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"SE*4*0001~"));
        assert!(lines.contains(&"SE*3*0002~"));
        assert!(lines.contains(&"GE*2*17~"));
        assert_eq!(lines.last(), Some(&"IEA*1*000000007~"));
        Ok(())
    }

    #[test]
    fn envelopes_must_nest() -> TestResult {
        let mut w = X12Writer::new(Delimiters::default())?;
        assert!(w.seg("BHT").el("0019").end().is_err());
        assert!(w.begin_group(&gs()?).is_err());
        w.begin_interchange(&isa(1)?)?;
        assert!(w.end_interchange().is_err(), "no group yet");
        w.begin_group(&gs()?)?;
        assert!(w.end_group().is_err(), "no transaction yet");
        assert!(w.begin_transaction("837", "123", "X").is_err(), "ST02 too short");
        assert!(w.begin_transaction("837", "1234567890", "X").is_err(), "ST02 too long");
        w.begin_transaction("837", "123456789", "X")?;
        assert!(w.seg("SE").el("1").end().is_err());
        Ok(())
    }

    #[test]
    fn delimiter_in_value_names_the_element() -> TestResult {
        let d = Delimiters::default();
        let err = Segment::new("NM1").el("85").el("2").el("SMITH*JONES").render(&d).err().ok_or("accepted a delimiter")?;
        assert_eq!(
            err,
            X12Error::Value {
                segment: "NM1".into(),
                element: 3,
                component: None,
                problem: "the value contains the element separator '*'".into()
            }
        );
        assert!(err.to_string().starts_with("NM1-03: "), "{err}");

        let err = Segment::new("SV1").comp(&["HC", "90834:95"]).render(&d).err().ok_or("accepted a delimiter")?;
        assert!(err.to_string().starts_with("SV1-01-2: "), "{err}");
        assert!(err.to_string().contains("component separator"), "{err}");

        let err = Segment::new("N3").el("1 MAIN~ST").render(&d).err().ok_or("accepted a delimiter")?;
        assert!(err.to_string().contains("N3-01") && err.to_string().contains("segment terminator"), "{err}");
        let err = Segment::new("N3").el("A^B").render(&d).err().ok_or("accepted a delimiter")?;
        assert!(err.to_string().contains("repetition separator"), "{err}");
        let err = Segment::new("N3").el("caf\u{e9}").render(&d).err().ok_or("accepted non-ASCII")?;
        assert!(err.to_string().contains("printable ASCII"), "{err}");
        let err = Segment::new("N3").el("a\tb").render(&d).err().ok_or("accepted a tab")?;
        assert!(err.to_string().starts_with("N3-01"), "{err}");
        Ok(())
    }

    #[test]
    fn trailing_empties_are_trimmed() -> TestResult {
        let d = Delimiters::default();
        assert_eq!(Segment::new("NM1").el("IL").el("1").el("DOE").empties(4).opt(None::<&str>).el("").render(&d)?, "NM1*IL*1*DOE~");
        assert_eq!(Segment::new("HL").el("1").empty().el("20").el("1").render(&d)?, "HL*1**20*1~");
        assert_eq!(Segment::new("SV1").comp(&["HC", "90834", "", "", ""]).el("120").render(&d)?, "SV1*HC:90834*120~");
        assert_eq!(Segment::new("SV1").comp(&["HC", "", "95"]).render(&d)?, "SV1*HC::95~");
        assert_eq!(Segment::new("X1").el("A").comp(&["", ""]).render(&d)?, "X1*A~");
        assert!(Segment::new("NM1").empties(3).render(&d).is_err(), "a segment with no data");
        Ok(())
    }

    #[test]
    fn lengths_and_ids_are_checked() -> TestResult {
        let d = Delimiters::default();
        let err = Segment::new("CLM").el_len("X".repeat(21), 1, 20).render(&d).err().ok_or("accepted 21 chars")?;
        assert!(err.to_string().starts_with("CLM-01: "), "{err}");
        assert!(Segment::new("CLM").el_len("", 1, 20).render(&d).is_err());
        assert!(Segment::new("nm1").el("A").render(&d).is_err());
        assert!(Segment::new("NM12").el("A").render(&d).is_err());
        Ok(())
    }

    #[test]
    fn delimiters_are_validated() {
        assert!(Delimiters::default().validate().is_ok());
        assert!(Delimiters { component: b'*', ..Delimiters::default() }.validate().is_err());
        assert!(Delimiters { element: b'A', ..Delimiters::default() }.validate().is_err());
        assert!(Delimiters { segment_suffix: "x", ..Delimiters::default() }.validate().is_err());
        assert!(X12Writer::new(Delimiters { repetition: b' ', ..Delimiters::default() }).is_err());
    }
}
