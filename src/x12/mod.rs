//! X12 5010: syntax, envelopes and the 837 claim builders.
//!
//! - [`writer`]: a typed segment writer ([`Segment`], [`X12Writer`]) that checks every value
//!   against the delimiters and the printable-ASCII character set, trims trailing empty elements
//!   and components, and writes the ISA/GS/ST envelopes with exact SE/GE/IEA counts; plus the
//!   value helpers [`money`] (integer cents as an X12 `R` amount), [`d8`], [`rd8`] and [`hhmm`].
//! - [`claim837`]: builders for 837P (005010X222A1) and 837I (005010X223A2) from a plain typed
//!   model ([`Interchange`] → [`Transaction837`] → [`Claim`] → [`Line`]).
//! - [`reader`]: a streaming reader ([`X12Reader`]) taking its delimiters from each ISA, tolerant
//!   of framing (BOM, CR/LF, indentation), that checks the envelopes (control numbers, SE/GE/IEA
//!   counts) and names the segment number, id and element of every problem; memory does not grow
//!   with the input. 4010 interchanges are refused.
//!
//! Control numbers (ISA13, GS06, ST02) are supplied by the caller, which persists them; this
//! module only checks their ranges. Money is integer cents throughout; no floating point.
//! Output is checked independently by pyx12 in `.ci/x12-check.sh`.

pub mod claim837;
pub mod reader;
pub mod remit835;
pub mod writer;

pub use claim837::{
    Address, BillingProvider, Claim, ClaimForm, Facility, Frequency, Implementation, InstitutionalForm, Interchange, Line, Payer, Person,
    Receiver, ReleaseOfInformation, Sex, Submitter, Subscriber, Transaction837, Written837, build_interchange, write_interchange,
    write_transaction,
};
pub use reader::{OwnedSegment, ReadError, Segment as ReadSegment, Severity, X12Reader, parse_cents, read_all};
pub use writer::{
    Delimiters, Element, GsHeader, IsaHeader, Segment, SegmentBuilder, TransactionSummary, Usage, X12Error, X12Writer, d8, hhmm, money, rd8,
};
