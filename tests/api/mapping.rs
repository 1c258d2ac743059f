//! Sessions mapped through the shipped `mappings/` files: the resources produced, determinism,
//! labels, overrides for one LEA, and mapping-file errors with file, line and key.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use serde_json::{Value, json};
use wellness_gateway::fhir::FhirSchema;
use wellness_gateway::mapping::{MapError, Mapper, MappingSet, SessionVersion};
use wellness_gateway::settings::Settings;
use wellness_gateway::validate::Validator;

use crate::helpers::{copy_mappings, repo_path, test_settings};

static FHIR: LazyLock<Arc<FhirSchema>> = LazyLock::new(|| Arc::new(FhirSchema::load(&repo_path("schemas")).unwrap()));

fn example() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_path("schemas/examples/valid/session.json")).unwrap()).unwrap()
}

struct Rig {
    settings: Arc<Settings>,
    validator: Validator,
    mapper: Mapper,
}

fn rig(mappings: &Path) -> anyhow::Result<Rig> {
    let mut s = test_settings("sqlite::memory:");
    s.rules.mappings_dir = mappings.to_path_buf();
    let settings = Arc::new(s);
    let validator = Validator::new(&repo_path("schemas"), settings.clone())?;
    let mapper = Mapper::load(&settings, validator.schemas().session_document(), FHIR.clone())?;
    Ok(Rig { settings, validator, mapper })
}

impl Rig {
    fn map_with(&self, set: &MappingSet, record: &Value) -> Result<Vec<Value>, MapError> {
        let valid = self.validator.validate(record, chrono::Utc::now()).expect("valid session");
        let v = SessionVersion {
            valid: &valid,
            record,
            version: 1,
            content_sha256: "c0ffee",
            raw_sha256: "beef",
            received_at: chrono::DateTime::parse_from_rfc3339("2026-11-03T08:00:00Z").unwrap().to_utc(),
        };
        self.mapper.map_session(&self.settings, set, &v).map(|m| m.resources)
    }
    fn map(&self, record: &Value) -> Result<Vec<Value>, MapError> {
        let set = self.mapper.for_site(record["site"].as_str().unwrap());
        self.map_with(&set, record)
    }
}

fn of_type<'a>(resources: &'a [Value], ty: &str) -> Vec<&'a Value> {
    resources.iter().filter(|r| r["resourceType"] == ty).collect()
}

fn labels(r: &Value) -> Vec<String> {
    r["meta"]["security"].as_array().map(|a| a.iter().map(|l| l["code"].as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn a_session_maps_to_its_resources_deterministically() {
    let rig = rig(&repo_path("mappings")).unwrap();
    let record = example();
    let resources = rig.map(&record).unwrap();
    let count = |t: &str| of_type(&resources, t).len();
    assert_eq!(
        [count("Patient"), count("Practitioner"), count("PractitionerRole"), count("Organization"), count("Location")],
        [1, 1, 1, 2, 1]
    );
    assert_eq!([count("Encounter"), count("Condition"), count("Coverage"), count("Provenance")], [1, 2, 1, 1]);

    let enc = of_type(&resources, "Encounter")[0];
    assert_eq!(enc["status"], "finished");
    assert_eq!(enc["class"]["code"], "AMB");
    assert_eq!(enc["serviceProvider"]["reference"], "Organization/fqhc-demo");
    assert_eq!(enc["length"]["value"], 45);
    let patient = of_type(&resources, "Patient")[0];
    assert_eq!(enc["subject"]["reference"], format!("Patient/{}", patient["id"].as_str().unwrap()));
    let condition_refs: Vec<String> =
        of_type(&resources, "Condition").iter().map(|c| format!("Condition/{}", c["id"].as_str().unwrap())).collect();
    let dx_refs: Vec<String> =
        enc["diagnosis"].as_array().unwrap().iter().map(|d| d["condition"]["reference"].as_str().unwrap().to_string()).collect();
    assert_eq!(condition_refs.len(), dx_refs.len());
    assert!(condition_refs.iter().all(|r| dx_refs.contains(r)));
    let prov = of_type(&resources, "Provenance")[0];
    assert_eq!(prov["target"].as_array().unwrap().len(), resources.len() - 1);
    assert!(prov.to_string().contains("beef"), "provenance carries the SHA-256 of the submitted bytes");

    // Labels: counselling R+BH everywhere clinical; PSY only with a psychiatric code.
    assert_eq!(labels(enc), ["R", "BH", "PSY"]);
    let z_code = of_type(&resources, "Condition").into_iter().find(|c| c["code"]["coding"][0]["code"] == "Z63.8").unwrap();
    assert_eq!(labels(z_code), ["R", "BH"]);
    assert!(labels(patient).is_empty());

    // Same input, same output; the same student at another session is the same Patient.
    assert_eq!(rig.map(&record).unwrap(), resources);
    let mut other = record.clone();
    other["source_id"] = json!("LEADEMO-2026-000999");
    let again = rig.map(&other).unwrap();
    assert_eq!(of_type(&again, "Patient")[0]["id"], patient["id"]);
    assert_ne!(of_type(&again, "Encounter")[0]["id"], enc["id"]);
}

#[test]
fn family_telehealth_substance_use_and_minor_consent() {
    let rig = rig(&repo_path("mappings")).unwrap();
    let mut record = example();
    record["service"]["type"] = json!("family-counseling");
    record["service"]["modality"] = json!("video");
    record["service"]["participants"] = json!([{ "relationship": "mother", "given_name": "Rosa", "family_name": "Lopez" }]);
    record["diagnoses"] = json!(["F12.10"]);
    record["treatment_consent"] = json!("minor-self");
    record["student"].as_object_mut().unwrap().remove("medi_cal_cin");
    let resources = rig.map(&record).unwrap();
    let enc = of_type(&resources, "Encounter")[0];
    assert_eq!(enc["class"]["code"], "VR");
    let related = of_type(&resources, "RelatedPerson");
    assert_eq!(related.len(), 1);
    assert_eq!(related[0]["relationship"][0]["coding"][0]["code"], "MTH");
    assert!(
        enc["participant"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["individual"]["reference"] == format!("RelatedPerson/{}", related[0]["id"].as_str().unwrap()))
    );
    assert_eq!(labels(enc), ["R", "BH", "SUD", "NORDSCLCD", "minor-consent"]);
    assert!(of_type(&resources, "Coverage").is_empty(), "no CIN, no Coverage");
    let patient = of_type(&resources, "Patient")[0];
    assert_eq!(patient["identifier"].as_array().unwrap().len(), 1, "no CIN identifier half-made: {patient}");
}

#[test]
fn an_override_for_one_lea_leaves_the_other_alone() {
    let dir = copy_mappings();
    let over = dir.path().join("overrides/lea-other/tables");
    std::fs::create_dir_all(&over).unwrap();
    std::fs::write(
        over.join("service-types.toml"),
        "key = \"session.service.type\"\n[entries.individual-counseling]\ntype = { system = \"urn:county:other\", code = \"IC-1\", display = \"Individual\" }\nservice_type = { system = \"urn:county:other\", code = \"C\", display = \"Counselling\" }\n",
    )
    .unwrap();
    let rig = rig(dir.path()).unwrap();
    let demo = rig.map(&example()).unwrap();
    assert_eq!(of_type(&demo, "Encounter")[0]["type"][0]["coding"][0]["code"], "75516001");

    let mut other = example();
    other["lea"] = json!("lea-other");
    other["site"] = json!("site-other-es");
    other["clinician"]["npi"] = json!("1245319599");
    let resources = match rig.map(&other) {
        Ok(r) => r,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(of_type(&resources, "Encounter")[0]["type"][0]["coding"][0]["code"], "IC-1");
    // Entries the override does not name keep the defaults.
    other["service"]["type"] = json!("group-counseling");
    other["service"]["group_size"] = json!(4);
    other["service"]["group_id"] = json!("G-7");
    let resources = rig.map(&other).unwrap();
    assert_eq!(of_type(&resources, "Encounter")[0]["type"][0]["coding"][0]["code"], "76168009");
    // `map --org` style: defaults plus one organisation's overrides.
    let set = rig.mapper.for_org("lea-other").unwrap();
    assert_eq!(set.layers, ["default", "lea-other"]);
}

fn load_error(edit: impl FnOnce(&Path)) -> String {
    let dir = copy_mappings();
    edit(dir.path());
    match rig(dir.path()) {
        Ok(_) => panic!("broken mappings loaded"),
        Err(e) => format!("{e:#}"),
    }
}

fn replace(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn mapping_file_errors_name_file_line_and_key() {
    let e = load_error(|d| replace(&d.join("fhir/encounter.toml"), "session.service.start", "session.service.begin"));
    assert!(e.contains("encounter.toml:") && e.contains("unknown source field `session.service.begin`"), "{e}");

    let e = load_error(|d| replace(&d.join("fhir/encounter.toml"), "path = \"period.start\"", "path = \"period.begin\""));
    assert!(e.contains("encounter.toml:") && e.contains("unknown target element `period.begin`"), "{e}");

    let e = load_error(|d| replace(&d.join("tables/modality.toml"), "system = \"http://terminology.hl7.org/CodeSystem/v3-ActCode\", ", ""));
    assert!(e.contains("modality.toml:") && e.contains("code without a system"), "{e}");

    let e = load_error(|d| {
        let p = d.join("tables/sex.toml");
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace("[entries.unknown]\ngender = \"unknown\"\n", "")).unwrap();
    });
    assert!(e.contains("sex.toml") && e.contains("missing table entry") && e.contains("`unknown`"), "{e}");

    let e = load_error(|d| replace(&d.join("fhir/patient.toml"), "resource = \"Patient\"", "resource = \"Patient\"\ncolour = \"blue\""));
    assert!(e.contains("patient.toml:4") && e.contains("colour"), "line of the unknown key: {e}");

    let e = load_error(|d| replace(&d.join("fhir/encounter.toml"), "path = \"type[+]\"", "path = \"type\""));
    assert!(e.contains("write `type[+]`"), "{e}");

    let e = load_error(|d| std::fs::create_dir_all(d.join("overrides/lea-nowhere")).unwrap());
    assert!(e.contains("lea-nowhere") && e.contains("not a configured organisation"), "{e}");
}

#[test]
fn a_value_without_a_table_entry_is_refused_naming_field_and_file() {
    let dir = copy_mappings();
    std::fs::write(
        dir.path().join("tables/site-programs.toml"),
        "key = \"session.site\"\n[entries.site-demo-hs]\nprogram = { system = \"urn:county:program\", code = \"HS\", display = \"High school program\" }\n",
    )
    .unwrap();
    let enc = dir.path().join("fhir/encounter.toml");
    let text = std::fs::read_to_string(&enc).unwrap();
    std::fs::write(
        &enc,
        format!("{text}\n[[element]]\npath = \"type[+]\"\nfrom = \"session.site\"\ntable = \"site-programs\"\ncolumn = \"program\"\n"),
    )
    .unwrap();
    let rig = rig(dir.path()).unwrap();
    assert!(rig.map(&example()).is_ok());
    let mut record = example();
    record["site"] = json!("site-demo-ms");
    match rig.map(&record) {
        Err(MapError::Missing(m)) => {
            assert_eq!(m.field, "session.site");
            assert_eq!(m.pointer, "/site");
            assert_eq!(m.table, "site-programs");
            assert!(m.file.ends_with("site-programs.toml"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_invalid_produced_resource_is_a_mapping_error_with_its_path() {
    let dir = copy_mappings();
    replace(&dir.path().join("fhir/encounter.toml"), "value = \"finished\"", "value = \"done-and-dusted\"");
    let rig = rig(dir.path()).unwrap();
    match rig.map(&example()) {
        Err(MapError::Invalid { resource_type, violations, .. }) => {
            assert_eq!(resource_type, "Encounter");
            assert!(violations.iter().any(|v| v.pointer == "/status"), "{violations:?}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_map_command_prints_a_transaction_bundle() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wellness-gateway"))
        .current_dir(repo_path(""))
        .env("WG__LOG__LEVEL", "error")
        .args(["map", "schemas/examples/valid/session.json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bundle: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(bundle["type"], "transaction");
    assert_eq!(FHIR.validate(&bundle), Ok(()));
    assert!(bundle["entry"].as_array().unwrap().iter().all(|e| e["request"]["method"] == "PUT"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wellness-gateway"))
        .current_dir(repo_path(""))
        .args(["map", "schemas/examples/valid/session.json", "--org", "lea-nowhere"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
