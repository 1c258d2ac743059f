//! NDJSON export files: written one batch of lines at a time (the caller runs these blocking
//! calls on the blocking pool), optionally gzip-compressed, and read back line by line.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// The folder of one job's files.
pub fn job_dir(root: &Path, job_id: &str) -> PathBuf {
    root.join(job_id)
}

/// A file's name: `<seq>.<Type>.ndjson[.gz]` (the sequence keeps names unique and sorted).
pub fn file_name(seq: i64, resource_type: &str, gzip: bool) -> String {
    format!("{seq:05}.{resource_type}.ndjson{}", if gzip { ".gz" } else { "" })
}

/// The students whose resources an export file holds (for its AuditEvent and the closing consent
/// recheck), kept compactly while the file is written: a file holds up to
/// `export.max_file_resources` lines, and over a million sessions an open file per type listed
/// tens of thousands of students each. Ids in the gateway's own form (lowercase hyphenated UUIDs,
/// as mapping makes them) are kept as 16-byte numbers, any other id as text.
#[derive(Debug, Default)]
pub struct PatientSet {
    uuids: BTreeSet<u128>,
    other: BTreeSet<String>,
}

impl PatientSet {
    /// Adds a student.
    pub fn insert(&mut self, id: &str) {
        match canonical_uuid(id) {
            Some(n) => {
                self.uuids.insert(n);
            }
            None => {
                if !self.other.contains(id) {
                    self.other.insert(id.to_string());
                }
            }
        }
    }

    /// The students as a sorted JSON array of ids (as stored in `export_files.patients`).
    pub fn to_json(&self) -> String {
        let mut ids: Vec<String> =
            self.uuids.iter().map(|n| uuid::Uuid::from_u128(*n).hyphenated().to_string()).chain(self.other.iter().cloned()).collect();
        ids.sort_unstable();
        serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
    }
}

/// The number an id stands for when it is a UUID written exactly as [`uuid::Uuid`] writes one
/// (lowercase, hyphenated), so that it is written back unchanged.
fn canonical_uuid(id: &str) -> Option<u128> {
    let u = uuid::Uuid::try_parse(id).ok()?;
    let mut buf = uuid::Uuid::encode_buffer();
    (u.hyphenated().encode_lower(&mut buf) == id).then(|| u.as_u128())
}

enum Sink {
    Plain(BufWriter<File>),
    Gzip(GzEncoder<BufWriter<File>>),
}

/// One NDJSON file being written.
pub struct NdjsonFile {
    path: PathBuf,
    sink: Sink,
    /// Lines written.
    pub lines: u64,
    /// Uncompressed bytes written (the split size counts these).
    pub raw_bytes: u64,
}

impl NdjsonFile {
    /// Creates (truncates) the file.
    pub fn create(path: PathBuf, gzip: bool) -> std::io::Result<NdjsonFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = BufWriter::with_capacity(256 * 1024, File::create(&path)?);
        let sink = if gzip { Sink::Gzip(GzEncoder::new(file, Compression::fast())) } else { Sink::Plain(file) };
        Ok(NdjsonFile { path, sink, lines: 0, raw_bytes: 0 })
    }

    /// Appends lines (each one JSON document without a newline).
    pub fn write_lines<'l>(&mut self, lines: impl IntoIterator<Item = &'l str>) -> std::io::Result<()> {
        for line in lines {
            let w: &mut dyn Write = match &mut self.sink {
                Sink::Plain(w) => w,
                Sink::Gzip(w) => w,
            };
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")?;
            self.lines += 1;
            self.raw_bytes += line.len() as u64 + 1;
        }
        Ok(())
    }

    /// Finishes, syncs to disk and returns (path, bytes on disk).
    pub fn finish(self) -> std::io::Result<(PathBuf, u64)> {
        let file = match self.sink {
            Sink::Plain(w) => w.into_inner().map_err(|e| e.into_error())?,
            Sink::Gzip(w) => w.finish()?.into_inner().map_err(|e| e.into_error())?,
        };
        file.sync_all()?;
        let bytes = file.metadata()?.len();
        Ok((self.path, bytes))
    }
}

/// Reads an export file's lines (decompressing `.gz` files).
pub fn open_lines(path: &Path) -> std::io::Result<impl Iterator<Item = std::io::Result<String>> + Send + use<>> {
    let file = File::open(path)?;
    let reader: Box<dyn Read + Send> =
        if path.extension().is_some_and(|e| e == "gz") { Box::new(GzDecoder::new(BufReader::new(file))) } else { Box::new(file) };
    Ok(BufReader::with_capacity(256 * 1024, reader).lines())
}

/// Removes a job's folder (nothing to do when it is already gone).
pub fn remove_job_dir(root: &Path, job_id: &str) -> std::io::Result<()> {
    match std::fs::remove_dir_all(job_dir(root, job_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_plain_and_gzip() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        for gzip in [false, true] {
            let path = job_dir(dir.path(), "job").join(file_name(1, "Encounter", gzip));
            let mut f = NdjsonFile::create(path.clone(), gzip)?;
            f.write_lines(["{\"a\":1}", "{\"b\":\"x\\ny\"}"])?;
            assert_eq!((f.lines, f.raw_bytes), (2, 8 + 13));
            let (p, bytes) = f.finish()?;
            assert!(bytes > 0);
            let lines: Vec<String> = open_lines(&p)?.collect::<Result<_, _>>()?;
            assert_eq!(lines, ["{\"a\":1}", "{\"b\":\"x\\ny\"}"]);
        }
        remove_job_dir(dir.path(), "job")?;
        remove_job_dir(dir.path(), "job")?;
        assert!(!job_dir(dir.path(), "job").exists());
        Ok(())
    }

    #[test]
    fn patient_sets_list_every_id_once_sorted_and_unchanged() -> Result<(), serde_json::Error> {
        let mut set = PatientSet::default();
        for id in [
            "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "pat-7",
            "0012aa33-c368-5685-9ec1-72ef6fb0987c",
            "F47AC10B-58CC-4372-A567-0E02B2C3D479",
            "f47ac10b58cc4372a5670e02b2c3d479",
            "f47ac10b-58cc-4372-a567-0e02b2c3d479",
            "pat-7",
            "",
        ] {
            set.insert(id);
        }
        let ids: Vec<String> = serde_json::from_str(&set.to_json())?;
        assert_eq!(
            ids,
            [
                "",
                "0012aa33-c368-5685-9ec1-72ef6fb0987c",
                "F47AC10B-58CC-4372-A567-0E02B2C3D479",
                "f47ac10b-58cc-4372-a567-0e02b2c3d479",
                "f47ac10b58cc4372a5670e02b2c3d479",
                "pat-7"
            ]
        );
        assert_eq!(PatientSet::default().to_json(), "[]");
        Ok(())
    }
}
