//! FHIR R4 views of posted remittances, built from the stored rows when read (never stored,
//! so a payment of any size is posted without building them): a `ClaimResponse` per claim
//! payment (CLP) and a `PaymentReconciliation` per payment (BPR/TRN) with a detail per CLP and
//! per PLB adjustment (DOMAIN.md §2.4).

use serde_json::{Value, json};

use crate::claims::money;
use crate::fhir::instant;
use crate::store::{ClaimRow, LedgerRow, PaymentLineRow, PaymentRow, ProviderLedgerRow, RemittanceRow};

use super::codes::RemitCodes;

const ADJUDICATION: &str = "http://terminology.hl7.org/CodeSystem/adjudication";
const CARC_SYSTEM: &str = "https://x12.org/codes/claim-adjustment-reason-codes";
const GROUP_SYSTEM: &str = "https://x12.org/codes/claim-adjustment-group-codes";
const PLB_SYSTEM: &str = "urn:wellness-gateway:x12:plb-reason";
const PAYMENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/payment-type";
const PAYER_CLAIM_SYSTEM: &str = "urn:wellness-gateway:payer-claim-number";
const TRACE_SYSTEM: &str = "urn:wellness-gateway:x12:trn02";

fn usd(cents: i64) -> Value {
    json!({ "value": money(cents), "currency": "USD" })
}

fn category(code: &str) -> Value {
    json!({ "coding": [{ "system": ADJUDICATION, "code": code }] })
}

fn cas(codes: &RemitCodes, e: &LedgerRow) -> Value {
    let group = e.group_code.clone().unwrap_or_default();
    let reason = e.reason.clone().unwrap_or_default();
    json!({
        "category": { "coding": [{ "system": GROUP_SYSTEM, "code": group, "display": codes.group(&group) }] },
        "reason": { "coding": [{ "system": CARC_SYSTEM, "code": reason, "display": codes.carc(&reason).0 }] },
        "amount": usd(e.amount_cents)
    })
}

fn split(s: &str) -> Vec<&str> {
    s.split(':').filter(|x| !x.is_empty()).collect()
}

/// The ClaimResponse of one claim payment posted to `claim`.
pub fn claim_response(
    codes: &RemitCodes,
    rem: &RemittanceRow,
    p: &PaymentRow,
    claim: &ClaimRow,
    lines: &[PaymentLineRow],
    ledger: &[LedgerRow],
) -> Value {
    let claim_fhir: Value = serde_json::from_str(&claim.resource).unwrap_or(Value::Null);
    let (status_text, _) = codes.status(&p.status);
    let mut notes: Vec<Value> = Vec::new();
    let mut note = |code: &str| -> usize {
        if let Some(i) = notes.iter().position(|n| n["text"].as_str().is_some_and(|t| t.starts_with(&format!("{code}:")))) {
            return i + 1;
        }
        notes.push(json!({ "number": notes.len() + 1, "type": "display", "text": format!("{code}: {}", codes.rarc(code)) }));
        notes.len()
    };
    for code in split(&p.remarks) {
        note(code);
    }
    let mut items = Vec::new();
    let mut add_items = Vec::new();
    for l in lines {
        let mut adjudication = vec![
            json!({ "category": category("submitted"), "amount": usd(l.charge_cents) }),
            json!({ "category": category("benefit"), "amount": usd(l.paid_cents) }),
        ];
        if let Some(a) = l.allowed_cents {
            adjudication.push(json!({ "category": category("eligible"), "amount": usd(a) }));
        }
        adjudication.extend(ledger.iter().filter(|e| e.line_no == Some(l.line_no) && e.kind == "adjustment").map(|e| cas(codes, e)));
        let note_numbers: Vec<usize> = split(&l.remarks).into_iter().map(&mut note).collect();
        match l.claim_line_no {
            Some(seq) => {
                let mut item = json!({ "itemSequence": seq, "adjudication": adjudication });
                if !note_numbers.is_empty() {
                    item["noteNumber"] = json!(note_numbers);
                }
                items.push(item);
            }
            None => {
                let mut item = json!({
                    "productOrService": { "coding": [{ "system": "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets", "code": l.procedure_code }] },
                    "adjudication": adjudication
                });
                if !note_numbers.is_empty() {
                    item["noteNumber"] = json!(note_numbers);
                }
                add_items.push(item);
            }
        }
    }
    let claim_level: Vec<Value> = ledger.iter().filter(|e| e.line_no.is_none() && e.kind == "adjustment").map(|e| cas(codes, e)).collect();
    let mut r = json!({
        "resourceType": "ClaimResponse",
        "id": p.id,
        "status": "active",
        "type": claim_fhir.get("type").cloned().unwrap_or_else(|| json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": claim.form.as_str() }] })),
        "use": "claim",
        "patient": claim_fhir.get("patient").cloned().unwrap_or_else(|| json!({ "display": "unknown" })),
        "created": instant(p.posted_us),
        "insurer": claim_fhir.get("insurer").cloned().unwrap_or_else(|| json!({ "display": rem.payer_name })),
        "requestor": claim_fhir.get("provider").cloned().unwrap_or(Value::Null),
        "request": { "reference": format!("Claim/{}", claim.id) },
        "outcome": "complete",
        "disposition": format!("CLP02 {}: {status_text}", p.status),
        "total": [
            { "category": category("submitted"), "amount": usd(p.charge_cents) },
            { "category": category("benefit"), "amount": usd(p.paid_cents) }
        ],
        "payment": {
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/ex-paymenttype", "code": "complete" }] },
            "amount": usd(p.paid_cents),
            "identifier": { "system": TRACE_SYSTEM, "value": rem.trace_number }
        }
    });
    if r["requestor"].is_null()
        && let Some(o) = r.as_object_mut()
    {
        o.remove("requestor");
    }
    if let Some(d) = &rem.payment_date {
        r["payment"]["date"] = json!(d);
    }
    if let Some(n) = &p.payer_claim_number {
        r["identifier"] = json!([{ "system": PAYER_CLAIM_SYSTEM, "value": n }]);
    }
    if !items.is_empty() {
        r["item"] = json!(items);
    }
    if !add_items.is_empty() {
        r["addItem"] = json!(add_items);
    }
    if !claim_level.is_empty() {
        r["adjudication"] = json!(claim_level);
    }
    if p.patient_responsibility_cents != 0
        && let Some(t) = r["total"].as_array_mut()
    {
        t.push(json!({ "category": category("copay"), "amount": usd(p.patient_responsibility_cents) }));
    }
    if !notes.is_empty() {
        r["processNote"] = json!(notes);
    }
    r
}

/// The PaymentReconciliation of one payment: a detail per CLP (with its ClaimResponse when it
/// was matched) and per PLB adjustment.
pub fn payment_reconciliation(codes: &RemitCodes, rem: &RemittanceRow, payments: &[PaymentRow], plb: &[ProviderLedgerRow]) -> Value {
    let mut detail: Vec<Value> = payments
        .iter()
        .map(|p| {
            let mut d = json!({
                "identifier": { "system": "urn:wellness-gateway:x12:clp01", "value": p.pcn },
                "type": { "coding": [{ "system": PAYMENT_TYPE, "code": "payment" }] },
                "amount": usd(p.paid_cents)
            });
            if let Some(c) = &p.claim_id {
                d["request"] = json!({ "reference": format!("Claim/{c}") });
                d["response"] = json!({ "reference": format!("ClaimResponse/{}", p.id) });
            }
            d
        })
        .collect();
    detail.extend(plb.iter().map(|e| {
        let (text, _) = codes.plb(&e.reason);
        json!({
            "identifier": { "system": PLB_SYSTEM, "value": format!("{}{}", e.reason, e.reference.as_deref().map(|r| format!(":{r}")).unwrap_or_default()) },
            "type": { "coding": [{ "system": PAYMENT_TYPE, "code": "adjustment" }], "text": format!("PLB {}: {text}", e.reason) },
            // PLB amounts reduce the payment when positive; the detail shows what it adds.
            "amount": usd(-e.amount_cents)
        })
    }));
    let mut r = json!({
        "resourceType": "PaymentReconciliation",
        "id": rem.id,
        "identifier": [{ "system": TRACE_SYSTEM, "value": rem.trace_number }],
        "status": "active",
        "created": instant(rem.received_us),
        "paymentIssuer": { "display": rem.payer_name, "identifier": { "value": rem.payer } },
        "outcome": if rem.balanced == 1 { "complete" } else { "partial" },
        "disposition": if rem.balanced == 1 { "BPR02 balances with the claim payments and provider adjustments".to_string() }
            else { format!("out of balance: {}", rem.problems) },
        "paymentDate": rem.payment_date.clone().unwrap_or_else(|| instant(rem.received_us)[..10].to_string()),
        "paymentAmount": usd(rem.paid_cents),
        "paymentIdentifier": { "system": TRACE_SYSTEM, "value": rem.trace_number }
    });
    if !detail.is_empty() {
        r["detail"] = json!(detail);
    }
    r
}
