//! Acknowledgements: X12 999 (implementation acknowledgement of a whole 837 transaction) and
//! 277CA (claim acknowledgement, one claim at a time) move claims to `accepted` or `rejected`,
//! with the reasons, and keep the payer's claim control number (277CA `REF*1K`) that a later
//! replacement or void needs. Read with the streaming reader; the same file twice changes
//! nothing the second time.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::store::{ClaimRow, Store, StoreError};
use crate::x12::{ReadError, X12Reader};

/// Statuses an acknowledgement may move a claim from.
const ACKNOWLEDGEABLE: &[&str] = &["batched", "submitted", "accepted"];

/// What one acknowledgement transaction did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct AckSummary {
    /// `999` or `277`.
    pub kind: String,
    /// ST02.
    pub control_number: String,
    /// Claims moved to accepted (CLM01).
    pub accepted: Vec<String>,
    /// Claims moved to rejected (CLM01).
    pub rejected: Vec<String>,
    /// Claims already in the acknowledged state (a file sent twice).
    pub unchanged: Vec<String>,
    /// References that name no claim or batch of this gateway.
    pub unmatched: Vec<String>,
}

/// The answer to one acknowledgement file.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct AckReport {
    /// One entry per 999 / 277 transaction set.
    pub transactions: Vec<AckSummary>,
    /// Envelope findings of the reader (segment number, id, element).
    pub findings: Vec<String>,
}

/// Why a file could not be read at all.
#[derive(Debug, thiserror::Error)]
pub enum AckError {
    /// Not readable X12 (names the segment).
    #[error("{0}")]
    Read(ReadError),
    /// Not a 999 or 277 transaction.
    #[error("segment {segment} (ST): ST01 {found:?} is not 999 or 277; send acknowledgements here")]
    Kind {
        /// Segment number.
        segment: usize,
        /// ST01.
        found: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A claim-level verdict found in the file.
#[derive(Debug)]
enum Verdict {
    /// 999: a whole transaction of the batch with this GS06 accepted (`true`) or rejected.
    Batch { group: String, accepted: bool, reasons: Vec<String> },
    /// 277CA: one claim.
    Claim { pcn: String, accepted: bool, reasons: Vec<String>, payer_claim_number: Option<String> },
}

/// One acknowledgement transaction set: kind (ST01), ST02, verdicts.
type AckSet = (String, String, Vec<Verdict>);
/// A 277CA claim being read: CLM01, (category, status) pairs, payer claim number.
type OpenClaim = Option<(String, Vec<(String, String)>, Option<String>)>;

/// The 277CA claim status categories that reject a claim (A3 returned as unprocessable, A4 not
/// found, A6 / A7 / A8 rejected for missing, invalid or relational data).
fn rejecting(category: &str) -> bool {
    matches!(category, "A3" | "A4" | "A6" | "A7" | "A8")
}

/// Reads the verdicts of every 999 / 277 transaction (pure: no store).
fn verdicts(bytes: &[u8]) -> Result<(Vec<AckSet>, Vec<String>), AckError> {
    let mut reader = X12Reader::new(bytes);
    let mut out: Vec<AckSet> = Vec::new();
    let mut group = String::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut claim: OpenClaim = None;
    // The 277CA hierarchy level being read (HL03): claims are reported under `PT` (patient).
    let mut level = String::new();
    let finish = |claim: &mut OpenClaim, list: &mut Vec<Verdict>| {
        if let Some((pcn, stc, icn)) = claim.take() {
            let rejected = stc.iter().any(|(cat, _)| rejecting(cat));
            let reasons = stc.iter().map(|(cat, code)| format!("STC {cat}:{code}")).collect();
            list.push(Verdict::Claim { pcn, accepted: !rejected && !stc.is_empty(), reasons, payer_claim_number: icn });
        }
    };
    while let Some(item) = reader.next_segment() {
        let seg = match item {
            Ok(s) => s,
            Err(e) if e.is_fatal() => return Err(AckError::Read(e)),
            Err(_) => continue,
        };
        match seg.id() {
            "ST" => {
                let kind = seg.element(1).to_string();
                if kind != "999" && kind != "277" {
                    return Err(AckError::Kind { segment: seg.number(), found: kind });
                }
                out.push((kind, seg.element(2).to_string(), Vec::new()));
            }
            "AK1" => group = seg.element(2).to_string(),
            "AK2" => reasons.clear(),
            "IK3" => reasons.push(format!(
                "segment {} at position {} in loop {}: error {}",
                seg.element(1),
                seg.element(2),
                seg.element(3),
                seg.element(4)
            )),
            "IK4" => reasons.push(format!("element {}: error {}", seg.element(1), seg.element(3))),
            "IK5" => {
                if let Some((_, _, list)) = out.last_mut() {
                    let code = seg.element(1);
                    let mut why = std::mem::take(&mut reasons);
                    if !matches!(code, "A" | "E") {
                        why.push(format!("IK5 {code} (transaction rejected; codes {})", seg.element(2)));
                    }
                    list.push(Verdict::Batch { group: group.clone(), accepted: matches!(code, "A" | "E"), reasons: why });
                }
            }
            "HL" => {
                if let Some((_, _, list)) = out.last_mut() {
                    finish(&mut claim, list);
                }
                level = seg.element(3).to_string();
            }
            "TRN" if seg.element(1) == "2" && level == "PT" && out.last().is_some_and(|(k, _, _)| k == "277") => {
                claim = Some((seg.element(2).to_string(), Vec::new(), None));
            }
            "STC" => {
                if let Some((_, stc, _)) = claim.as_mut() {
                    stc.push((seg.component(1, 1).to_string(), seg.component(1, 2).to_string()));
                    for k in [10, 11] {
                        if !seg.component(k, 1).is_empty() {
                            stc.push((seg.component(k, 1).to_string(), seg.component(k, 2).to_string()));
                        }
                    }
                }
            }
            "REF" if seg.element(1) == "1K" => {
                if let Some((_, _, icn)) = claim.as_mut() {
                    *icn = Some(seg.element(2).to_string());
                }
            }
            "SE" => {
                if let Some((_, _, list)) = out.last_mut() {
                    finish(&mut claim, list);
                }
            }
            _ => {}
        }
    }
    let findings = reader.findings().iter().map(ToString::to_string).collect();
    Ok((out, findings))
}

/// Ingests one 999 or 277CA file.
pub async fn ingest(store: &Store, bytes: &[u8], actor: &str) -> Result<AckReport, AckError> {
    let (transactions, findings) = verdicts(bytes)?;
    let mut report = AckReport { findings, ..AckReport::default() };
    let now = crate::store::now_us();
    for (kind, control, list) in transactions {
        let mut s = AckSummary { kind: kind.clone(), control_number: control, ..AckSummary::default() };
        for v in list {
            match v {
                Verdict::Batch { group, accepted, reasons } => {
                    let batch = match group.parse::<i64>() {
                        Ok(g) => store.batch_by_group(g).await?,
                        Err(_) => None,
                    };
                    let Some(batch) = batch else {
                        s.unmatched.push(format!("group {group}"));
                        continue;
                    };
                    let claims =
                        store.claims(&crate::store::ClaimFilter { batch_id: Some(&batch.id), ..Default::default() }, 100_000).await?;
                    let (to, why) = if accepted {
                        ("accepted", "999: transaction accepted".to_string())
                    } else {
                        ("rejected", format!("999: {}", reasons.join("; ")))
                    };
                    for c in claims {
                        apply(store, &mut s, &c, to, &why, actor, None, now).await?;
                    }
                }
                Verdict::Claim { pcn, accepted, reasons, payer_claim_number } => {
                    let Some(c) = store.claim_by_pcn(&pcn).await? else {
                        s.unmatched.push(pcn);
                        continue;
                    };
                    let to = if accepted { "accepted" } else { "rejected" };
                    let why = format!("277CA: {}", reasons.join("; "));
                    apply(store, &mut s, &c, to, &why, actor, payer_claim_number.as_deref(), now).await?;
                }
            }
        }
        dedup(&mut s);
        report.transactions.push(s);
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn apply(
    store: &Store,
    s: &mut AckSummary,
    c: &ClaimRow,
    to: &str,
    why: &str,
    actor: &str,
    icn: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    // A claim already replaced or voided here: keep the payer's number; a rejection means the
    // payer never had it, so what was to follow it is withdrawn and the session billed again.
    if matches!(c.status.as_str(), "replaced" | "voided") {
        let rejected = to == "rejected";
        if store.ack_retired(&c.id, rejected, icn, why, actor, now).await? {
            if rejected { s.rejected.push(c.pcn.clone()) } else { s.accepted.push(c.pcn.clone()) }
        } else {
            s.unchanged.push(c.pcn.clone());
        }
        return Ok(());
    }
    // A 999 acceptance does not undo a 277CA rejection; a 277CA acceptance after the 999's
    // records what it adds (the payer's claim number).
    let news = icn.is_some_and(|n| c.payer_claim_number.as_deref() != Some(n));
    let from: &[&str] = match (to, c.status == to) {
        ("accepted", true) if news => &["accepted"],
        ("accepted", _) => &ACKNOWLEDGEABLE[..2],
        _ => ACKNOWLEDGEABLE,
    };
    let why = if news { format!("{why}; payer claim number {}", icn.unwrap_or_default()) } else { why.to_string() };
    if (c.status == to && !news) || !store.claim_transition(&c.id, from, to, &why, actor, icn, now).await? {
        s.unchanged.push(c.pcn.clone());
    } else if to == "accepted" {
        s.accepted.push(c.pcn.clone());
    } else {
        s.rejected.push(c.pcn.clone());
    }
    Ok(())
}

fn dedup(s: &mut AckSummary) {
    for list in [&mut s.accepted, &mut s.rejected, &mut s.unchanged, &mut s.unmatched] {
        let set: BTreeSet<String> = list.drain(..).collect();
        list.extend(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type R = Result<(), Box<dyn std::error::Error>>;

    fn corpus(name: &str) -> Option<Vec<u8>> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora/x12/acks").join(name)).ok()
    }

    #[test]
    fn the_corpus_acknowledgements_read_as_expected() -> R {
        let Some(bytes) = corpus("imsweb__x12_999_rejected.txt") else { return Ok(()) };
        let (t, _) = verdicts(&bytes)?;
        assert!(
            matches!(&t[0].2[..], [Verdict::Batch { group, accepted: false, reasons }] if group == "28" && reasons.iter().any(|r| r.contains("segment NM")))
        );
        let Some(bytes) = corpus("imsweb__x12_999_accepted.txt") else { return Ok(()) };
        let (t, _) = verdicts(&bytes)?;
        assert!(matches!(&t[0].2[..], [Verdict::Batch { group, accepted: true, .. }] if group == "17456"));
        let Some(bytes) = corpus("imsweb__x12_277CA_rejected.txt") else { return Ok(()) };
        let (t, _) = verdicts(&bytes)?;
        assert!(
            matches!(&t[0].2[..], [Verdict::Claim { pcn, accepted: false, payer_claim_number: Some(icn), .. }] if pcn == "3920394930203" && icn == "1107000000001120")
        );
        let Some(bytes) = corpus("imsweb__x12_277CA_accepted.txt") else { return Ok(()) };
        let (t, _) = verdicts(&bytes)?;
        assert!(matches!(&t[0].2[..], [Verdict::Claim { pcn, accepted: true, .. }] if pcn == "5781"));
        Ok(())
    }

    #[test]
    fn other_transactions_are_refused_with_the_segment() {
        let bytes = b"ISA*00*          *00*          *ZZ*A              *ZZ*B              *250101*1200*^*00501*000000001*0*T*:~GS*HP*A*B*20250101*1200*1*X*005010X221A1~ST*835*0001*005010X221A1~SE*2*0001~GE*1*1~IEA*1*000000001~";
        let r = verdicts(bytes);
        assert!(matches!(&r, Err(AckError::Kind { segment: 3, found }) if found == "835"), "{r:?}");
    }
}
