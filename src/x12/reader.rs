//! A streaming X12 reader: segments, elements, components and repetitions, with the envelopes
//! (ISA/IEA, GS/GE, ST/SE) checked on the way. Syntax only: no implementation-guide words.
//!
//! ```text
//! let mut r = X12Reader::new(BufReader::new(File::open(path)?));
//! while let Some(seg) = r.next_segment() {
//!     let seg = seg?;                  // Err only for a fatal problem; reading then stops
//!     if seg.id() == "CLP" {
//!         paid += parse_cents(seg.element(4)).unwrap_or(0);
//!     }
//! }
//! for f in r.findings() {
//!     eprintln!("{f}");                // segment 57 (SE): SE01 says 40 segments, the transaction has 41
//! }
//! ```
//!
//! - **Streaming.** The input is read in 64 KiB chunks, checked as UTF-8 once as it is read,
//!   into one text buffer that grows only to the longest segment (at most [`MAX_SEGMENT_LEN`]);
//!   a [`Segment`] borrows from it, so reading allocates nothing per segment. Bytes that are not
//!   UTF-8 read as U+FFFD, and the segment holding them is reported. [`read_all`] and
//!   [`X12Reader::into_owned_segments`] give owned [`OwnedSegment`]s for tests and small files.
//! - **Delimiters** come from each ISA: the element separator is the byte after `ISA`, the
//!   component separator is ISA16, the segment terminator the byte after ISA16, the repetition
//!   separator ISA11 (when ISA11 is a letter, digit or space, as the `U` of 4010, repetitions are
//!   not split). Any ASCII symbol, CR or LF may be used; a file may hold many interchanges,
//!   each with its own delimiters.
//! - **Tolerant framing.** A UTF-8 byte order mark (also in front of a later interchange),
//!   CR/LF and other white space between segments, and white space before a segment id are
//!   skipped; UTF-16 input is decoded; an ISA whose fields are trimmed is read by its
//!   separators (and reported).
//! - **Findings.** Envelope problems (ISA13 ≠ IEA02, IEA01, GS06 ≠ GE02, GE01, ST02 ≠ SE02,
//!   SE01, segments outside an envelope, a missing IEA/GE/SE) and tolerated framing are
//!   collected in [`X12Reader::findings`] while reading goes on. Only problems that stop reading
//!   (no ISA, a truncated ISA, unusable delimiters, X12 4010, a segment longer than
//!   [`MAX_SEGMENT_LEN`], an I/O error) are returned as `Err`. Each names the segment number
//!   (1-based in the input), the segment id and, where there is one, the element.

use std::io::{self, Read};

use super::writer::Delimiters;

/// The longest segment accepted, in bytes. A longer one is fatal: the segment terminator is
/// most likely wrong.
pub const MAX_SEGMENT_LEN: usize = 1 << 20;

/// How many findings a reader keeps; further ones are only counted
/// ([`X12Reader::findings_dropped`]).
pub const MAX_FINDINGS: usize = 1000;

/// Bytes read from the input at a time.
const CHUNK: usize = 64 * 1024;
/// An ISA with fixed-width fields, terminator included.
const ISA_LEN: usize = 106;
/// The fixed widths of ISA01..ISA16.
const ISA_WIDTHS: [usize; 16] = [2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1];
/// How far to look for the 16 ISA element separators before giving up.
const MAX_ISA_LEN: usize = 512;
const UNSUPPORTED_4010: &str = "X12 4010 is not supported; send 5010 (005010...)";
const UTF8_BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// How bad a [`ReadError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Tolerated framing that a strict reader would refuse (trimmed white space, UTF-16, a
    /// missing final terminator, ISA11 that is no repetition separator). Reading goes on.
    Warning,
    /// An envelope or syntax error (wrong count or control number, a segment outside its
    /// envelope, a missing trailer, a bad segment id). Reading goes on.
    Error,
    /// Reading cannot go on; returned as `Err` by [`X12Reader::next_segment`].
    Fatal,
}

/// A problem found while reading, located by segment number, segment id and element.
///
/// Displayed as `segment 57 (SE): SE01 says 40 segments, the transaction has 41`, or
/// `input: ...` for a problem of the input as a whole (segment 0).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", location(*segment, id))]
pub struct ReadError {
    /// The segment number, 1-based in the input (ISA included); 0 for the input as a whole.
    pub segment: usize,
    /// The segment id, e.g. `SE` (escaped and shortened when it is not a valid id).
    pub id: String,
    /// The element position, e.g. `SE01`, where the problem is in one element.
    pub element: Option<String>,
    /// What is wrong, in words (element position included, e.g. `SE01 says ...`).
    pub message: String,
    /// Whether reading went on.
    pub severity: Severity,
}

fn location(segment: usize, id: &str) -> String {
    match (segment, id) {
        (0, _) => "input: ".to_owned(),
        (_, "") => format!("segment {segment} (no id): "),
        _ => format!("segment {segment} ({id}): "),
    }
}

impl ReadError {
    fn new(severity: Severity, segment: usize, id: &str, element: Option<&str>, message: impl Into<String>) -> Self {
        Self { segment, id: shown_id(id), element: element.map(str::to_owned), message: message.into(), severity }
    }

    /// True when reading stopped because of this problem.
    pub fn is_fatal(&self) -> bool {
        self.severity == Severity::Fatal
    }
}

/// A segment id as shown in messages: escaped, at most 12 characters.
fn shown_id(id: &str) -> String {
    if valid_id(id) { id.to_owned() } else { id.escape_debug().take(12).collect() }
}

#[inline]
fn valid_id(id: &str) -> bool {
    (2..=3).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        && id.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
}

fn io_fatal(segment: usize, e: &io::Error) -> ReadError {
    ReadError::new(Severity::Fatal, segment, "", None, format!("reading the input failed: {e}"))
}

/// The largest amount read, in cents ($10,000,000,000.00): far above any claim or payment, and
/// small enough that sums over millions of amounts stay exact in `i64`.
pub const MAX_CENTS: i64 = 1_000_000_000_000;

/// Parses an X12 decimal (`R`) value such as `1922.86`, `-510.25`, `72232` or `.5` into integer
/// cents. `None` when it is not a number, is beyond ±[`MAX_CENTS`], or has non-zero digits beyond
/// the cents.
#[inline]
pub fn parse_cents(value: &str) -> Option<i64> {
    // One pass over the bytes: this runs for every amount of every claim of an 835.
    let graphic = |b: Option<&u8>| b.is_some_and(u8::is_ascii_graphic);
    let t = if graphic(value.as_bytes().first()) && graphic(value.as_bytes().last()) { value } else { value.trim() };
    let (negative, digits) = match t.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        all => (false, all),
    };
    let mut value: i64 = 0;
    let mut seen_digit = false;
    // None before the point, then how many fraction digits were read.
    let mut fraction: Option<u8> = None;
    for &b in digits {
        match (b, fraction) {
            (b'0'..=b'9', None) => {
                value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
                seen_digit = true;
            }
            (b'0'..=b'9', Some(n)) => {
                if n < 2 {
                    value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
                    fraction = Some(n + 1);
                } else if b != b'0' {
                    return None;
                }
                seen_digit = true;
            }
            (b'.', None) => fraction = Some(0),
            _ => return None,
        }
        if value > MAX_CENTS {
            return None;
        }
    }
    if !seen_digit {
        return None;
    }
    let scale = match fraction.unwrap_or(0) {
        0 => 100,
        1 => 10,
        _ => 1,
    };
    let value = value.checked_mul(scale)?;
    if value > MAX_CENTS {
        return None;
    }
    Some(if negative { -value } else { value })
}

/// The delimiters of the current interchange, as the reader uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seps {
    element: u8,
    component: u8,
    /// `None` when ISA11 is not a usable separator.
    repetition: Option<u8>,
    /// ISA11 as found (first byte).
    isa11: u8,
    segment: u8,
    /// Line break seen after the ISA's terminator.
    suffix: &'static str,
}

/// Part `k` (0-based) of `s` split on the ASCII byte `sep`, `""` when absent. A byte loop: the
/// parts are a few bytes long, too short for a searcher to pay for its set-up.
#[inline]
fn nth_part(s: &str, sep: u8, k: usize) -> &str {
    let mut start = 0;
    let mut part = 0;
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b == sep {
            if part == k {
                return s.get(start..i).unwrap_or("");
            }
            part += 1;
            start = i + 1;
        }
    }
    if part == k { s.get(start..).unwrap_or("") } else { "" }
}

/// The parts of a string split on an ASCII separator byte (the whole string once when there is
/// no separator). A byte loop like [`nth_part`]: parts are short.
#[derive(Debug, Clone)]
struct Parts<'a> {
    rest: Option<&'a str>,
    sep: Option<u8>,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        match self.sep.and_then(|sep| s.bytes().position(|b| b == sep)) {
            Some(i) => {
                self.rest = s.get(i + 1..);
                s.get(..i)
            }
            None => self.rest.take(),
        }
    }
}

/// One segment, borrowed from the reader's buffer until the next call to
/// [`X12Reader::next_segment`]. Positions are 1-based like X12 (`element(1)` is `CLM01`);
/// anything absent reads as `""`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    text: &'a str,
    /// Byte offset of each element in `text`; `starts[0]` (always 0) is the id.
    starts: &'a [usize],
    component: u8,
    repetition: Option<u8>,
    number: usize,
    position_in_set: Option<usize>,
}

impl<'a> Segment<'a> {
    /// The segment id, e.g. `CLM`.
    #[inline]
    pub fn id(&self) -> &'a str {
        self.element(0)
    }

    /// The segment number: 1-based position in the input, ISA included.
    #[inline]
    pub fn number(&self) -> usize {
        self.number
    }

    /// The 1-based position inside the current transaction set (ST is 1, SE is SE01 when the
    /// count is right); `None` outside ST..SE (ISA, GS, GE, IEA).
    pub fn position_in_set(&self) -> Option<usize> {
        self.position_in_set
    }

    /// The segment as read, without its terminator.
    pub fn text(&self) -> &'a str {
        self.text
    }

    /// How many elements follow the id (trailing empty elements that were written count).
    pub fn element_count(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }

    /// Element `i` (1-based; 0 is the id), `""` when absent.
    #[inline]
    pub fn element(&self, i: usize) -> &'a str {
        let Some(&start) = self.starts.get(i) else { return "" };
        let end = self.starts.get(i + 1).map_or(self.text.len(), |next| next.saturating_sub(1));
        self.text.get(start..end).unwrap_or("")
    }

    /// The elements after the id, in order.
    pub fn elements(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let s = *self;
        (1..=s.element_count()).map(move |i| s.element(i))
    }

    /// The repetitions of element `i`, split on the repetition separator (the whole element
    /// once when the interchange has none); one `""` when absent.
    pub fn repetitions(&self, i: usize) -> impl Iterator<Item = &'a str> + use<'a> {
        Parts { rest: Some(self.element(i)), sep: self.repetition }
    }

    /// Repetition `r` (1-based) of element `i`, `""` when absent (a byte search for the
    /// separator: this is on the path of every component read).
    #[inline]
    pub fn repetition(&self, i: usize, r: usize) -> &'a str {
        let e = self.element(i);
        match (r.checked_sub(1), self.repetition) {
            (None, _) | (Some(1..), None) => "",
            (Some(0), None) => e,
            (Some(k), Some(sep)) => nth_part(e, sep, k),
        }
    }

    /// The components of element `i` (of its first repetition), split on the component
    /// separator; one `""` when absent.
    pub fn components(&self, i: usize) -> impl Iterator<Item = &'a str> + use<'a> {
        Parts { rest: Some(self.repetition(i, 1)), sep: Some(self.component) }
    }

    /// Component `j` (1-based) of element `i` (of its first repetition), `""` when absent:
    /// `component(1, 2)` of `SV1*HC:90834:95` is `90834`.
    #[inline]
    pub fn component(&self, i: usize, j: usize) -> &'a str {
        self.repetition_component(i, 1, j)
    }

    /// Component `j` of repetition `r` of element `i` (all 1-based), `""` when absent.
    #[inline]
    pub fn repetition_component(&self, i: usize, r: usize, j: usize) -> &'a str {
        match j.checked_sub(1) {
            Some(k) => nth_part(self.repetition(i, r), self.component, k),
            None => "",
        }
    }

    /// The component separator (ISA16) of the segment's interchange.
    pub fn component_separator(&self) -> u8 {
        self.component
    }

    /// The repetition separator (ISA11) of the segment's interchange, `None` when ISA11 is
    /// not a separator (e.g. `U`).
    pub fn repetition_separator(&self) -> Option<u8> {
        self.repetition
    }

    /// An owned copy.
    pub fn to_owned_segment(&self) -> OwnedSegment {
        OwnedSegment {
            text: self.text.to_owned(),
            starts: self.starts.to_vec(),
            component: self.component,
            repetition: self.repetition,
            number: self.number,
            position_in_set: self.position_in_set,
        }
    }
}

/// An owned [`Segment`]; [`OwnedSegment::as_segment`] gives all the accessors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedSegment {
    text: String,
    starts: Vec<usize>,
    component: u8,
    repetition: Option<u8>,
    number: usize,
    position_in_set: Option<usize>,
}

impl OwnedSegment {
    /// A borrowed view with every accessor of [`Segment`].
    pub fn as_segment(&self) -> Segment<'_> {
        Segment {
            text: &self.text,
            starts: &self.starts,
            component: self.component,
            repetition: self.repetition,
            number: self.number,
            position_in_set: self.position_in_set,
        }
    }

    /// The segment id.
    pub fn id(&self) -> &str {
        self.as_segment().id()
    }

    /// The segment number (1-based in the input).
    pub fn number(&self) -> usize {
        self.number
    }

    /// The 1-based position inside the transaction set, `None` outside ST..SE.
    pub fn position_in_set(&self) -> Option<usize> {
        self.position_in_set
    }

    /// The segment as read, without its terminator.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Element `i` (1-based; 0 is the id), `""` when absent.
    pub fn element(&self, i: usize) -> &str {
        self.as_segment().element(i)
    }

    /// Component `j` of element `i` (1-based), `""` when absent.
    pub fn component(&self, i: usize, j: usize) -> &str {
        self.as_segment().component(i, j)
    }

    /// How many elements follow the id.
    pub fn element_count(&self) -> usize {
        self.starts.len().saturating_sub(1)
    }
}

/// Everything read from a small input by [`read_all`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// The segments in order.
    pub segments: Vec<OwnedSegment>,
    /// The non-fatal findings (warnings and errors), at most [`MAX_FINDINGS`].
    pub findings: Vec<ReadError>,
}

/// Reads a whole input held in memory; `Err` only for a fatal problem.
pub fn read_all(bytes: &[u8]) -> Result<Document, ReadError> {
    let mut reader = X12Reader::new(bytes);
    let mut segments = Vec::new();
    while let Some(seg) = reader.next_segment() {
        segments.push(seg?.to_owned_segment());
    }
    Ok(Document { segments, findings: reader.take_findings() })
}

/// Decodes UTF-16 input to UTF-8 on the fly.
#[derive(Debug)]
struct Utf16 {
    big_endian: bool,
    raw: Vec<u8>,
    raw_len: usize,
    high: Option<u16>,
    out: Vec<u8>,
    out_pos: usize,
    eof: bool,
}

fn copy_prefix(dst: &mut [u8], src: &[u8]) -> usize {
    let n = dst.len().min(src.len());
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
    n
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut tmp = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
}

fn push_unit(out: &mut Vec<u8>, high: &mut Option<u16>, unit: u16) {
    if let Some(h) = high.take() {
        if (0xDC00..0xE000).contains(&unit) {
            let code = 0x10000 + ((u32::from(h) - 0xD800) << 10) + (u32::from(unit) - 0xDC00);
            push_char(out, char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
            return;
        }
        push_char(out, char::REPLACEMENT_CHARACTER);
    }
    if (0xD800..0xDC00).contains(&unit) {
        *high = Some(unit);
    } else {
        push_char(out, char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER));
    }
}

impl Utf16 {
    fn new(big_endian: bool, pending: &[u8]) -> Self {
        let mut raw = vec![0; CHUNK.max(pending.len() + 2)];
        let raw_len = copy_prefix(&mut raw, pending);
        Self { big_endian, raw, raw_len, high: None, out: Vec::with_capacity(CHUNK * 2), out_pos: 0, eof: false }
    }

    fn read<R: Read>(&mut self, inner: &mut R, dst: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.out_pos < self.out.len() {
                let n = copy_prefix(dst, self.out.get(self.out_pos..).unwrap_or_default());
                self.out_pos += n;
                return Ok(n);
            }
            self.out.clear();
            self.out_pos = 0;
            if self.eof {
                if self.raw_len > 0 || self.high.take().is_some() {
                    self.raw_len = 0;
                    push_char(&mut self.out, char::REPLACEMENT_CHARACTER);
                    continue;
                }
                return Ok(0);
            }
            if self.raw_len < 2 {
                match inner.read(self.raw.get_mut(self.raw_len..).unwrap_or_default()) {
                    Ok(0) => {
                        self.eof = true;
                        continue;
                    }
                    Ok(n) => self.raw_len = (self.raw_len + n).min(self.raw.len()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let whole = self.raw_len / 2 * 2;
            for pair in self.raw.get(..whole).unwrap_or_default().chunks_exact(2) {
                let bytes = [pair.first().copied().unwrap_or(0), pair.get(1).copied().unwrap_or(0)];
                let unit = if self.big_endian { u16::from_be_bytes(bytes) } else { u16::from_le_bytes(bytes) };
                push_unit(&mut self.out, &mut self.high, unit);
            }
            if self.raw_len > whole {
                let odd = self.raw.get(whole).copied().unwrap_or(0);
                if let Some(first) = self.raw.first_mut() {
                    *first = odd;
                }
            }
            self.raw_len -= whole;
        }
    }
}

/// The input, decoded into one text buffer; the unread part is `text[start..]`.
///
/// Bytes are checked as UTF-8 once, as they are read, so a segment's text is a slice of the
/// buffer with no check of its own (about a tenth of the time of reading an 835 otherwise).
/// Bytes that are not UTF-8 are replaced by U+FFFD where they are read, and the places are
/// kept so that the segment holding one is reported.
#[derive(Debug)]
struct Input<R> {
    inner: R,
    utf16: Option<Utf16>,
    /// Bytes read and not yet decoded: the head of the input until it is sniffed, then at most
    /// an incomplete UTF-8 sequence at the end of a read.
    raw: Vec<u8>,
    raw_len: usize,
    text: String,
    start: usize,
    /// The inner reader is exhausted.
    eof: bool,
    /// How many bytes were dropped from the front of `text` so far.
    dropped: usize,
    /// Where (in `dropped + index` terms) a U+FFFD stands for bytes that were not UTF-8.
    replaced: std::collections::VecDeque<usize>,
}

impl<R: Read> Input<R> {
    fn new(inner: R) -> Self {
        Input {
            inner,
            utf16: None,
            raw: Vec::new(),
            raw_len: 0,
            text: String::new(),
            start: 0,
            eof: false,
            dropped: 0,
            replaced: std::collections::VecDeque::new(),
        }
    }

    fn avail(&self) -> &[u8] {
        self.text.as_bytes().get(self.start..).unwrap_or_default()
    }

    fn len(&self) -> usize {
        self.text.len().saturating_sub(self.start)
    }

    fn consume(&mut self, n: usize) {
        self.start = self.start.saturating_add(n).min(self.text.len());
    }

    /// The first `len` unread bytes as text; `None` when they do not end on a character
    /// boundary (only where a fixed-width ISA cuts a character).
    fn unread_text(&self, len: usize) -> Option<&str> {
        self.text.get(self.start..self.start.checked_add(len)?)
    }

    /// Whether the first `len` unread bytes hold a U+FFFD that replaced bytes that were not
    /// UTF-8 (forgetting the places up to there).
    fn take_replaced(&mut self, len: usize) -> bool {
        let (from, to) = (self.dropped + self.start, self.dropped + self.start + len);
        let mut found = false;
        while let Some(&at) = self.replaced.front() {
            if at >= to {
                break;
            }
            found |= at >= from;
            self.replaced.pop_front();
        }
        found
    }

    /// Reads raw bytes into `raw` (through the UTF-16 decoder once there is one); 0 at the end.
    fn read_raw(&mut self) -> io::Result<usize> {
        if self.raw.len() < CHUNK {
            self.raw.resize(CHUNK, 0);
        }
        loop {
            let dst = self.raw.get_mut(self.raw_len..).unwrap_or_default();
            let got = match &mut self.utf16 {
                Some(decoder) => decoder.read(&mut self.inner, dst),
                None => self.inner.read(dst),
            };
            match got {
                Ok(n) => {
                    self.raw_len = (self.raw_len + n).min(self.raw.len());
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Looks at the first bytes before any is decoded: UTF-16 (with or without a byte order
    /// mark) is decoded from then on; the answer says which, for a warning.
    fn sniff(&mut self) -> io::Result<Option<&'static str>> {
        while self.raw_len < 4 && self.read_raw()? > 0 {}
        let head = self.raw.get(..self.raw_len).unwrap_or_default();
        let utf16 = match head {
            [0xFF, 0xFE, ..] => Some((false, 2, "little-endian with a byte order mark")),
            [0xFE, 0xFF, ..] => Some((true, 2, "big-endian with a byte order mark")),
            [a, 0, b, 0, ..] if *a != 0 && *b != 0 => Some((false, 0, "little-endian, no byte order mark")),
            [0, a, 0, b, ..] if *a != 0 && *b != 0 => Some((true, 0, "big-endian, no byte order mark")),
            _ => None,
        };
        let Some((big_endian, skip, what)) = utf16 else { return Ok(None) };
        self.utf16 = Some(Utf16::new(big_endian, head.get(skip..).unwrap_or_default()));
        self.raw_len = 0;
        Ok(Some(what))
    }

    /// Decodes `raw` onto the end of `text`, keeping an incomplete UTF-8 sequence at its end
    /// for the next read unless `last`.
    fn decode(&mut self, last: bool) {
        let Input { raw, raw_len, text, replaced, dropped, .. } = self;
        let mut rest = raw.get(..*raw_len).unwrap_or_default();
        loop {
            match std::str::from_utf8(rest) {
                Ok(valid) => {
                    text.push_str(valid);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, bad) = rest.split_at(e.valid_up_to());
                    text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        None if !last => {
                            rest = bad;
                            break;
                        }
                        len => {
                            replaced.push_back(*dropped + text.len());
                            text.push(char::REPLACEMENT_CHARACTER);
                            rest = bad.get(len.unwrap_or(bad.len())..).unwrap_or_default();
                        }
                    }
                }
            }
        }
        let keep = rest.len();
        raw.copy_within(raw_len.saturating_sub(keep)..*raw_len, 0);
        *raw_len = keep;
    }

    /// Reads and decodes more text after the unread text, first dropping what was read.
    /// `false` at the end of the input.
    fn fill(&mut self) -> io::Result<bool> {
        if self.start > 0 && self.text.is_char_boundary(self.start) {
            self.text.drain(..self.start);
            self.dropped += self.start;
            self.start = 0;
        }
        if self.text.capacity() == 0 {
            self.text.reserve(2 * CHUNK);
        }
        // Four bytes always decode to something (an incomplete UTF-8 sequence has at most
        // three), so each turn reads or makes progress.
        let before = self.text.len();
        while self.text.len() == before {
            if !self.eof && self.raw_len < 4 && self.read_raw()? == 0 {
                self.eof = true;
            }
            if self.eof && self.raw_len == 0 {
                return Ok(false);
            }
            self.decode(self.eof);
        }
        Ok(true)
    }

    /// Fills until at least `n` bytes are unread or the input ends.
    fn ensure(&mut self, n: usize) -> io::Result<()> {
        while self.len() < n && self.fill()? {}
        Ok(())
    }
}

/// Pushes the offset after each `sep` in `segment` onto `starts`, eight bytes at a time.
/// Segments are some 35 bytes with an element every 6: measured on the whole 835 read
/// (`cargo bench --bench x12_read`), this is ~5% faster than a byte loop, and `memchr_iter`
/// (a searcher set up for each element) was slower than the byte loop.
fn push_element_starts(segment: &[u8], sep: u8, starts: &mut Vec<usize>) {
    const LOW7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
    let pattern = u64::from_le_bytes([sep; 8]);
    let mut words = segment.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let x = u64::from_le_bytes(<[u8; 8]>::try_from(word).unwrap_or_default()) ^ pattern;
        // The high bit of each byte that is zero in `x` (exactly those: no carry crosses a byte).
        let mut found = !(((x & LOW7) + LOW7) | x | LOW7);
        while found != 0 {
            starts.push(offset + (found.trailing_zeros() / 8) as usize + 1);
            found &= found - 1;
        }
        offset += 8;
    }
    for (i, &b) in words.remainder().iter().enumerate() {
        if b == sep {
            starts.push(offset + i + 1);
        }
    }
}

/// White space and padding skipped between segments.
fn is_filler(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0B | 0x0C | 0x00 | 0x1A)
}

/// Whether `b` may serve as a delimiter: an ASCII symbol, or CR/LF where `line_break_ok`.
fn usable_delimiter(b: u8, line_break_ok: bool) -> bool {
    if b == b'\r' || b == b'\n' {
        return line_break_ok;
    }
    b.is_ascii() && !b.is_ascii_alphanumeric() && b != b' ' && b != 0
}

#[derive(Debug, Default)]
struct Findings {
    list: Vec<ReadError>,
    dropped: usize,
}

impl Findings {
    fn push(&mut self, e: ReadError) {
        if self.list.len() < MAX_FINDINGS {
            self.list.push(e);
        } else {
            self.dropped += 1;
        }
    }
}

/// An open envelope: where it started, its control number and what it counts so far
/// (groups in an interchange, sets in a group, segments in a set).
#[derive(Debug)]
struct Open {
    number: usize,
    control: String,
    count: usize,
}

#[derive(Debug, Default)]
struct Envelope {
    isa: Option<Open>,
    gs: Option<Open>,
    st: Option<Open>,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 { format!("{n} {one}") } else { format!("{n} {many}") }
}

/// Control numbers match when equal, or, both being numbers, equal as numbers.
fn same_control(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if numeric(a) && numeric(b) { a.trim_start_matches('0') == b.trim_start_matches('0') } else { a == b }
}

impl Envelope {
    fn error(seg: &Segment<'_>, element: Option<&str>, message: String) -> ReadError {
        ReadError::new(Severity::Error, seg.number(), seg.id(), element, message)
    }

    fn before(at: Option<(usize, &str)>, last: usize) -> String {
        match at {
            Some((n, id)) => format!("segment {n} ({id}) comes first"),
            None => format!("the input ends after segment {last}"),
        }
    }

    fn close_st(&mut self, at: Option<(usize, &str)>, last: usize, f: &mut Findings) {
        if let Some(o) = self.st.take() {
            let msg = format!("transaction set {:?} has no SE: {}", o.control, Self::before(at, last));
            f.push(ReadError::new(Severity::Error, o.number, "ST", None, msg));
        }
    }

    fn close_gs(&mut self, at: Option<(usize, &str)>, last: usize, f: &mut Findings) {
        self.close_st(at, last, f);
        if let Some(o) = self.gs.take() {
            let msg = format!("functional group {:?} has no GE: {}", o.control, Self::before(at, last));
            f.push(ReadError::new(Severity::Error, o.number, "GS", None, msg));
        }
    }

    fn close_isa(&mut self, at: Option<(usize, &str)>, last: usize, f: &mut Findings) {
        self.close_gs(at, last, f);
        if let Some(o) = self.isa.take() {
            let msg = format!("interchange {:?} has no IEA: {}", o.control, Self::before(at, last));
            f.push(ReadError::new(Severity::Error, o.number, "ISA", None, msg));
        }
    }

    /// At the end of the input: every open envelope lacks its trailer.
    fn finish(&mut self, last: usize, f: &mut Findings) {
        self.close_isa(None, last, f);
    }

    /// Checks a count element (`SE01`, `GE01`, `IEA01`) against what was counted.
    fn check_count(seg: &Segment<'_>, el: &str, actual: usize, noun: (&str, &str), what: &str, f: &mut Findings) {
        let text = seg.element(1);
        match text.trim().parse::<usize>() {
            Ok(n) if n == actual => {}
            Ok(n) => {
                let msg = format!("{el} says {}, the {what} has {}", plural(n, noun.0, noun.1), actual);
                f.push(Self::error(seg, Some(el), msg));
            }
            Err(_) => {
                let msg = format!("{el} {text:?} is not a number (the {what} has {})", plural(actual, noun.0, noun.1));
                f.push(Self::error(seg, Some(el), msg));
            }
        }
    }

    /// Checks a trailer's control number (`SE02`, `GE02`, `IEA02`) against its header's.
    fn check_control(seg: &Segment<'_>, el: &str, header: &str, open: &Open, f: &mut Findings) {
        let text = seg.element(2);
        if !same_control(text, &open.control) {
            let msg = format!("{el} is {text:?}, {header} (segment {}) is {:?}", open.number, open.control);
            f.push(Self::error(seg, Some(el), msg));
        }
    }

    /// Tracks the envelopes; returns the segment's position in its transaction set.
    fn on_segment(&mut self, seg: &Segment<'_>, f: &mut Findings) -> Result<Option<usize>, ReadError> {
        let (n, id) = (seg.number(), seg.id());
        let here = Some((n, id));
        let last = n.saturating_sub(1);
        match id {
            "ISA" => {
                self.close_isa(here, last, f);
                Self::check_isa(seg, f)?;
                self.isa = Some(Open { number: n, control: seg.element(13).trim().to_owned(), count: 0 });
                Ok(None)
            }
            "IEA" => {
                self.close_gs(here, last, f);
                match self.isa.take() {
                    Some(o) => {
                        Self::check_count(seg, "IEA01", o.count, ("functional group", "functional groups"), "interchange", f);
                        Self::check_control(seg, "IEA02", "ISA13", &o, f);
                    }
                    None => f.push(Self::error(seg, None, "IEA without an open interchange (no ISA before it)".to_owned())),
                }
                Ok(None)
            }
            "GS" => {
                self.close_gs(here, last, f);
                let version = seg.element(8).trim();
                if version.starts_with("004010") {
                    let msg = format!("{UNSUPPORTED_4010}: GS08 is {version:?}");
                    return Err(ReadError::new(Severity::Fatal, n, id, Some("GS08"), msg));
                }
                match &mut self.isa {
                    Some(o) => o.count += 1,
                    None => f.push(Self::error(seg, None, "GS outside an interchange (no open ISA)".to_owned())),
                }
                self.gs = Some(Open { number: n, control: seg.element(6).trim().to_owned(), count: 0 });
                Ok(None)
            }
            "GE" => {
                self.close_st(here, last, f);
                match self.gs.take() {
                    Some(o) => {
                        Self::check_count(seg, "GE01", o.count, ("transaction set", "transaction sets"), "group", f);
                        Self::check_control(seg, "GE02", "GS06", &o, f);
                    }
                    None => f.push(Self::error(seg, None, "GE without an open functional group (no GS before it)".to_owned())),
                }
                Ok(None)
            }
            "ST" => {
                self.close_st(here, last, f);
                match &mut self.gs {
                    Some(o) => o.count += 1,
                    None => f.push(Self::error(seg, None, "ST outside a functional group (no open GS)".to_owned())),
                }
                self.st = Some(Open { number: n, control: seg.element(2).trim().to_owned(), count: 1 });
                Ok(Some(1))
            }
            "SE" => match self.st.take() {
                Some(o) => {
                    let count = o.count + 1;
                    Self::check_count(seg, "SE01", count, ("segment", "segments"), "transaction", f);
                    Self::check_control(seg, "SE02", "ST02", &o, f);
                    Ok(Some(count))
                }
                None => {
                    f.push(Self::error(seg, None, "SE without an open transaction set (no ST before it)".to_owned()));
                    Ok(None)
                }
            },
            _ => {
                if let Some(o) = &mut self.st {
                    o.count += 1;
                    Ok(Some(o.count))
                } else if id == "TA1" && self.isa.is_some() && self.gs.is_none() {
                    Ok(None)
                } else {
                    f.push(Self::error(seg, None, "segment outside a transaction set (ST/SE)".to_owned()));
                    Ok(None)
                }
            }
        }
    }

    fn check_isa(seg: &Segment<'_>, f: &mut Findings) -> Result<(), ReadError> {
        let version = seg.element(12).trim();
        if version == "00401" {
            let msg = format!("{UNSUPPORTED_4010}: ISA12 is {version:?}");
            return Err(ReadError::new(Severity::Fatal, seg.number(), "ISA", Some("ISA12"), msg));
        }
        if version != "00501" {
            f.push(Self::error(seg, Some("ISA12"), format!("ISA12 is {version:?}; only 00501 (5010) is read")));
        }
        let len = seg.text().len() + 1;
        if len != ISA_LEN {
            let wrong: Vec<String> = ISA_WIDTHS
                .iter()
                .enumerate()
                .filter_map(|(k, &want)| {
                    let got = seg.element(k + 1).len();
                    (got != want).then(|| format!("ISA{:02} has {got}, not {want}", k + 1))
                })
                .collect();
            let msg = format!("ISA is {len} characters, not {ISA_LEN} (its fields are fixed-width): {}", wrong.join("; "));
            f.push(Self::error(seg, None, msg));
        }
        if seg.repetition_separator().is_none() {
            let msg = format!(
                "ISA11 is {:?}, not a repetition separator (5010 expects a symbol such as '^'); repetitions are not split",
                seg.element(11)
            );
            f.push(ReadError::new(Severity::Warning, seg.number(), "ISA", Some("ISA11"), msg));
        }
        let control = seg.element(13);
        if control.len() != 9 || !control.bytes().all(|b| b.is_ascii_digit()) {
            f.push(Self::error(seg, Some("ISA13"), format!("ISA13 {control:?} is not a 9-digit control number")));
        }
        Ok(())
    }
}

/// Reads X12 segments one at a time from any [`Read`] (a file, an HTTP body, `&[u8]`; a
/// [`BufRead`](std::io::BufRead) works too, but the reader buffers by itself).
///
/// Memory stays bounded whatever the input size: one buffer (64 KiB, grown only to the longest
/// segment) and at most [`MAX_FINDINGS`] findings.
#[derive(Debug)]
pub struct X12Reader<R> {
    input: Input<R>,
    started: bool,
    done: bool,
    seps: Option<Seps>,
    /// Element offsets of the current segment.
    starts: Vec<usize>,
    /// Length of the current segment's text at `input.start`.
    seg_len: usize,
    /// Bytes to drop before the next segment (text and terminator).
    pending: usize,
    unterminated: bool,
    /// The current segment's text when it cuts a character (a fixed-width ISA can).
    lossy: String,
    /// The current segment holds bytes that were not UTF-8 (replaced by U+FFFD).
    use_lossy: bool,
    number: usize,
    last_id: String,
    envelope: Envelope,
    findings: Findings,
}

impl<R: Read> X12Reader<R> {
    /// A reader over `input`; nothing is read until the first [`X12Reader::next_segment`].
    pub fn new(input: R) -> Self {
        Self {
            input: Input::new(input),
            started: false,
            done: false,
            seps: None,
            starts: Vec::with_capacity(64),
            seg_len: 0,
            pending: 0,
            unterminated: false,
            lossy: String::new(),
            use_lossy: false,
            number: 0,
            last_id: String::new(),
            envelope: Envelope::default(),
            findings: Findings::default(),
        }
    }

    /// The next segment; `None` at the end of the input (after which the missing-trailer
    /// findings are in [`X12Reader::findings`]), `Some(Err)` once for a fatal problem, after
    /// which reading has stopped.
    pub fn next_segment(&mut self) -> Option<Result<Segment<'_>, ReadError>> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(true) => {}
            Ok(false) => {
                self.done = true;
                self.envelope.finish(self.number, &mut self.findings);
                return None;
            }
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        }
        // Split the segment, check its id and envelope. Only distinct fields are borrowed, so
        // the segment can borrow the buffer while findings and envelope are updated.
        let seps = self.seps.unwrap_or(Seps { element: b'*', component: b':', repetition: None, isa11: b' ', segment: b'~', suffix: "" });
        self.number += 1;
        self.use_lossy = self.input.take_replaced(self.seg_len);
        let text = match self.input.unread_text(self.seg_len) {
            Some(t) => t,
            None => {
                let bytes = self.input.avail().get(..self.seg_len).unwrap_or_default();
                self.lossy.clear();
                self.lossy.push_str(&String::from_utf8_lossy(bytes));
                self.use_lossy = true;
                self.lossy.as_str()
            }
        };
        self.starts.clear();
        self.starts.push(0);
        push_element_starts(text.as_bytes(), seps.element, &mut self.starts);
        let mut seg = Segment {
            text,
            starts: &self.starts,
            component: seps.component,
            repetition: seps.repetition,
            number: self.number,
            position_in_set: None,
        };
        let id = seg.id();
        if self.use_lossy {
            let msg = "the segment is not valid UTF-8 (or ASCII); the bad bytes read as U+FFFD";
            self.findings.push(ReadError::new(Severity::Warning, self.number, id, None, msg));
        }
        if !valid_id(id) {
            let msg = if id.is_empty() {
                format!("the segment has no id: it starts with {:?}", text.chars().take(24).collect::<String>())
            } else {
                format!("segment id {:?} is not 2-3 upper-case letters or digits", id.chars().take(12).collect::<String>())
            };
            self.findings.push(ReadError::new(Severity::Error, self.number, id, None, msg));
        }
        if self.unterminated {
            let msg = format!("the input ends inside this segment (no segment terminator {:?})", char::from(seps.segment));
            self.findings.push(ReadError::new(Severity::Warning, self.number, id, None, msg));
        }
        self.last_id.clear();
        self.last_id.push_str(id);
        match self.envelope.on_segment(&seg, &mut self.findings) {
            Ok(position) => {
                seg.position_in_set = position;
                Some(Ok(seg))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }

    /// The findings so far (warnings and errors; fatal problems are returned by
    /// [`X12Reader::next_segment`] instead), in the order found.
    pub fn findings(&self) -> &[ReadError] {
        &self.findings.list
    }

    /// Takes the findings so far, e.g. to report them while a long input is still being read.
    pub fn take_findings(&mut self) -> Vec<ReadError> {
        std::mem::take(&mut self.findings.list)
    }

    /// How many findings were not kept because [`MAX_FINDINGS`] were already held.
    pub fn findings_dropped(&self) -> usize {
        self.findings.dropped
    }

    /// The number of segments read so far.
    pub fn segments_read(&self) -> usize {
        self.number
    }

    /// The delimiters of the current interchange, once its ISA is read. `segment_suffix` is
    /// the line break seen after the ISA (`""`, `"\n"`, `"\r\n"` or `"\r"`), and `repetition` is
    /// ISA11 as found even when it is no separator (see [`Segment::repetition_separator`]).
    pub fn delimiters(&self) -> Option<Delimiters> {
        self.seps.map(|s| Delimiters {
            element: s.element,
            component: s.component,
            repetition: s.repetition.unwrap_or(s.isa11),
            segment: s.segment,
            segment_suffix: s.suffix,
        })
    }

    /// An iterator of owned segments (one allocation per segment).
    pub fn into_owned_segments(self) -> OwnedSegments<R> {
        OwnedSegments { reader: self }
    }

    /// Moves to the next segment; `false` at the end of the input.
    fn advance(&mut self) -> Result<bool, ReadError> {
        self.input.consume(self.pending);
        self.pending = 0;
        self.seg_len = 0;
        self.use_lossy = false;
        self.unterminated = false;
        if !self.started {
            self.started = true;
            self.sniff()?;
        }
        loop {
            if !self.skip_filler()? {
                if self.seps.is_none() {
                    return Err(ReadError::new(Severity::Fatal, 0, "", None, "the input is empty: no ISA segment"));
                }
                return Ok(false);
            }
            self.input.ensure(4).map_err(|e| io_fatal(self.number + 1, &e))?;
            let head = self.input.avail();
            let is_isa = head.starts_with(b"ISA")
                && head.get(3).is_some_and(|&b| !b.is_ascii_alphanumeric() && self.seps.is_none_or(|s| b != s.segment));
            if is_isa {
                self.read_isa()?;
            } else if let Some(seps) = self.seps {
                if !self.read_until(seps.segment)? {
                    continue;
                }
            } else {
                return Err(no_isa(head));
            }
            return Ok(true);
        }
    }

    /// Detects UTF-16 (decoded from then on, with a warning).
    fn sniff(&mut self) -> Result<(), ReadError> {
        if let Some(what) = self.input.sniff().map_err(|e| io_fatal(0, &e))? {
            let msg = format!("the input is UTF-16 ({what}); decoded, but X12 should be sent as ASCII or UTF-8");
            self.findings.push(ReadError::new(Severity::Warning, 0, "", None, msg));
        }
        Ok(())
    }

    /// Skips white space and byte order marks; `false` at the end of the input.
    fn skip_filler(&mut self) -> Result<bool, ReadError> {
        loop {
            let avail = self.input.avail();
            let skip = avail.iter().position(|&b| !is_filler(b)).unwrap_or(avail.len());
            self.input.consume(skip);
            if self.input.len() == 0 {
                if self.input.fill().map_err(|e| io_fatal(self.number + 1, &e))? {
                    continue;
                }
                return Ok(false);
            }
            if self.input.avail().first() == UTF8_BOM.first() {
                self.input.ensure(3).map_err(|e| io_fatal(self.number + 1, &e))?;
                if self.input.avail().starts_with(&UTF8_BOM) {
                    self.input.consume(3);
                    continue;
                }
            }
            return Ok(true);
        }
    }

    /// Reads up to the next `terminator`; `false` when the segment is empty (skipped).
    fn read_until(&mut self, terminator: u8) -> Result<bool, ReadError> {
        let mut scanned = 0;
        let (len, consume) = loop {
            let avail = self.input.avail();
            let found = memchr::memchr(terminator, avail.get(scanned..).unwrap_or_default());
            if let Some(i) = found
                && scanned + i <= MAX_SEGMENT_LEN
            {
                break (scanned + i, scanned + i + 1);
            }
            scanned = avail.len();
            if scanned > MAX_SEGMENT_LEN {
                let msg = format!(
                    "no segment terminator {:?} within {MAX_SEGMENT_LEN} bytes; the terminator is probably wrong",
                    char::from(terminator)
                );
                return Err(ReadError::new(Severity::Fatal, self.number + 1, &id_of(avail), None, msg));
            }
            if !self.input.fill().map_err(|e| io_fatal(self.number + 1, &e))? {
                self.unterminated = true;
                break (scanned, scanned);
            }
        };
        let text = self.input.avail().get(..len).unwrap_or_default();
        let trimmed = text.len() - text.iter().rev().take_while(|&&b| b == b'\r' || b == b'\n').count();
        if trimmed == 0 {
            self.input.consume(consume);
            let msg = format!("an empty segment (a lone terminator {:?}) follows; skipped", char::from(terminator));
            self.findings.push(ReadError::new(Severity::Warning, self.number, &self.last_id, None, msg));
            return Ok(false);
        }
        self.seg_len = trimmed;
        self.pending = consume;
        Ok(true)
    }

    /// Reads an ISA by its separators and takes the interchange's delimiters from it.
    fn read_isa(&mut self) -> Result<(), ReadError> {
        let number = self.number + 1;
        let fatal = |msg: String, element: Option<&str>| ReadError::new(Severity::Fatal, number, "ISA", element, msg);
        let io = |e: io::Error| io_fatal(number, &e);
        let element = self.input.avail().get(3).copied().unwrap_or(0);
        if !usable_delimiter(element, false) {
            return Err(fatal(format!("the element separator {:?} (the byte after ISA) cannot be used", char::from(element)), None));
        }
        // Offsets of the 16 element separators (the first is at 3).
        let mut seps = [0usize; 16];
        let mut count = 1;
        let mut i = 4;
        loop {
            let avail = self.input.avail();
            while count < 16 {
                let Some(&b) = avail.get(i) else { break };
                if b == element {
                    if let Some(slot) = seps.get_mut(count) {
                        *slot = i;
                    }
                    count += 1;
                }
                i += 1;
                if i > MAX_ISA_LEN {
                    let msg = format!("ISA has only {count} of its 16 element separators in its first {MAX_ISA_LEN} bytes");
                    return Err(fatal(msg, None));
                }
            }
            if count == 16 {
                break;
            }
            if !self.input.fill().map_err(io)? {
                let msg = format!("ISA is truncated: the input ends after {} bytes, inside ISA{count:02}", self.input.len());
                return Err(fatal(msg, None));
            }
        }
        let [_, _, _, _, _, _, _, _, _, _, isa11_at, isa12_at, _, _, _, last] = seps;
        self.input.ensure(last + 5).map_err(io)?;
        let avail = self.input.avail();
        let (Some(&component), Some(&terminator)) = (avail.get(last + 1), avail.get(last + 2)) else {
            return Err(fatal("ISA is truncated: the input ends before ISA16 and the segment terminator".to_owned(), Some("ISA16")));
        };
        if !usable_delimiter(component, false) || component == element {
            let msg = format!("ISA16 (component separator) is {:?}, which cannot be used as a separator", char::from(component));
            return Err(fatal(msg, Some("ISA16")));
        }
        if !usable_delimiter(terminator, true) || terminator == element || terminator == component {
            let msg = format!(
                "the segment terminator after ISA16 is {:?}, which cannot be used; is ISA16 missing or the ISA cut short?",
                char::from(terminator)
            );
            return Err(fatal(msg, Some("ISA16")));
        }
        // ISA11 lies between the 11th and the 12th separator, ISA16 after the 16th.
        let isa11 = avail.get(isa11_at + 1).copied().unwrap_or(b' ');
        let repetition =
            (isa12_at == isa11_at + 2 && usable_delimiter(isa11, false) && isa11 != element && isa11 != component && isa11 != terminator)
                .then_some(isa11);
        let next = (avail.get(last + 3).copied(), avail.get(last + 4).copied());
        let suffix = match (terminator, next) {
            (b'\r', (Some(b'\n'), _)) => "\n",
            (b'\r' | b'\n', _) => "",
            (_, (Some(b'\r'), Some(b'\n'))) => "\r\n",
            (_, (Some(b'\n'), _)) => "\n",
            (_, (Some(b'\r'), _)) => "\r",
            _ => "",
        };
        self.seps = Some(Seps { element, component, repetition, isa11, segment: terminator, suffix });
        self.seg_len = last + 2;
        self.pending = last + 3;
        Ok(())
    }
}

/// The segment id at the start of `bytes`, for messages.
fn id_of(bytes: &[u8]) -> String {
    bytes.iter().take_while(|b| b.is_ascii_alphanumeric()).take(3).map(|&b| char::from(b)).collect()
}

fn no_isa(head: &[u8]) -> ReadError {
    let shown = String::from_utf8_lossy(head.get(..head.len().min(40)).unwrap_or_default()).into_owned();
    let msg = format!("no ISA: an X12 interchange starts with an ISA segment, but the input starts with {shown:?}");
    ReadError::new(Severity::Fatal, 1, &id_of(head), None, msg)
}

/// Owned segments from an [`X12Reader`]; see [`X12Reader::into_owned_segments`].
#[derive(Debug)]
pub struct OwnedSegments<R> {
    reader: X12Reader<R>,
}

impl<R: Read> OwnedSegments<R> {
    /// The reader's findings so far.
    pub fn findings(&self) -> &[ReadError] {
        self.reader.findings()
    }
}

impl<R: Read> Iterator for OwnedSegments<R> {
    type Item = Result<OwnedSegment, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.reader.next_segment().map(|r| r.map(|s| s.to_owned_segment()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::error::Error;
    use std::fs::{self, File};
    use std::io::BufReader;
    use std::path::{Path, PathBuf};

    use chrono::NaiveDate;

    use super::*;
    use crate::x12::claim837::{
        Address, BillingProvider, Claim, ClaimForm, Frequency, Implementation, Interchange, Line, Payer, Person, Receiver,
        ReleaseOfInformation, Sex, Submitter, Subscriber, Transaction837, build_interchange,
    };
    use crate::x12::writer::{Usage, money};

    type TestResult = Result<(), Box<dyn Error>>;

    const ISA: &str = "ISA*00*          *00*          *ZZ*SENDER         *ZZ*RECEIVER       *250304*0905*^*00501*000000042*0*T*:~";
    const BODY: &str = "GS*HC*SENDER*RECEIVER*20250304*0905*17*X*005010X222A1~\
                        ST*837*0001*005010X222A1~\
                        BHT*0019*00*REF1*20250304*0905*CH~\
                        SV1*HC:90834:95*100*UN*1***1~\
                        EB*1**30^1:A^33~\
                        SE*5*0001~\
                        GE*1*17~\
                        IEA*1*000000042~";

    fn clean() -> String {
        format!("{ISA}{BODY}")
    }

    fn texts(d: &Document) -> Vec<String> {
        d.findings.iter().map(ToString::to_string).collect()
    }

    /// Every segment as its id and elements, for comparing framings.
    fn shape(d: &Document) -> Vec<Vec<String>> {
        d.segments.iter().map(|s| std::iter::once(s.id()).chain(s.as_segment().elements()).map(str::to_owned).collect()).collect()
    }

    /// A reader that hands out at most a few bytes per call.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            let n = (1 + (self.calls * 7 + self.step) % self.step.max(1)).min(buf.len()).min(self.data.len());
            let (head, rest) = self.data.split_at_checked(n).unwrap_or((self.data, &[]));
            let copied = copy_prefix(buf, head);
            self.data = rest;
            Ok(copied)
        }
    }

    /// `head`, then `body` `times` times, then `tail`, without holding it all in memory.
    struct Repeat {
        head: Vec<u8>,
        body: Vec<u8>,
        tail: Vec<u8>,
        times: usize,
        /// 0 is the head, 1..=times the bodies, times + 1 the tail.
        part: usize,
        pos: usize,
    }

    impl Repeat {
        fn new(head: &str, body: &str, tail: &str, times: usize) -> Self {
            Self { head: head.into(), body: body.into(), tail: tail.into(), times, part: 0, pos: 0 }
        }
    }

    impl Read for Repeat {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            loop {
                let current = match self.part {
                    0 => &self.head,
                    p if p <= self.times => &self.body,
                    p if p == self.times + 1 => &self.tail,
                    _ => return Ok(0),
                };
                let rest = current.get(self.pos..).unwrap_or_default();
                if rest.is_empty() {
                    self.pos = 0;
                    self.part += 1;
                    continue;
                }
                let n = copy_prefix(buf, rest);
                self.pos += n;
                return Ok(n);
            }
        }
    }

    #[test]
    fn reads_ids_elements_components_repetitions_and_positions() -> TestResult {
        let d = read_all(clean().as_bytes())?;
        assert!(d.findings.is_empty(), "{:?}", texts(&d));
        let ids: Vec<&str> = d.segments.iter().map(OwnedSegment::id).collect();
        assert_eq!(ids, ["ISA", "GS", "ST", "BHT", "SV1", "EB", "SE", "GE", "IEA"]);
        let numbers: Vec<usize> = d.segments.iter().map(OwnedSegment::number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
        let in_set: Vec<Option<usize>> = d.segments.iter().map(OwnedSegment::position_in_set).collect();
        assert_eq!(in_set, [None, None, Some(1), Some(2), Some(3), Some(4), Some(5), None, None]);

        let sv1 = d.segments.get(4).ok_or("no SV1")?.as_segment();
        assert_eq!(sv1.text(), "SV1*HC:90834:95*100*UN*1***1");
        assert_eq!(sv1.element_count(), 7);
        assert_eq!((sv1.element(0), sv1.element(2), sv1.element(5), sv1.element(7), sv1.element(8)), ("SV1", "100", "", "1", ""));
        assert_eq!((sv1.component(1, 1), sv1.component(1, 2), sv1.component(1, 3)), ("HC", "90834", "95"));
        assert_eq!((sv1.component(1, 0), sv1.component(1, 4), sv1.component(2, 1), sv1.component(9, 1)), ("", "", "100", ""));
        assert_eq!(sv1.components(1).collect::<Vec<_>>(), ["HC", "90834", "95"]);
        assert_eq!(sv1.elements().collect::<Vec<_>>(), ["HC:90834:95", "100", "UN", "1", "", "", "1"]);

        let eb = d.segments.get(5).ok_or("no EB")?.as_segment();
        assert_eq!(eb.repetitions(3).collect::<Vec<_>>(), ["30", "1:A", "33"]);
        assert_eq!((eb.repetition(3, 2), eb.repetition(3, 4), eb.repetition(3, 0)), ("1:A", "", ""));
        assert_eq!((eb.repetition_component(3, 2, 2), eb.component(3, 1), eb.component(3, 2)), ("A", "30", ""));
        assert_eq!(eb.repetitions(2).collect::<Vec<_>>(), [""]);

        let isa = d.segments.first().ok_or("no ISA")?;
        assert_eq!((isa.element(13), isa.element(16), isa.text().len()), ("000000042", ":", 105));
        Ok(())
    }

    #[test]
    fn delimiters_come_from_the_isa() -> TestResult {
        let text = clean();
        let mut r = X12Reader::new(text.as_bytes());
        assert_eq!(r.delimiters(), None);
        let first = r.next_segment().ok_or("no segment")??.id().to_owned();
        assert_eq!(first, "ISA");
        assert_eq!(r.delimiters(), Some(Delimiters::default()));
        let text = clean().replace('~', "~\r\n");
        let mut r = X12Reader::new(text.as_bytes());
        r.next_segment().ok_or("no segment")??;
        assert_eq!(r.delimiters().map(|d| d.segment_suffix), Some("\r\n"));
        Ok(())
    }

    #[test]
    fn se_count_error_reads_like_the_example() -> TestResult {
        let text = clean().replace("SE*5*0001", "SE*4*0001");
        let d = read_all(text.as_bytes())?;
        assert_eq!(texts(&d), ["segment 7 (SE): SE01 says 4 segments, the transaction has 5"]);
        let f = d.findings.first().ok_or("no finding")?;
        assert_eq!((f.segment, f.id.as_str(), f.element.as_deref(), f.severity), (7, "SE", Some("SE01"), Severity::Error));
        assert!(!f.is_fatal());
        Ok(())
    }

    #[test]
    fn every_envelope_mismatch_is_reported() -> TestResult {
        let text = clean().replace("SE*5*0001", "SE*5*0002").replace("GE*1*17", "GE*2*18").replace("IEA*1*000000042", "IEA*3*000000043");
        let d = read_all(text.as_bytes())?;
        assert_eq!(
            texts(&d),
            [
                "segment 7 (SE): SE02 is \"0002\", ST02 (segment 3) is \"0001\"",
                "segment 8 (GE): GE01 says 2 transaction sets, the group has 1",
                "segment 8 (GE): GE02 is \"18\", GS06 (segment 2) is \"17\"",
                "segment 9 (IEA): IEA01 says 3 functional groups, the interchange has 1",
                "segment 9 (IEA): IEA02 is \"000000043\", ISA13 (segment 1) is \"000000042\"",
            ]
        );
        let d = read_all(clean().replace("SE*5*0001", "SE*X5*0001").as_bytes())?;
        assert_eq!(texts(&d), ["segment 7 (SE): SE01 \"X5\" is not a number (the transaction has 5 segments)"]);
        // Control numbers compare as numbers: IEA02 "42" matches ISA13 "000000042".
        let d = read_all(clean().replace("IEA*1*000000042", "IEA*1*42").as_bytes())?;
        assert!(d.findings.is_empty(), "{:?}", texts(&d));
        Ok(())
    }

    #[test]
    fn missing_trailers_and_stray_segments_are_reported() -> TestResult {
        // No SE, GE or IEA at the end.
        let text = format!("{ISA}GS*HC*S*R*20250304*0905*17*X*005010X222A1~ST*837*0001~BHT*0019~");
        let d = read_all(text.as_bytes())?;
        assert_eq!(
            texts(&d),
            [
                "segment 3 (ST): transaction set \"0001\" has no SE: the input ends after segment 4",
                "segment 2 (GS): functional group \"17\" has no GE: the input ends after segment 4",
                "segment 1 (ISA): interchange \"000000042\" has no IEA: the input ends after segment 4",
            ]
        );
        // A second ST before the first SE; a segment after IEA; trailers without headers.
        let text = format!(
            "{ISA}GS*HC*S*R*1*1*17*X*005010X222A1~ST*837*0001~ST*837*0002~SE*2*0002~GE*2*17~IEA*1*000000042~NM1*X~SE*1*9~GE*1*1~IEA*1*1~"
        );
        let d = read_all(text.as_bytes())?;
        assert_eq!(
            texts(&d),
            [
                "segment 3 (ST): transaction set \"0001\" has no SE: segment 4 (ST) comes first",
                "segment 8 (NM1): segment outside a transaction set (ST/SE)",
                "segment 9 (SE): SE without an open transaction set (no ST before it)",
                "segment 10 (GE): GE without an open functional group (no GS before it)",
                "segment 11 (IEA): IEA without an open interchange (no ISA before it)",
            ]
        );
        // GS and ST outside their parents; TA1 is allowed between ISA and GS.
        let text =
            format!("{ISA}TA1*000000001*250304*0905*A*000~IEA*0*000000042~GS*HC*S*R*1*1*5*X*005010X222A1~GE*0*5~ST*837*0001~SE*2*0001~");
        let d = read_all(text.as_bytes())?;
        assert_eq!(
            texts(&d),
            ["segment 4 (GS): GS outside an interchange (no open ISA)", "segment 6 (ST): ST outside a functional group (no open GS)"]
        );
        Ok(())
    }

    #[test]
    fn fatal_problems_stop_reading() -> TestResult {
        let fatal = |text: &[u8]| -> Result<ReadError, Box<dyn Error>> {
            let mut r = X12Reader::new(text);
            loop {
                match r.next_segment() {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        assert!(e.is_fatal(), "{e}");
                        assert!(r.next_segment().is_none(), "reading goes on after a fatal error");
                        return Ok(e);
                    }
                    None => {
                        let start = String::from_utf8_lossy(text.get(..text.len().min(120)).unwrap_or_default()).into_owned();
                        return Err(format!("no fatal error for {start:?}").into());
                    }
                }
            }
        };
        assert_eq!(fatal(b"")?.to_string(), "input: the input is empty: no ISA segment");
        assert_eq!(fatal(b" \r\n")?.to_string(), "input: the input is empty: no ISA segment");
        let e = fatal(b"ST*835*1234~BPR*I*1922.86~SE*3*1234~")?;
        assert_eq!(
            e.to_string(),
            "segment 1 (ST): no ISA: an X12 interchange starts with an ISA segment, but the input starts with \"ST*835*1234~BPR*I*1922.86~SE*3*1234~\""
        );
        // An ISA cut anywhere is fatal, never a panic.
        for cut in 0..ISA.len() {
            let e = fatal(ISA.as_bytes().get(..cut).ok_or("cut")?)?;
            assert!(e.message.contains("ISA") || e.message.contains("empty"), "{cut}: {e}");
        }
        assert_eq!(
            fatal(ISA.get(..60).ok_or("cut")?.as_bytes())?.to_string(),
            "segment 1 (ISA): ISA is truncated: the input ends after 60 bytes, inside ISA08"
        );
        let e = fatal(ISA.replace(":~", "").as_bytes())?;
        assert_eq!(e.element.as_deref(), Some("ISA16"), "{e}");
        let e = fatal(ISA.replace("*:~", "*:A").as_bytes())?;
        assert!(e.message.contains("segment terminator after ISA16 is 'A'"), "{e}");
        let e = fatal(format!("{ISA}GS*HC*{}~", "X".repeat(MAX_SEGMENT_LEN + 10)).as_bytes())?;
        assert_eq!((e.segment, e.id.as_str()), (2, "GS"));
        assert!(e.message.contains("no segment terminator '~' within 1048576 bytes"), "{e}");
        Ok(())
    }

    #[test]
    fn x12_4010_is_refused() -> TestResult {
        let e = read_all(clean().replace("*00501*", "*00401*").as_bytes()).err().ok_or("4010 ISA accepted")?;
        assert_eq!(e.to_string(), "segment 1 (ISA): X12 4010 is not supported; send 5010 (005010...): ISA12 is \"00401\"");
        assert_eq!(e.element.as_deref(), Some("ISA12"));
        let e = read_all(clean().replace("X*005010X222A1~ST", "X*004010X098A1~ST").as_bytes()).err().ok_or("4010 GS accepted")?;
        assert_eq!(e.to_string(), "segment 2 (GS): X12 4010 is not supported; send 5010 (005010...): GS08 is \"004010X098A1\"");
        let d = read_all(clean().replace("*00501*", "*00601*").as_bytes())?;
        assert_eq!(texts(&d), ["segment 1 (ISA): ISA12 is \"00601\"; only 00501 (5010) is read"]);
        Ok(())
    }

    #[test]
    fn trimmed_isa_is_read_by_its_separators() -> TestResult {
        let isa = "ISA*00* *00* *ZZ*NVMED *ZZ*99999999*180613*1230*^*00501*100000300*0*P*:~";
        let body = BODY.replace("000000042", "100000300");
        let d = read_all(format!("{isa}{body}").as_bytes())?;
        assert_eq!(shape(&d).get(1..), shape(&read_all(format!("{ISA}{body}").as_bytes())?).get(1..));
        assert_eq!(
            texts(&d),
            [
                "segment 1 (ISA): ISA is 72 characters, not 106 (its fields are fixed-width): ISA02 has 1, not 10; ISA04 has 1, not 10; ISA06 has 6, not 15; ISA08 has 8, not 15"
            ]
        );
        Ok(())
    }

    #[test]
    fn framings_give_the_same_segments() -> TestResult {
        let want = shape(&read_all(clean().as_bytes())?);
        let crlf = clean().replace('~', "~\r\n");
        let unusual = clean().replace('~', "'").replace('*', "|").replace('^', "{").replace(':', "^");
        let variants = [
            clean().replace('~', "~\n"),
            crlf.clone(),
            format!("\u{feff}{crlf}"),
            format!("\r\n  \t{}\r\n\r\n", clean().replace('~', "~\n    ")),
            clean().replace('~', "\n"),
            clean().replace('~', "\r\n"),
            clean().replace('~', "\r"),
            format!("{}\u{1a}\0", clean()),
            unusual.clone(),
        ];
        for text in &variants {
            let d = read_all(text.as_bytes())?;
            let back = |e: String| if *text == unusual { e.replace('|', "*").replace('^', ":").replace('{', "^") } else { e };
            let got: Vec<Vec<String>> = shape(&d).into_iter().map(|s| s.into_iter().map(back).collect()).collect();
            assert_eq!(got, want, "{text:?}");
            assert!(d.findings.is_empty(), "{text:?}: {:?}", texts(&d));
        }
        Ok(())
    }

    #[test]
    fn many_interchanges_each_with_its_delimiters() -> TestResult {
        let second = clean().replace('~', "'\n").replace('*', "|").replace('^', "{").replace(':', "^");
        let text = format!("{}\n{second}\u{feff}{}", clean(), clean().replace('~', "\r\n"));
        let mut r = X12Reader::new(text.as_bytes());
        let mut seen = Vec::new();
        while let Some(seg) = r.next_segment() {
            let seg = seg?;
            if seg.id() == "ISA" {
                seen.push((seg.number(), r_delims(&seg)));
            }
        }
        assert_eq!(seen, [(1, ('*', ':', Some('^'))), (10, ('|', '^', Some('{'))), (19, ('*', ':', Some('^')))]);
        assert_eq!(r.segments_read(), 27);
        assert!(r.findings().is_empty(), "{:?}", r.findings());
        assert_eq!(r.delimiters().map(|d| (d.segment, d.segment_suffix)), Some((b'\r', "\n")));
        Ok(())
    }

    fn r_delims(seg: &Segment<'_>) -> (char, char, Option<char>) {
        (seg.text().chars().nth(3).unwrap_or(' '), char::from(seg.component_separator()), seg.repetition_separator().map(char::from))
    }

    #[test]
    fn isa11_that_is_no_separator_is_a_warning() -> TestResult {
        let d = read_all(clean().replace("*^*00501", "*U*00501").as_bytes())?;
        assert_eq!(
            texts(&d),
            ["segment 1 (ISA): ISA11 is \"U\", not a repetition separator (5010 expects a symbol such as '^'); repetitions are not split"]
        );
        assert_eq!(d.findings.first().map(|f| f.severity), Some(Severity::Warning));
        let eb = d.segments.iter().find(|s| s.id() == "EB").ok_or("no EB")?;
        assert_eq!(eb.as_segment().repetitions(3).collect::<Vec<_>>(), ["30^1:A^33"]);
        Ok(())
    }

    #[test]
    fn utf16_input_is_decoded() -> TestResult {
        let want = shape(&read_all(clean().as_bytes())?);
        let units: Vec<u16> = clean().encode_utf16().collect();
        let le: Vec<u8> = units.iter().flat_map(|u| u.to_le_bytes()).collect();
        let be: Vec<u8> = units.iter().flat_map(|u| u.to_be_bytes()).collect();
        let with_bom = |bom: [u8; 2], body: &[u8]| bom.iter().chain(body).copied().collect::<Vec<u8>>();
        for (bytes, what) in [
            (le.clone(), "little-endian, no byte order mark"),
            (with_bom([0xFF, 0xFE], &le), "little-endian with a byte order mark"),
            (be.clone(), "big-endian, no byte order mark"),
            (with_bom([0xFE, 0xFF], &be), "big-endian with a byte order mark"),
        ] {
            let mut r = X12Reader::new(Trickle { data: &bytes, step: 5, calls: 0 });
            let mut got = Vec::new();
            while let Some(seg) = r.next_segment() {
                let seg = seg?;
                got.push(std::iter::once(seg.id()).chain(seg.elements()).map(str::to_owned).collect::<Vec<_>>());
            }
            assert_eq!(got, want);
            let msgs: Vec<String> = r.findings().iter().map(ToString::to_string).collect();
            assert_eq!(msgs, [format!("input: the input is UTF-16 ({what}); decoded, but X12 should be sent as ASCII or UTF-8")]);
        }
        Ok(())
    }

    #[test]
    fn odd_bytes_and_segments_are_reported_not_fatal() -> TestResult {
        let mut bytes = clean().replace("*CH~", "*CH~~ ~").into_bytes();
        bytes.extend_from_slice(b"NM1*IL*1*CAF\xC9~bad*x~");
        let d = read_all(&bytes)?;
        let nm1 = d.segments.iter().find(|s| s.id() == "NM1").ok_or("no NM1")?;
        assert_eq!(nm1.element(3), "CAF\u{FFFD}");
        assert_eq!(
            texts(&d),
            [
                "segment 4 (BHT): an empty segment (a lone terminator '~') follows; skipped",
                "segment 4 (BHT): an empty segment (a lone terminator '~') follows; skipped",
                "segment 10 (NM1): the segment is not valid UTF-8 (or ASCII); the bad bytes read as U+FFFD",
                "segment 10 (NM1): segment outside a transaction set (ST/SE)",
                "segment 11 (bad): segment id \"bad\" is not 2-3 upper-case letters or digits",
                "segment 11 (bad): segment outside a transaction set (ST/SE)",
            ]
        );
        let d = read_all(clean().trim_end_matches('~').as_bytes())?;
        assert_eq!(texts(&d), ["segment 9 (IEA): the input ends inside this segment (no segment terminator '~')"]);
        assert_eq!(d.segments.last().map(|s| s.element(2)), Some("000000042"));
        Ok(())
    }

    #[test]
    fn characters_and_bad_bytes_cut_by_reads_read_the_same() -> TestResult {
        let mut bytes = clean().into_bytes();
        bytes.extend_from_slice("NM1*IL*1*JOSÉ*😀~".as_bytes());
        bytes.extend_from_slice(b"NM1*IL*1*CAF\xC9*\xE2\x82~NM1*IL*1*OK~\xF0\x9F");
        let whole = read_all(&bytes)?;
        let names: Vec<Vec<&str>> = whole.segments.iter().skip(9).map(|s| s.as_segment().elements().collect()).collect();
        assert_eq!(names, [vec!["IL", "1", "JOSÉ", "😀"], vec!["IL", "1", "CAF\u{FFFD}", "\u{FFFD}"], vec!["IL", "1", "OK"], vec![]]);
        let utf8: Vec<String> = texts(&whole).into_iter().filter(|t| t.contains("UTF-8")).collect();
        assert_eq!(
            utf8,
            [
                "segment 11 (NM1): the segment is not valid UTF-8 (or ASCII); the bad bytes read as U+FFFD",
                "segment 13 (\u{fffd}): the segment is not valid UTF-8 (or ASCII); the bad bytes read as U+FFFD",
            ]
        );
        for step in 1..=9 {
            let mut r = X12Reader::new(Trickle { data: &bytes, step, calls: 0 });
            let mut segments = Vec::new();
            while let Some(seg) = r.next_segment() {
                segments.push(seg?.to_owned_segment());
            }
            assert_eq!(segments, whole.segments, "step {step}");
            assert_eq!(r.take_findings(), whole.findings, "step {step}");
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn element_starts_are_found_eight_bytes_at_a_time(segment in proptest::collection::vec(proptest::sample::select(b"*:^~A1 \xFF\x00".to_vec()), 0..80)) {
            let mut starts = Vec::new();
            push_element_starts(&segment, b'*', &mut starts);
            let want: Vec<usize> = segment.iter().enumerate().filter(|(_, b)| **b == b'*').map(|(i, _)| i + 1).collect();
            proptest::prop_assert_eq!(starts, want);
        }
    }

    #[test]
    fn small_reads_give_the_same_segments() -> TestResult {
        let second = clean().replace('~', "'\n").replace('*', "|");
        let text = format!("{}{second}{}", clean(), clean().replace('~', "\r\n"));
        let want = read_all(text.as_bytes())?;
        for step in 1..=9 {
            let got: Result<Vec<OwnedSegment>, ReadError> =
                X12Reader::new(Trickle { data: text.as_bytes(), step, calls: 0 }).into_owned_segments().collect();
            assert_eq!(got?, want.segments, "step {step}");
        }
        Ok(())
    }

    #[test]
    fn memory_stays_bounded_on_a_long_stream() -> TestResult {
        let head = format!("{ISA}GS*HC*SENDER*RECEIVER*20250304*0905*17*X*005010X222A1~");
        let body = "ST*837*0001*005010X222A1~BHT*0019*00*REF1*20250304*0905*CH~CLM*A1*150***10:B:1*Y*A*Y*Y~SV1*HC:90834:95*100*UN*1***1~SE*5*0001~\n";
        let times = 40_000;
        let tail = format!("GE*{times}*17~IEA*1*000000042~");
        let mut r = X12Reader::new(Repeat::new(&head, body, &tail, times));
        let (mut clm, mut cents) = (0usize, 0i64);
        while let Some(seg) = r.next_segment() {
            let seg = seg?;
            if seg.id() == "CLM" {
                clm += 1;
                cents += parse_cents(seg.element(2)).ok_or("bad CLM02")?;
            }
        }
        assert_eq!((clm, cents), (times, 15_000 * i64::try_from(times)?));
        assert_eq!(r.segments_read(), 2 + 5 * times + 2);
        assert!(r.findings().is_empty(), "{:?}", r.findings());
        assert!(r.input.text.capacity() <= 2 * CHUNK, "buffer grew to {}", r.input.text.capacity());
        Ok(())
    }

    #[test]
    fn cents_are_parsed_exactly() {
        for (text, want) in [
            ("0", Some(0)),
            ("100", Some(10_000)),
            ("1922.86", Some(192_286)),
            ("-510.25", Some(-51_025)),
            ("72232", Some(7_223_200)),
            (".5", Some(50)),
            ("5.", Some(500)),
            ("12.340", Some(1234)),
            (" 7.1 ", Some(710)),
            ("+3", Some(300)),
            ("", None),
            (".", None),
            ("-", None),
            ("1.234", None),
            ("1,000", None),
            ("1e3", None),
            ("99999999999999999999", None),
        ] {
            assert_eq!(parse_cents(text), want, "{text:?}");
        }
        for cents in [0, 5, 1234, -250, 100_000, -550, 12_345, MAX_CENTS, -MAX_CENTS] {
            assert_eq!(parse_cents(&money(cents)), Some(cents));
        }
        assert_eq!(parse_cents(&money(MAX_CENTS + 1)), None);
        assert_eq!(parse_cents(&money(i64::MAX / 100)), None);
    }

    /// The straightforward reading of an X12 `R` amount that [`parse_cents`] does in one pass.
    fn cents_by_splitting(value: &str) -> Option<i64> {
        let t = value.trim();
        let (negative, digits) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t.strip_prefix('+').unwrap_or(t)),
        };
        let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
            return None;
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 2 {
            return None;
        }
        let whole: i64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let frac: i64 = format!("{frac:0<2}").parse().ok()?;
        let value = whole.checked_mul(100)?.checked_add(frac)?;
        (value <= MAX_CENTS).then_some(if negative { -value } else { value })
    }

    proptest::proptest! {
        #[test]
        fn cents_in_one_pass_read_as_by_splitting(text in "[ \u{a0}]?[+-]{0,2}[0-9]{0,16}[.]?[0-9]{0,5}[.e,x]?[0-9]{0,2}[ \t]?") {
            proptest::prop_assert_eq!(parse_cents(&text), cents_by_splitting(&text), "{:?}", text);
        }

        #[test]
        fn cents_of_any_text_read_as_by_splitting(text in "\\PC{0,24}") {
            proptest::prop_assert_eq!(parse_cents(&text), cents_by_splitting(&text), "{:?}", text);
        }
    }

    fn day(y: i32, m: u32, d: u32) -> Result<NaiveDate, Box<dyn Error>> {
        Ok(NaiveDate::from_ymd_opt(y, m, d).ok_or("bad date")?)
    }

    fn address(zip: &str) -> Address {
        Address { line1: "100 MAIN ST".into(), line2: None, city: "SACRAMENTO".into(), state: "CA".into(), zip: zip.into() }
    }

    fn service_line(id: &str, procedure: &str, charge_cents: i64) -> Result<Line, Box<dyn Error>> {
        Ok(Line {
            line_id: id.into(),
            procedure: procedure.into(),
            modifiers: vec!["95".into()],
            revenue_code: None,
            charge_cents,
            units: 1,
            service_date: day(2025, 2, 3)?,
            diagnosis_pointers: vec![1],
        })
    }

    fn claim(pcn: &str, member: &str, lines: Vec<Line>) -> Result<Claim, Box<dyn Error>> {
        Ok(Claim {
            patient_control_number: pcn.into(),
            form: ClaimForm::Professional { place_of_service: "10".into() },
            frequency: Frequency::Original,
            payer_claim_number: None,
            release_of_information: ReleaseOfInformation::Yes,
            total_charge_cents: lines.iter().map(|l| l.charge_cents).sum(),
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
            statement_from: day(2025, 2, 3)?,
            statement_to: day(2025, 2, 3)?,
            lines,
            subscriber: Subscriber {
                member_id: member.into(),
                last: "DOE".into(),
                first: "ALEX".into(),
                birth_date: day(2010, 5, 6)?,
                sex: Sex::Unknown,
                address: address("95814"),
            },
        })
    }

    fn transaction(control: &str, claims: Vec<Claim>) -> Result<Transaction837, Box<dyn Error>> {
        Ok(Transaction837 {
            control_number: control.into(),
            reference: format!("BATCH{control}"),
            created: day(2025, 2, 10)?.and_hms_opt(8, 30, 0).ok_or("bad time")?,
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
                address: address("958141234"),
            },
            payer: Payer { name: "MEDI-CAL".into(), id: "610442".into(), filing_indicator: "MC".into() },
            claims,
        })
    }

    fn sample_interchange() -> Result<Interchange, Box<dyn Error>> {
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
            created: day(2025, 2, 10)?.and_hms_opt(8, 30, 0).ok_or("bad time")?,
            implementation: Implementation::Professional,
            transactions: vec![
                transaction(
                    "0001",
                    vec![
                        claim("A1", "M1", vec![service_line("A1-1", "90834", 10_000)?, service_line("A1-2", "90785", 5_000)?])?,
                        claim("A2", "M2", vec![service_line("A2-1", "90837", 8_025)?])?,
                    ],
                )?,
                transaction("0002", vec![claim("B1", "M3", vec![service_line("B1-1", "90832", 12_345)?])?])?,
            ],
        })
    }

    const UNUSUAL: Delimiters = Delimiters { element: b'|', component: b'^', repetition: b'{', segment: b'\'', segment_suffix: "\n" };

    #[test]
    fn round_trip_837p_with_unusual_delimiters() -> TestResult {
        let written = build_interchange(&sample_interchange()?, &UNUSUAL)?;
        assert!(written.text.starts_with("ISA|00|") && written.text.contains("|{|00501|") && written.text.contains("SV1|HC^90834^95|100|"));
        let mut r = X12Reader::new(BufReader::new(written.text.as_bytes()));
        let (mut counts, mut sets, mut clms, mut sv1s, mut his) = (HashMap::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        while let Some(seg) = r.next_segment() {
            let seg = seg?;
            *counts.entry(seg.id().to_owned()).or_insert(0usize) += 1;
            match seg.id() {
                "SE" => sets.push((seg.element(2).to_owned(), seg.position_in_set(), seg.element(1).parse::<usize>()?)),
                "CLM" => clms.push((
                    seg.element(1).to_owned(),
                    parse_cents(seg.element(2)).ok_or("CLM02")?,
                    [seg.component(5, 1), seg.component(5, 2), seg.component(5, 3)].join(","),
                )),
                "SV1" => sv1s.push((
                    [seg.component(1, 1), seg.component(1, 2), seg.component(1, 3)].join(","),
                    parse_cents(seg.element(2)).ok_or("SV102")?,
                    [seg.element(3), seg.element(4), seg.element(7)].join(","),
                )),
                "HI" => his.push([seg.component(1, 1), seg.component(1, 2), seg.component(2, 1), seg.component(2, 2)].join(",")),
                _ => {}
            }
        }
        assert!(r.findings().is_empty(), "{:?}", r.findings());
        assert_eq!(r.delimiters(), Some(UNUSUAL));
        assert_eq!(r.segments_read(), written.text.lines().count());
        for (id, n) in [("ISA", 1), ("GS", 1), ("ST", 2), ("SE", 2), ("GE", 1), ("IEA", 1), ("CLM", 3), ("SV1", 4), ("HI", 3)] {
            assert_eq!(counts.get(id).copied(), Some(n), "{id}");
        }
        let want_sets: Vec<(String, Option<usize>, usize)> =
            written.transactions.iter().map(|t| (t.control_number.clone(), Some(t.segment_count), t.segment_count)).collect();
        assert_eq!(sets, want_sets);
        let clm = |pcn: &str, cents: i64| (pcn.to_owned(), cents, "10,B,1".to_owned());
        assert_eq!(clms, [clm("A1", 15_000), clm("A2", 8_025), clm("B1", 12_345)]);
        let sv1 = |code: &str, cents: i64| (format!("HC,{code},95"), cents, "UN,1,1".to_owned());
        assert_eq!(sv1s, [sv1("90834", 10_000), sv1("90785", 5_000), sv1("90837", 8_025), sv1("90832", 12_345)]);
        assert!(his.iter().all(|h| h == "ABK,F411,ABF,Z658"), "{his:?}");
        Ok(())
    }

    /// Inputs read without panicking or looping: every item consumes input.
    fn drain<R: Read>(input: R, len: usize) -> Result<usize, String> {
        let mut r = X12Reader::new(input);
        let mut items = 0;
        while let Some(item) = r.next_segment() {
            items += 1;
            if items > len + 2 {
                return Err(format!("{items} items from {len} bytes: the reader does not advance"));
            }
            if let Ok(seg) = item {
                for i in 0..=seg.element_count() + 1 {
                    let _ = (seg.element(i), seg.component(i, 2), seg.repetition_component(i, 2, 1), seg.repetitions(i).count());
                }
                let owned = seg.to_owned_segment();
                if owned.as_segment() != seg {
                    return Err("owned copy differs".to_owned());
                }
            }
        }
        for f in r.findings() {
            let _ = f.to_string();
        }
        Ok(items)
    }

    /// A small deterministic generator (xorshift).
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            usize::try_from(self.0 % u64::try_from(n.max(1)).unwrap_or(1)).unwrap_or(0)
        }
    }

    fn fuzz(name: &str, bytes: &[u8], rng: &mut Rng) -> TestResult {
        let stride = (bytes.len() / 1500).max(1);
        for cut in (0..=bytes.len()).step_by(stride) {
            let part = bytes.get(..cut).ok_or("cut")?;
            drain(part, cut).map_err(|e| format!("{name} cut at {cut}: {e}"))?;
        }
        let specials = [b'~', b'*', b':', b'^', b'\n', b'\r', 0, 0xFF, b'I', b'S', b'A', b' '];
        for round in 0..400 {
            let mut mutated = bytes.to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(mutated.len());
                let value = if rng.below(2) == 0 {
                    specials.get(rng.below(specials.len())).copied().unwrap_or(0)
                } else {
                    (rng.below(256) & 0xFF) as u8
                };
                match rng.below(4) {
                    0 => mutated.insert(at.min(mutated.len()), value),
                    1 if at < mutated.len() => {
                        mutated.remove(at);
                    }
                    2 => {
                        let at = at.min(mutated.len());
                        let tail = mutated.split_off(at);
                        mutated.extend_from_slice(b"ISA");
                        mutated.push(value);
                        mutated.extend_from_slice(&tail);
                    }
                    _ => {
                        if let Some(b) = mutated.get_mut(at) {
                            *b = value;
                        }
                    }
                }
            }
            let len = mutated.len();
            let result = if round % 3 == 0 {
                drain(Trickle { data: &mutated, step: 1 + round % 7, calls: 0 }, len)
            } else {
                drain(mutated.as_slice(), len)
            };
            result.map_err(|e| format!("{name} mutation {round}: {e}"))?;
        }
        Ok(())
    }

    #[test]
    fn truncated_and_mutated_inputs_never_panic_or_hang() -> TestResult {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let generated = build_interchange(&sample_interchange()?, &UNUSUAL)?.text;
        fuzz("generated 837P", generated.as_bytes(), &mut rng)?;
        fuzz("clean", clean().as_bytes(), &mut rng)?;
        let utf16: Vec<u8> = clean().encode_utf16().flat_map(u16::to_le_bytes).collect();
        fuzz("utf-16", &utf16, &mut rng)?;
        for _ in 0..300 {
            let noise: Vec<u8> = (0..rng.below(300)).map(|_| (rng.below(256) & 0xFF) as u8).collect();
            drain(noise.as_slice(), noise.len())?;
            let mut isa_noise = ISA.as_bytes().to_vec();
            isa_noise.extend_from_slice(&noise);
            drain(isa_noise.as_slice(), isa_noise.len())?;
        }
        let Some(dir) = corpus() else { return Ok(()) };
        for file in [
            "835/oopfactory__Example1.txt",
            "837P/oopfactory__ST1309-XX.txt",
            "edge/edi835parser-affect__nevada_medicaid.txt",
            "edge/oopfactory__UnicodeExample.txt",
            "edge/tastypackets__multi-line-not-delimited.edi",
            "edge/imsweb__x12_valid_different_separators.txt",
        ] {
            if let Ok(bytes) = fs::read(dir.join(file)) {
                fuzz(file, &bytes, &mut rng)?;
            }
        }
        Ok(())
    }

    /// The shared X12 corpus: `$X12_CORPUS`, else `shared/` beside the repository, else
    /// `/work/shared`; `None` (tests skip) when absent.
    fn corpus() -> Option<PathBuf> {
        let mut candidates: Vec<PathBuf> = std::env::var_os("X12_CORPUS").map(PathBuf::from).into_iter().collect();
        candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/x12"));
        candidates.push(PathBuf::from("/work/shared/corpora/x12"));
        candidates.into_iter().find(|p| p.join("MANIFEST.tsv").is_file())
    }

    #[derive(Debug, Default)]
    struct Expected {
        isa: Option<usize>,
        st: Option<usize>,
        claims: Option<usize>,
        charge: Option<i64>,
        paid: Option<i64>,
        notes: String,
    }

    /// `MANIFEST.tsv` by path below `x12/`; a trailing `*` (a raw count where node-x12 refused
    /// the file) is dropped, an empty cell is `None`.
    fn manifest(dir: &Path) -> Result<HashMap<String, Expected>, Box<dyn Error>> {
        let text = fs::read_to_string(dir.join("MANIFEST.tsv"))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().ok_or("empty manifest")?.split('\t').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| format!("manifest has no column {name}"));
        let (file, isa, st, claims) = (col("file")?, col("ISA_count")?, col("ST_count")?, col("claims(CLP|CLM)")?);
        let (charge, paid, notes) = (col("total_charge")?, col("total_paid(835)")?, col("framing_notes")?);
        let mut rows = HashMap::new();
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let cells: Vec<&str> = line.split('\t').collect();
            let cell = |i: usize| cells.get(i).map_or("", |c| c.trim().trim_end_matches('*'));
            let count = |i: usize| -> Result<Option<usize>, Box<dyn Error>> {
                let c = cell(i);
                Ok(if c.is_empty() { None } else { Some(c.parse()?) })
            };
            let amount = |i: usize| -> Result<Option<i64>, Box<dyn Error>> {
                let c = cell(i);
                Ok(if c.is_empty() { None } else { Some(parse_cents(c).ok_or_else(|| format!("manifest amount {c:?}"))?) })
            };
            let key = cell(file).strip_prefix("x12/").unwrap_or(cell(file)).to_owned();
            let row = Expected {
                isa: count(isa)?,
                st: count(st)?,
                claims: count(claims)?,
                charge: amount(charge)?,
                paid: amount(paid)?,
                notes: cell(notes).to_owned(),
            };
            rows.insert(key, row);
        }
        Ok(rows)
    }

    #[derive(Debug, Default)]
    struct Stats {
        segments: usize,
        isa: usize,
        st: usize,
        claims: usize,
        charge: i64,
        paid: i64,
        bad_amounts: Vec<String>,
        findings: Vec<ReadError>,
        fatal: Option<ReadError>,
    }

    fn add_amount(stats: &mut Stats, seg: &Segment<'_>, i: usize, paid: bool) {
        match parse_cents(seg.element(i)) {
            Some(c) if paid => stats.paid += c,
            Some(c) => stats.charge += c,
            None => stats.bad_amounts.push(format!("segment {} {}{i:02} {:?}", seg.number(), seg.id(), seg.element(i))),
        }
    }

    /// Counts and sums of a file, its findings, and the fatal error if any.
    fn read_stats(path: &Path) -> Result<Stats, Box<dyn Error>> {
        let mut r = X12Reader::new(BufReader::new(File::open(path)?));
        let mut s = Stats::default();
        while let Some(item) = r.next_segment() {
            let seg = match item {
                Ok(seg) => seg,
                Err(e) => {
                    s.fatal = Some(e);
                    break;
                }
            };
            s.segments += 1;
            match seg.id() {
                "ISA" => s.isa += 1,
                "ST" => s.st += 1,
                "CLP" => {
                    s.claims += 1;
                    add_amount(&mut s, &seg, 3, false);
                    add_amount(&mut s, &seg, 4, true);
                }
                "CLM" => {
                    s.claims += 1;
                    add_amount(&mut s, &seg, 2, false);
                }
                _ => {}
            }
        }
        s.findings = r.take_findings();
        Ok(s)
    }

    fn files_in(dir: &Path) -> Result<Vec<PathBuf>, Box<dyn Error>> {
        let mut files: Vec<PathBuf> = fs::read_dir(dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
        files.retain(|p| p.is_file());
        files.sort();
        Ok(files)
    }

    fn name_of(path: &Path) -> String {
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    /// Compares a file read without a fatal error with its manifest row.
    fn compare(key: &str, s: &Stats, want: &Expected, problems: &mut Vec<String>) {
        let mut check = |what: &str, got: String, expected: Option<String>| {
            if let Some(e) = expected
                && e != got
            {
                problems.push(format!("{key}: {what} is {got}, the manifest says {e}"));
            }
        };
        check("ISA count", s.isa.to_string(), want.isa.map(|v| v.to_string()));
        check("ST count", s.st.to_string(), want.st.map(|v| v.to_string()));
        check("claim count", s.claims.to_string(), want.claims.map(|v| v.to_string()));
        check("total charge", money(s.charge), want.charge.map(money));
        check("total paid", money(s.paid), want.paid.map(money));
        if !s.bad_amounts.is_empty() {
            problems.push(format!("{key}: amounts that are not decimals: {:?}", s.bad_amounts));
        }
    }

    /// Corpus files outside `legacy-4010/` that are refused on purpose, with the expected start
    /// of the message. Files whose manifest `framing_notes` say `no-ISA-envelope` (a bare ST..SE)
    /// are refused with "no ISA" as well.
    const KNOWN_FATAL: &[(&str, &str)] = &[
        // Filed as a 5010 835, but its ISA12 is 00401 and GS08 is the bare "5010".
        ("835/oopfactory__Example1.txt", UNSUPPORTED_4010),
    ];

    #[test]
    fn corpus_files_read_and_match_the_manifest() -> TestResult {
        let Some(dir) = corpus() else {
            eprintln!("X12 corpus not found; skipped");
            return Ok(());
        };
        let rows = manifest(&dir)?;
        let mut problems = Vec::new();
        let mut read = 0;
        for folder in ["835", "837P", "837I", "acks", "edge", "large", "invalid"] {
            let Ok(files) = files_in(&dir.join(folder)) else { continue };
            for path in files {
                let key = format!("{folder}/{}", name_of(&path));
                let stats = read_stats(&path)?;
                let (findings, fatal) = (&stats.findings, &stats.fatal);
                read += 1;
                let want = rows.get(&key);
                let errors = findings.iter().filter(|f| f.severity >= Severity::Error).count();
                eprintln!(
                    "{key}: {} segments, ISA {} ST {} claims {} charge {} paid {}; {} findings ({errors} errors){}",
                    stats.segments,
                    stats.isa,
                    stats.st,
                    stats.claims,
                    money(stats.charge),
                    money(stats.paid),
                    findings.len(),
                    fatal.as_ref().map(|e| format!("; FATAL {e}")).unwrap_or_default()
                );
                let expected_fatal = match want {
                    Some(w) if w.notes.contains("no-ISA-envelope") => Some("no ISA"),
                    _ => KNOWN_FATAL.iter().find(|(k, _)| *k == key).map(|(_, m)| *m),
                };
                match (fatal, expected_fatal, want) {
                    (Some(e), Some(prefix), _) => {
                        if !e.message.starts_with(prefix) {
                            problems.push(format!("{key}: expected {prefix:?}, got {e}"));
                        }
                    }
                    (None, Some(prefix), _) => problems.push(format!("{key}: read, but {prefix:?} was expected")),
                    (Some(e), None, _) => problems.push(format!("{key}: fatal {e}")),
                    (None, None, Some(w)) => compare(&key, &stats, w, &mut problems),
                    (None, None, None) => eprintln!("  ({key} is not in the manifest)"),
                }
            }
        }
        for key in rows.keys() {
            let folder = key.split('/').next().unwrap_or("");
            if ["835", "837P", "837I", "acks", "edge", "large", "invalid"].contains(&folder) && !dir.join(key).is_file() {
                problems.push(format!("{key}: in the manifest but not found"));
            }
        }
        eprintln!("{read} corpus files read");
        assert!(read > 0, "no corpus file read under {}", dir.display());
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        Ok(())
    }

    #[test]
    fn invalid_corpus_files_each_give_a_precise_error() -> TestResult {
        let Some(dir) = corpus() else { return Ok(()) };
        let Ok(files) = files_in(&dir.join("invalid")) else { return Ok(()) };
        for path in files {
            let Stats { findings, fatal, .. } = read_stats(&path)?;
            let first = fatal.or_else(|| findings.into_iter().find(|f| f.severity >= Severity::Error));
            let e = first.ok_or_else(|| format!("{}: no error found", path.display()))?;
            assert!(e.segment >= 1, "{}: imprecise {e}", path.display());
            eprintln!("invalid/{}: {e}", name_of(&path));
        }
        Ok(())
    }

    #[test]
    fn legacy_4010_corpus_files_are_refused() -> TestResult {
        let Some(dir) = corpus() else { return Ok(()) };
        let Ok(files) = files_in(&dir.join("legacy-4010")) else { return Ok(()) };
        for path in files {
            let e = read_stats(&path)?.fatal.ok_or_else(|| format!("{}: 4010 file accepted", path.display()))?;
            assert!(e.message.starts_with(UNSUPPORTED_4010), "{}: {e}", path.display());
            eprintln!("legacy-4010/{}: {e}", name_of(&path));
        }
        Ok(())
    }
}
