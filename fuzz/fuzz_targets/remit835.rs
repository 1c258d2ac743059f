//! Arbitrary bytes into the typed 835 reader (`src/x12/remit835.rs`).
//!
//! Checks, for every input: no panic; `next` ends (at most `len + 1` items, nothing after
//! `None` or after a fatal `Err`); every `Ok` remittance answers `balances()` (ΣCLP04 − ΣPLB
//! against BPR02) and the two sums, and its problems display; the reader's findings display.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wellness_gateway::x12::remit835::RemittanceReader;

fuzz_target!(|data: &[u8]| {
    let mut reader = RemittanceReader::new(data);
    let mut items = 0usize;
    let mut checksum = 0usize;
    let mut ended_by_error = false;
    while let Some(item) = reader.next() {
        items += 1;
        assert!(items <= data.len() + 1, "{items} remittances from {} bytes: the reader does not advance", data.len());
        assert!(!ended_by_error, "a remittance after a fatal error");
        match item {
            Ok(rem) => {
                checksum = checksum.wrapping_add(usize::from(rem.balances()));
                let sums = rem.claims_paid_cents().wrapping_sub(rem.provider_adjustments_cents());
                checksum = checksum.wrapping_add(sums as usize);
                checksum = checksum.wrapping_add(rem.claims.len() + rem.provider_adjustments.len());
                for p in &rem.problems {
                    checksum = checksum.wrapping_add(p.to_string().len());
                }
            }
            Err(e) => {
                assert!(e.is_fatal(), "a non-fatal Err: {e}");
                checksum = checksum.wrapping_add(e.to_string().len());
                ended_by_error = true;
            }
        }
    }
    assert!(reader.next().is_none(), "a remittance after the end");
    for f in reader.findings() {
        checksum = checksum.wrapping_add(f.to_string().len());
    }
    std::hint::black_box(checksum);
});
