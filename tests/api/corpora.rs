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
