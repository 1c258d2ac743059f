//! The official HL7 R4 examples in `../shared/corpora/fhir-r4/examples/` against the gateway's FHIR
//! validator: every example of a type the gateway validates passes; broken copies fail at the
//! right element.

use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use serde_json::{Value, json};
use wellness_gateway::fhir::FhirSchema;
use wellness_gateway::fhir::schema::VALIDATED_TYPES;

static SCHEMA: LazyLock<FhirSchema> =
    LazyLock::new(|| FhirSchema::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).expect("FHIR schema compiles"));

/// `WG_CORPORA_DIR`, else `../shared/corpora` next to the checkout. Missing corpora fail the test.
pub fn corpora_dir() -> PathBuf {
    let dir = std::env::var_os("WG_CORPORA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpora"));
    assert!(dir.join("fhir-r4/examples").is_dir(), "corpora not found at {} (set WG_CORPORA_DIR)", dir.display());
    dir
}

fn example(name: &str) -> Value {
    let path = corpora_dir().join("fhir-r4/examples").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn every_official_example_of_a_validated_type_passes() {
    let dir = corpora_dir().join("fhir-r4/examples");
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    let mut failures = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let Some((ty, _)) = name.split_once('-') else { continue };
        if !VALIDATED_TYPES.contains(&ty) {
            continue;
        }
        let resource: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(resource["resourceType"], ty, "{name}");
        if let Err(v) = SCHEMA.validate(&resource) {
            failures.push(format!("{name}: {v:?}"));
        }
        *checked.entry(ty.to_string()).or_default() += 1;
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The corpus README's counts for the types we care most about.
    for (ty, n) in [("Patient", 21), ("Encounter", 8), ("Condition", 12), ("Coverage", 3), ("Practitioner", 14), ("Provenance", 4)] {
        assert_eq!(checked.get(ty), Some(&n), "{ty}: {checked:?}");
    }
}

#[test]
fn broken_copies_fail_at_the_right_element() {
    let mut patient = example("Patient-example.json");
    patient["gender"] = json!("robot");
    patient["birthDate"] = json!("1974-13-25");
    let v = SCHEMA.validate(&patient).unwrap_err();
    assert!(v.iter().any(|v| v.pointer == "/gender"), "{v:?}");
    assert!(v.iter().any(|v| v.pointer == "/birthDate"), "{v:?}");

    let mut encounter = example("Encounter-example.json");
    encounter["period"] = json!({"start": 20261102});
    encounter["clas"] = encounter["class"].clone();
    let v = SCHEMA.validate(&encounter).unwrap_err();
    assert!(v.iter().any(|v| v.pointer == "/period/start"), "{v:?}");
    assert!(v.iter().any(|v| v.pointer.is_empty() && v.message.contains("clas")), "{v:?}");

    let mut condition = example("Condition-example.json");
    condition["code"]["coding"][0]["system"] = json!(["not", "a", "uri"]);
    let v = SCHEMA.validate(&condition).unwrap_err();
    assert!(v.iter().any(|v| v.pointer == "/code/coding/0/system"), "{v:?}");

    let mut coverage = example("Coverage-7546D.json");
    coverage.as_object_mut().unwrap().remove("resourceType");
    let v = SCHEMA.validate(&coverage).unwrap_err();
    assert_eq!(v[0].pointer, "/resourceType");
}

/// The corpus 837P / 837I files through the gateway's typed X12 layer: every segment read by the
/// streaming reader and written again by the typed writer (same delimiters) is the same text, so
/// reading and writing lose nothing; every CLM, SV1/SV2 and REF*6R value is kept.
#[test]
fn corpus_837_files_survive_the_typed_x12_layer() {
    use wellness_gateway::x12::{Element, Segment, X12Reader};
    let mut files = 0;
    let mut segments = 0;
    for folder in ["x12/837P", "x12/837I"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(corpora_dir().join(folder)).unwrap().map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path).unwrap();
            let mut reader = X12Reader::new(&bytes[..]);
            let mut in_file = 0;
            while let Some(Ok(seg)) = reader.next_segment() {
                let seg = seg.to_owned_segment();
                let Some(mut d) = reader.delimiters() else { break };
                d.segment_suffix = "";
                let seg = seg.as_segment();
                if seg.id() == "ISA" {
                    continue;
                }
                let text = seg.text().trim_end_matches(char::from(d.element));
                if text.contains(char::from(d.repetition)) {
                    continue;
                }
                let mut w = Segment::new(seg.id());
                for e in seg.elements() {
                    w = w.element(if e.is_empty() {
                        Element::Empty
                    } else if e.contains(char::from(d.component)) {
                        Element::Composite(e.split(char::from(d.component)).map(str::to_owned).collect())
                    } else {
                        Element::Simple(e.to_owned())
                    });
                }
                let rendered = w.render(&d).unwrap_or_else(|e| panic!("{} segment {}: {e}", path.display(), seg.number()));
                let rendered = rendered.trim_end_matches(d.segment_suffix).trim_end_matches(char::from(d.segment));
                assert_eq!(rendered, text, "{} segment {}", path.display(), seg.number());
                in_file += 1;
            }
            if in_file > 0 {
                files += 1;
                segments += in_file;
            }
        }
    }
    assert!(files >= 10 && segments > 500, "only {files} files / {segments} segments were read");
}

/// Every 835 of the corpus (`835/`, `edge/`, `large/`) read into typed remittances: per file
/// the transaction sets, CLP count, ΣCLP03 and ΣCLP04 equal `MANIFEST.tsv` to the cent
/// (a trailing `*` there marks a value read despite framing faults). Files the reader must
/// refuse (no ISA envelope; a 4010 interchange filed among the 835s) are refused, not misread.
#[test]
fn corpus_835_files_read_into_typed_remittances() {
    use wellness_gateway::x12::parse_cents;
    use wellness_gateway::x12::remit835::RemittanceReader;
    let root = corpora_dir();
    let manifest = std::fs::read_to_string(root.join("x12/MANIFEST.tsv")).unwrap();
    let refused: &[&str] =
        &["oopfactory__Example1.txt", "edi835parser__blue_cross_nc_sample.txt", "edi835parser-affect__exhaustive_sample.txt"];
    let mut checked = 0;
    for row in manifest.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (file, st01) = (cols[0], cols[1]);
        if st01 != "835" || file.contains("legacy-4010") {
            continue;
        }
        let bytes = std::fs::read(root.join(file)).unwrap();
        let mut reader = RemittanceReader::new(&bytes[..]);
        let (mut sets, mut claims, mut charge, mut paid, mut fatal) = (0usize, 0usize, 0i64, 0i64, false);
        while let Some(item) = reader.next() {
            match item {
                Ok(r) => {
                    sets += 1;
                    claims += r.claims.len();
                    charge += r.claims.iter().map(|c| c.charge_cents).sum::<i64>();
                    paid += r.claims_paid_cents();
                }
                Err(e) => {
                    assert!(e.is_fatal(), "{file}: {e}");
                    fatal = true;
                    break;
                }
            }
        }
        let name = file.rsplit('/').next().unwrap();
        if refused.contains(&name) {
            assert!(fatal, "{file} should be refused");
            continue;
        }
        assert!(!fatal, "{file} was refused");
        let num = |s: &str| s.trim_end_matches('*').to_owned();
        assert_eq!(sets.to_string(), num(cols[4]), "{file}: transaction sets");
        assert_eq!(claims.to_string(), num(cols[5]), "{file}: claims");
        assert_eq!(Some(charge), parse_cents(&num(cols[6])), "{file}: total charge");
        assert_eq!(Some(paid), parse_cents(&num(cols[7])), "{file}: total paid");
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} 835 files compared");
}

/// Every corpus 835 checked for posting (`remit::check`, the first pass of `POST
/// /api/v1/remittances` and `remit`): postable, or refused as a whole with each problem named
/// by segment number and id. Refused: 4010 interchanges, transactions without an ISA envelope,
/// and an interchange whose ISA is not fixed-width and whose IEA02 does not match ISA13 (the
/// typed read tolerates it; posting money from it is not).
#[test]
fn corpus_835_files_check_for_posting() {
    let root = corpora_dir();
    let manifest = std::fs::read_to_string(root.join("x12/MANIFEST.tsv")).unwrap();
    let refused = [
        ("oopfactory__Example1.txt", "segment 1 (ISA): X12 4010 is not supported"),
        ("pyx12__835_simple.txt", "segment 1 (ISA): X12 4010 is not supported"),
        ("edi835parser__blue_cross_nc_sample.txt", "segment 1 (ST): no ISA"),
        ("edi835parser-affect__exhaustive_sample.txt", "segment 1 (ST): no ISA"),
        ("edi835parser-affect__nevada_medicaid.txt", "segment 67 (IEA): IEA02"),
    ];
    let (mut ok, mut no) = (0, 0);
    for row in manifest.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        if cols[1] != "835" {
            continue;
        }
        let bytes = std::fs::read(root.join(cols[0])).unwrap();
        let name = cols[0].rsplit('/').next().unwrap();
        let result = wellness_gateway::remit::check(&bytes[..]);
        match refused.iter().find(|(f, _)| *f == name) {
            Some((_, why)) => {
                let problems = result.expect_err(name);
                assert!(problems.iter().any(|p| p.to_string().contains(why)), "{name}: {problems:?}");
                no += 1;
            }
            None => {
                let sets = result.unwrap_or_else(|p| panic!("{name} refused: {p:?}"));
                assert_eq!(sets.to_string(), cols[4].trim_end_matches('*'), "{name}: transaction sets");
                ok += 1;
            }
        }
    }
    assert!(ok >= 10 && no == refused.len(), "{ok} postable, {no} refused");
}
