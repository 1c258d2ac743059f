//! Arbitrary bytes into the streaming X12 reader (`src/x12/reader.rs`).
//!
//! Checks, for every input:
//! - no panic, and every item consumes input (at most `len + 2` items: no endless loop);
//! - every accessor of every segment: id, number, position_in_set, text, element_count,
//!   element(i) for i in 0..=count+1, elements, components, component, repetitions,
//!   repetition, repetition_component, the separators, and the owned copy; the positional
//!   accessors (component, repetition, repetition_component) agree with the iterators;
//! - `Err` is fatal and is the last item; findings stay within `MAX_FINDINGS` and display;
//! - `read_all` gives the same segments and the same fatal error as the streaming loop;
//! - the same input handed out a few bytes per `read` call gives the same segments and a
//!   fatal error at the same place (segment, id, element; its words may quote less of the
//!   input); the buffer refills are so exercised on small inputs;
//! - inputs ending in the marker byte 0xA5 are also read as: the input (without the marker),
//!   then its second half over and over, 128 KiB more (buffer refills, compaction and growth
//!   across the reader's 64 KiB chunks); inputs ending in two markers whose second half holds
//!   no segment terminator get `MAX_SEGMENT_LEN` + 128 KiB more (~1.1 MiB), which reaches the
//!   "no segment terminator within MAX_SEGMENT_LEN bytes" error. The target never holds that
//!   input in memory, so, run with `-rss_limit_mb=512`, unbounded growth inside the reader
//!   shows up as an OOM.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use wellness_gateway::x12::reader::{MAX_FINDINGS, MAX_SEGMENT_LEN};
use wellness_gateway::x12::{ReadError, ReadSegment, X12Reader, read_all};

/// The marker (last byte) that selects the repeated, long-input read.
const REPEAT_MARKER: u8 = 0xA5;
/// The reader's chunk size (`CHUNK` in reader.rs).
const CHUNK: usize = 64 * 1024;

/// A summary of one segment, for comparing two reads of the same input.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    number: usize,
    position_in_set: Option<usize>,
    text: String,
    elements: usize,
    separators: (u8, Option<u8>),
}

/// Calls every accessor of a segment; returns a checksum so nothing is optimised away.
fn touch(seg: &ReadSegment<'_>) -> usize {
    let mut sum = seg.id().len() + seg.number() + seg.position_in_set().unwrap_or(0) + seg.text().len();
    let count = seg.element_count();
    assert_eq!(seg.element(0), seg.id());
    for i in 0..=count + 1 {
        let e = seg.element(i);
        sum += e.len();
        sum += seg.components(i).count() + seg.repetitions(i).count();
        // Position 0 is "absent" (1-based), 1 the first, 3 usually past the end.
        for j in [0, 1, 3] {
            sum += seg.component(i, j).len() + seg.repetition(i, j).len();
        }
        sum += seg.repetition_component(i, 2, 1).len() + seg.repetition_component(i, 0, 1).len();
        // The positional accessors agree with the iterators.
        for k in 1..=3 {
            assert_eq!(seg.component(i, k), seg.components(i).nth(k - 1).unwrap_or(""), "component({i}, {k})");
            assert_eq!(seg.repetition(i, k), seg.repetitions(i).nth(k - 1).unwrap_or(""), "repetition({i}, {k})");
            let second = seg.repetition(i, 2).split(char::from(seg.component_separator())).nth(k - 1).unwrap_or("");
            assert_eq!(seg.repetition_component(i, 2, k), second, "repetition_component({i}, 2, {k})");
        }
        if i > count {
            assert_eq!(e, "", "element {i} of {count} is not empty");
        }
    }
    assert_eq!(seg.elements().count(), count);
    sum += usize::from(seg.component_separator()) + usize::from(seg.repetition_separator().unwrap_or(0));
    let owned = seg.to_owned_segment();
    assert_eq!(owned.as_segment(), *seg, "owned copy differs");
    assert_eq!((owned.id(), owned.element_count(), owned.text()), (seg.id(), count, seg.text()));
    assert_eq!(owned.element(1), seg.element(1));
    assert_eq!(owned.component(1, 1), seg.component(1, 1));
    sum
}

fn seen(seg: &ReadSegment<'_>) -> Seen {
    Seen {
        number: seg.number(),
        position_in_set: seg.position_in_set(),
        text: seg.text().to_owned(),
        elements: seg.element_count(),
        separators: (seg.component_separator(), seg.repetition_separator()),
    }
}

/// How much of each segment a drain looks at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Look {
    /// Every accessor ([`touch`]), and a [`Seen`] kept per segment.
    Touch,
    /// A [`Seen`] kept per segment.
    Keep,
    /// The id, the element count and the last element only (the long repeated reads).
    Skim,
}

/// What a drain found.
struct Drained {
    segments: Vec<Seen>,
    fatal: Option<ReadError>,
    /// The segment terminator of the last interchange read, if any.
    terminator: Option<u8>,
}

/// Drains a reader: the segments seen (unless skimming), the fatal error if any.
fn drain<R: Read>(input: R, len: usize, look: Look) -> Drained {
    let mut reader = X12Reader::new(input);
    let mut segments = Vec::new();
    let mut fatal = None;
    let mut items = 0usize;
    let mut checksum = 0usize;
    while let Some(item) = reader.next_segment() {
        items += 1;
        assert!(items <= len + 2, "{items} items from {len} bytes: the reader does not advance");
        assert!(fatal.is_none(), "an item after a fatal error");
        match item {
            Ok(seg) => {
                if look == Look::Touch {
                    checksum = checksum.wrapping_add(touch(&seg));
                }
                if look == Look::Skim {
                    let count = seg.element_count();
                    checksum = checksum.wrapping_add(seg.id().len() + count + seg.element(count).len());
                } else {
                    segments.push(seen(&seg));
                }
            }
            Err(e) => {
                assert!(e.is_fatal(), "a non-fatal Err: {e}");
                checksum = checksum.wrapping_add(e.to_string().len());
                fatal = Some(e);
            }
        }
    }
    assert!(reader.next_segment().is_none(), "items after the end");
    assert!(reader.findings().len() <= MAX_FINDINGS);
    for f in reader.findings() {
        assert!(!f.is_fatal(), "a fatal finding: {f}");
        checksum = checksum.wrapping_add(f.to_string().len());
    }
    checksum = checksum.wrapping_add(reader.findings_dropped() + reader.segments_read());
    std::hint::black_box(checksum);
    Drained { segments, fatal, terminator: reader.delimiters().map(|d| d.segment) }
}

/// Hands out at most a few bytes per `read` call.
struct Trickle<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        let n = (1 + self.calls % 7).min(buf.len()).min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        buf[..n].copy_from_slice(head);
        self.data = rest;
        Ok(n)
    }
}

/// `head` once, then `body` repeated, until `left` bytes were handed out, in large reads.
struct Repeat<'a> {
    head: &'a [u8],
    body: &'a [u8],
    pos: usize,
    left: usize,
}

impl Read for Repeat<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.len()).min(self.left);
            buf[..n].copy_from_slice(&self.head[..n]);
            self.head = &self.head[n..];
            self.left -= n;
            return Ok(n);
        }
        if self.left == 0 || self.body.is_empty() {
            return Ok(0);
        }
        let rest = &self.body[self.pos..];
        let n = rest.len().min(buf.len()).min(self.left);
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos = (self.pos + n) % self.body.len();
        self.left -= n;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Drained { segments, fatal, terminator } = drain(data, data.len(), Look::Touch);

    match read_all(data) {
        Ok(doc) => {
            assert!(fatal.is_none(), "read_all read what the stream refused: {fatal:?}");
            assert!(doc.findings.len() <= MAX_FINDINGS);
            let owned: Vec<Seen> = doc.segments.iter().map(|o| seen(&o.as_segment())).collect();
            assert_eq!(owned, segments, "read_all and the stream give other segments");
        }
        Err(e) => {
            assert!(e.is_fatal());
            assert_eq!(Some(&e), fatal.as_ref(), "read_all and the stream disagree");
        }
    }

    // The message may quote less of the input (only what is buffered), so the fatal errors
    // are compared by where and how bad, not by their words.
    let trickled = drain(Trickle { data, calls: 0 }, data.len(), Look::Keep);
    assert_eq!(trickled.segments, segments, "reading a few bytes at a time gives other segments");
    let place = |e: &ReadError| (e.segment, e.id.clone(), e.element.clone(), e.severity);
    assert_eq!(
        trickled.fatal.as_ref().map(place),
        fatal.as_ref().map(place),
        "reading a few bytes at a time gives another fatal error"
    );

    // The input without its marker(s), then its second half over and over. One marker: 2
    // chunks more (buffer refills and compaction). Two markers and no segment terminator in
    // the second half: past MAX_SEGMENT_LEN (a segment that is too long); with a terminator
    // that would only be many more segments, so 2 chunks as well.
    if let Some((&REPEAT_MARKER, input)) = data.split_last() {
        let (input, long) = match input.split_last() {
            Some((&REPEAT_MARKER, rest)) => (rest, true),
            _ => (input, false),
        };
        let body = &input[input.len() / 2..];
        let unterminated = terminator.is_none_or(|t| !body.contains(&t));
        let more = if long && unterminated { MAX_SEGMENT_LEN + 2 * CHUNK } else { 2 * CHUNK };
        if !body.is_empty() {
            let total = input.len() + more;
            drain(Repeat { head: input, body, pos: 0, left: total }, total, Look::Skim);
        }
    }
});
