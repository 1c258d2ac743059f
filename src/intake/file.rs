//! `wellness-gateway import FILE`: streams a CSV or NDJSON file through the same pipeline as the
//! API in chunks (memory stays flat whatever the file size), shows a progress bar, and writes a
//! per-row error report next to the file (`FILE.errors.csv`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use super::csv::CsvLayout;
use super::{RawFormat, RawRecord};
use crate::intake::batch::parse_record;
use crate::pipeline::{self, Pipeline, Submitter};
use crate::store::Store;

/// File format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FileFormat {
    /// Comma-separated, header row of dotted field paths.
    Csv,
    /// One JSON session per line.
    Ndjson,
}

impl FileFormat {
    /// Guesses from the extension (`.csv`; `.ndjson`, `.jsonl`).
    pub fn from_path(path: &Path) -> Option<FileFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(FileFormat::Csv),
            "ndjson" | "jsonl" => Some(FileFormat::Ndjson),
            _ => None,
        }
    }
}

/// Options of an import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Format (guessed from the extension when `None`).
    pub format: Option<FileFormat>,
    /// Records per transaction.
    pub chunk_size: usize,
    /// Only accept records of this LEA.
    pub lea: Option<String>,
    /// Show a progress bar.
    pub progress: bool,
}

/// Totals of an import.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ImportSummary {
    /// Records read.
    pub received: usize,
    /// New sessions.
    pub created: usize,
    /// New versions.
    pub amended: usize,
    /// Identical re-submissions.
    pub duplicate: usize,
    /// Refused rows (listed in the report).
    pub rejected: usize,
    /// Where the error report was written.
    pub report: PathBuf,
}

fn bytecount(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|b| **b == b'\n').count() as u64
}

/// The report path for an input file: `sessions.csv` -> `sessions.csv.errors.csv`.
pub fn report_path(input: &Path) -> PathBuf {
    let mut name = input.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".errors.csv");
    input.with_file_name(name)
}

/// A chunk's write, running while the next chunk is validated and mapped.
type PendingWrite = tokio::task::JoinHandle<Result<super::receipt::BatchReceipt, crate::store::StoreError>>;

struct Importer<'a> {
    pipeline: &'a Pipeline,
    store: &'a Store,
    who: Submitter,
    report: csv::Writer<File>,
    summary: ImportSummary,
    batch_id: String,
    pending: Option<PendingWrite>,
}

impl Importer<'_> {
    /// Validates and maps `chunk` (on a blocking thread) while the previous chunk is written,
    /// then waits for that write and queues this chunk's. Two chunks are in flight at most, and
    /// nothing is written after a failed write.
    async fn flush(&mut self, chunk: &mut Vec<RawRecord>) -> anyhow::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(chunk);
        let (pipe, who) = (self.pipeline.clone(), self.who.clone());
        let prepared =
            tokio::task::spawn_blocking(move || pipe.prepare(&who, records, chrono::Utc::now())).await.context("validation task failed")?;
        self.settle().await?;
        let (store, who, batch_id) = (self.store.clone(), self.who.clone(), self.batch_id.clone());
        self.pending = Some(tokio::spawn(async move { pipeline::commit(&store, &who, prepared, false, Some(batch_id)).await }));
        Ok(())
    }

    /// Waits for the queued write, if any, and adds its receipt to the summary and the report.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let receipt = pending.await.context("write task failed")??;
        self.summary.received += receipt.received;
        self.summary.created += receipt.created;
        self.summary.amended += receipt.amended;
        self.summary.duplicate += receipt.duplicate;
        self.summary.rejected += receipt.rejected;
        for r in receipt.results.iter().filter(|r| r.outcome.is_some()) {
            for issue in r.outcome.iter().flat_map(|o| o.issue.iter()) {
                self.report.write_record([
                    r.line.map(|l| l.to_string()).unwrap_or_default(),
                    r.source_id.clone().unwrap_or_default(),
                    issue.expression.first().cloned().unwrap_or_default(),
                    issue.diagnostics.clone().unwrap_or_default(),
                ])?;
            }
        }
        self.report.flush()?;
        Ok(())
    }
}

/// Imports a file; see the module doc.
pub async fn import_file(pipeline: &Pipeline, store: &Store, path: &Path, options: &ImportOptions) -> anyhow::Result<ImportSummary> {
    let format = options.format.or_else(|| FileFormat::from_path(path)).with_context(|| {
        format!("cannot tell the format of {} from its extension: pass --format csv or --format ndjson", path.display())
    })?;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let total = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if options.progress { ProgressBar::new(total) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let report_file = report_path(path);
    let mut report = csv::Writer::from_path(&report_file).with_context(|| format!("creating {}", report_file.display()))?;
    report.write_record(["line", "source_id", "field", "message"])?;
    let mut importer = Importer {
        pipeline,
        store,
        who: Submitter { client_id: "cli:import".into(), lea: options.lea.clone(), request_id: None },
        report,
        summary: ImportSummary { report: report_file, ..Default::default() },
        batch_id: uuid::Uuid::new_v4().to_string(),
        pending: None,
    };
    let chunk_size = options.chunk_size.max(1);
    let mut chunk = Vec::with_capacity(chunk_size);
    let mut index = 0usize;
    match format {
        FileFormat::Ndjson => {
            let mut reader = BufReader::with_capacity(1 << 20, file);
            let mut line = Vec::with_capacity(4096);
            let mut line_no = 0u64;
            loop {
                line.clear();
                let n = reader.read_until(b'\n', &mut line)?;
                if n == 0 {
                    break;
                }
                line_no += 1;
                bar.inc(n as u64);
                let mut bytes: &[u8] = &line;
                if line_no == 1 {
                    bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
                }
                let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
                let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
                if bytes.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                chunk.push(RawRecord {
                    index,
                    line: Some(line_no),
                    raw: bytes.to_vec(),
                    format: RawFormat::Json,
                    parsed: parse_record(bytes),
                });
                index += 1;
                if chunk.len() == chunk_size {
                    importer.flush(&mut chunk).await?;
                }
            }
        }
        FileFormat::Csv => {
            // A second handle reads each row's exact bytes in lockstep with the CSV parser.
            let mut raw_reader = BufReader::with_capacity(1 << 20, File::open(path)?);
            let mut reader = csv::ReaderBuilder::new().flexible(false).from_reader(BufReader::with_capacity(1 << 20, file));
            let headers: Vec<String> = reader.headers().context("reading the CSV header row")?.iter().map(str::to_owned).collect();
            let layout = CsvLayout::from_headers(pipeline.validator.schemas().session_document(), &headers).map_err(anyhow::Error::msg)?;
            let mut consumed = 0u64;
            // Lines are counted from the bytes themselves (1 = header line).
            let mut newlines = 0u64;
            let mut record = csv::StringRecord::new();
            loop {
                let start = reader.position().byte();
                let more = match reader.read_record(&mut record) {
                    Ok(more) => more,
                    Err(e) => anyhow::bail!("{} is not readable CSV near byte {start}: {e}", path.display()),
                };
                if !more {
                    break;
                }
                let end = reader.position().byte();
                // Skip the header and anything before this row, then take the row's bytes.
                let mut skipped = Vec::new();
                (&mut raw_reader).take(start - consumed).read_to_end(&mut skipped)?;
                newlines += bytecount(&skipped);
                let mut raw = Vec::with_capacity(usize::try_from(end - start).unwrap_or(0));
                (&mut raw_reader).take(end - start).read_to_end(&mut raw)?;
                consumed = end;
                bar.set_position(end);
                let leading = raw.iter().take_while(|b| **b == b'\n' || **b == b'\r').count();
                let line = Some(newlines + bytecount(&raw[..leading]) + 1);
                newlines += bytecount(&raw);
                raw.drain(..leading);
                while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    raw.pop();
                }
                let parsed = Ok(layout.row_to_value(&record));
                chunk.push(RawRecord { index, line, raw, format: RawFormat::Csv, parsed });
                index += 1;
                if chunk.len() == chunk_size {
                    importer.flush(&mut chunk).await?;
                }
            }
        }
    }
    importer.flush(&mut chunk).await?;
    importer.settle().await?;
    bar.finish_and_clear();
    Ok(importer.summary)
}
