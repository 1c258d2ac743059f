//! The export workers: take a job under a lease, write its files, record each with a checkpoint,
//! re-judge what consent changes touched, complete; and the cleanup of expired and cancelled
//! jobs' files. See the module doc of [`crate::export`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::files::{NdjsonFile, PatientSet, file_name, job_dir, open_lines, remove_job_dir};
use super::{COMPARTMENT, Checkpoint, Level, Params};
use crate::consent::ConsentRules;
use crate::domain::PurposeOfUse;
use crate::fhir::search::{Criterion, Cursor, DateCmp, Prefix, SearchRegistry, SearchRequest, Sort};
use crate::serve::{DecisionFacts, FactsCache, Parsed, Partner, Prefetched};
use crate::settings::Settings;
use crate::store::{ExportFileRow, ExportJobRow, Store, StoreError, StoredResource};

/// A consent change is stamped when its request started and committed a little later (and
/// instances' clocks differ): changes are looked for this far before the time of interest.
pub const CONSENT_CLOCK_MARGIN_US: i64 = 60_000_000;

/// Students per query when a pass goes student by student.
const CHUNK: usize = 100;

/// Why a job stopped before completing.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The job was cancelled, or another runner took it over: stop quietly.
    #[error("the job is no longer this runner's")]
    Lost,
    /// The database failed: the job stays leased and is resumed once the lease runs out.
    #[error("database error while exporting")]
    Store(#[from] StoreError),
    /// The audit trail could not be written: like a database error, the job is resumed later.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// Files could not be written or read: the job fails.
    #[error("export file error: {0}")]
    Io(#[from] std::io::Error),
    /// The stored job is unreadable (a bug or a hand-edited row): the job fails.
    #[error("the stored job is unreadable: {0}")]
    Corrupt(String),
}

/// The partner a job exports for, owned (it crosses into blocking tasks).
#[derive(Debug, Clone)]
pub struct Recipient {
    /// FQHC.
    pub org: String,
    /// Purpose of use.
    pub purpose: PurposeOfUse,
}

impl Recipient {
    fn partner(&self) -> Partner<'_> {
        Partner { org: &self.org, purpose: self.purpose, today: chrono::Utc::now().date_naive() }
    }
}

struct Inner {
    store: Store,
    rules: Arc<ConsentRules>,
    registry: Arc<SearchRegistry>,
    settings: Arc<Settings>,
    /// This process's runner id (leases name it).
    owner: String,
    wake: Notify,
    auditor: crate::audit::Auditor,
}

/// The export workers of this instance.
#[derive(Clone)]
pub struct Exporter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").field("owner", &self.inner.owner).finish()
    }
}

impl Exporter {
    /// Starts `export.workers` workers and the cleanup loop on the current runtime.
    pub fn spawn(
        store: Store,
        rules: Arc<ConsentRules>,
        registry: Arc<SearchRegistry>,
        settings: Arc<Settings>,
        auditor: crate::audit::Auditor,
    ) -> Exporter {
        let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let inner = Arc::new(Inner { store, rules, registry, settings, owner, wake: Notify::new(), auditor });
        for _ in 0..inner.settings.export.workers {
            tokio::spawn(worker_loop(inner.clone()));
        }
        tokio::spawn(cleanup_loop(inner.clone()));
        Exporter { inner }
    }

    /// Tells an idle worker that a job was queued.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// The folder of export files.
    pub fn root(&self) -> PathBuf {
        self.inner.settings.export.dir.clone()
    }
}

async fn worker_loop(inner: Arc<Inner>) {
    let cfg = &inner.settings.export;
    loop {
        if inner.store.is_closed() {
            break;
        }
        let now = crate::store::now_us();
        let lease = now + i64::try_from(cfg.lease_seconds).unwrap_or(60) * 1_000_000;
        // One owner token per claim: two workers of this process never pass for each other.
        let owner = format!("{}:{}", inner.owner, uuid::Uuid::new_v4().simple());
        match inner.store.export_claim(&owner, now, lease).await {
            Ok(Some(job)) => {
                let id = job.id.clone();
                tracing::info!(job = %id, "export job started");
                match run_job(&inner, job, &owner).await {
                    Ok(()) => tracing::info!(job = %id, "export job completed"),
                    Err(RunError::Lost) => tracing::info!(job = %id, "export job stopped: cancelled or taken over"),
                    Err(e @ (RunError::Store(_) | RunError::Audit(_))) => {
                        // Left leased: after the lease runs out a worker resumes it.
                        tracing::warn!(job = %id, error = %e, "export job interrupted by a database error; it will be resumed");
                        tokio::time::sleep(Duration::from_secs(cfg.poll_seconds)).await;
                    }
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "export job failed");
                        let expires = crate::store::now_us() + expire_us(&inner.settings);
                        let _ = inner.store.export_fail(&id, &owner, &e.to_string(), crate::store::now_us(), expires).await;
                    }
                }
                continue;
            }
            Ok(None) => {}
            Err(_) if inner.store.is_closed() => break,
            Err(e) => tracing::warn!(error = %e, "looking for export jobs failed"),
        }
        tokio::select! {
            _ = inner.wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(cfg.poll_seconds)) => {}
        }
    }
}

fn expire_us(settings: &Settings) -> i64 {
    i64::try_from(settings.export.expire_hours).unwrap_or(168).saturating_mul(3_600_000_000)
}

/// Expires completed jobs' files and removes the folders of jobs that are cancelled, expired or
/// unknown, once a minute (or every poll interval, when that is shorter).
async fn cleanup_loop(inner: Arc<Inner>) {
    let period = Duration::from_secs(inner.settings.export.poll_seconds.min(60));
    loop {
        tokio::time::sleep(period).await;
        if inner.store.is_closed() {
            break;
        }
        if let Err(e) = cleanup(&inner).await {
            tracing::warn!(error = %e, "export cleanup failed");
        }
    }
}

async fn cleanup(inner: &Inner) -> Result<(), RunError> {
    let root = &inner.settings.export.dir;
    let expired = inner.store.export_expire(crate::store::now_us()).await?;
    for id in &expired {
        remove_job_dir(root, id)?;
    }
    if !expired.is_empty() {
        tracing::info!(jobs = expired.len(), "expired export files removed");
    }
    // Only job folders (named by a job's UUID) are ever removed: the folder may be a shared
    // volume holding other things.
    let dirs: Vec<String> = match std::fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| uuid::Uuid::parse_str(n).is_ok())
            .collect(),
        Err(_) => return Ok(()),
    };
    let known = inner.store.export_statuses(&dirs).await?;
    for d in &dirs {
        let keep = known.iter().any(|(id, st)| id == d && matches!(st.as_str(), "queued" | "running" | "completed" | "failed"));
        if !keep && let Err(e) = remove_job_dir(root, d) {
            tracing::warn!(job = %d, error = %e, "removing an export folder failed");
        }
    }
    Ok(())
}

/// A file being written.
struct OpenFile {
    file: NdjsonFile,
    seq: i64,
    resource_type: String,
    patients: PatientSet,
}

/// The files being written, by type: one at a time on a pass type by type, one per type on a
/// pass in storage order. When one is full, all are finished together, so that a checkpoint
/// never falls inside a file (a resumed job rewrites from its checkpoint, and files not
/// recorded are removed).
type OpenFiles = BTreeMap<String, OpenFile>;

/// What the blocking part of a page returns: the state, and the files finished on the way
/// with the checkpoint after their last resource.
struct PageOut {
    ck: Checkpoint,
    open: OpenFiles,
    finished: Vec<(Vec<ExportFileRow>, Checkpoint)>,
}

struct Job<'a> {
    inner: &'a Inner,
    /// This claim's lease owner token.
    owner: String,
    row: ExportJobRow,
    params: Params,
    recipient: Recipient,
    dir: PathBuf,
    /// The job's reads (a connection of its own on SQLite: [`Store::dedicated_reader`]).
    reader: Store,
    last_renew: Instant,
    /// Where the job's time goes (logged when it completes).
    timings: Timings,
}

/// Microseconds a job spent in each of its steps (added from the tasks that run them).
#[derive(Default)]
struct Timings {
    /// Waiting for a prepared page.
    page_wait: AtomicU64,
    /// Parsing (while the page before is decided).
    parse: AtomicU64,
    /// Reading decision facts (while the page before is decided).
    facts: AtomicU64,
    /// Deciding and writing.
    decide_write: AtomicU64,
    /// Reading pages (also while the page before is decided).
    read: AtomicU64,
    /// The job's own bookkeeping: checkpoints, leases, closing files.
    bookkeeping: AtomicU64,
    /// The closing consent recheck ([`recheck_consent`]).
    recheck: AtomicU64,
}

fn add_time(slot: &AtomicU64, since: Instant) {
    slot.fetch_add(u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
}

impl Job<'_> {
    fn lease_until(&self) -> i64 {
        crate::store::now_us() + i64::try_from(self.inner.settings.export.lease_seconds).unwrap_or(60) * 1_000_000
    }

    async fn record(&mut self, files: &[ExportFileRow], ck: &Checkpoint) -> Result<(), RunError> {
        let json = serde_json::to_string(ck).map_err(|e| RunError::Corrupt(e.to_string()))?;
        if !self.inner.store.export_record_files(&self.row.id, &self.owner, files, &json, self.lease_until()).await? {
            return Err(RunError::Lost);
        }
        Ok(())
    }

    /// Takes a decided page's state into `ck`, records the files it finished (each group with
    /// its checkpoint) and renews the lease; returns the files still open.
    async fn settle(&mut self, ck: &mut Checkpoint, out: PageOut) -> Result<OpenFiles, RunError> {
        let t = Instant::now();
        *ck = out.ck;
        for (rows, at) in &out.finished {
            self.record(rows, at).await?;
        }
        self.keep_lease(ck).await?;
        add_time(&self.timings.bookkeeping, t);
        Ok(out.open)
    }

    /// Renews the lease and the progress text once a second (at most every third of the lease).
    async fn keep_lease(&mut self, ck: &Checkpoint) -> Result<(), RunError> {
        if self.last_renew.elapsed() < Duration::from_secs((self.inner.settings.export.lease_seconds / 3).min(1)) {
            return Ok(());
        }
        let written: u64 = ck.written.values().sum();
        // (Written, never examined: how much was withheld is not the client's to know.)
        let progress = if ck.scan_after.is_some() {
            format!("{written} resources written")
        } else {
            format!(
                "{}type {} of {}, {} resources written",
                if ck.phase == 1 { "consent changes: " } else { "" },
                (ck.type_index + 1).min(self.params.types.len()),
                self.params.types.len(),
                written
            )
        };
        if !self.inner.store.export_renew(&self.row.id, &self.owner, self.lease_until(), &progress).await? {
            return Err(RunError::Lost);
        }
        self.last_renew = Instant::now();
        Ok(())
    }

    /// Finishes the open files (if any) and records them with `ck`.
    async fn close(&mut self, open: OpenFiles, ck: &Checkpoint) -> Result<(), RunError> {
        if open.is_empty() {
            return Ok(());
        }
        let (job_id, gzip) = (self.row.id.clone(), self.params.gzip);
        let rows = tokio::task::spawn_blocking(move || finish_all(open, &job_id, gzip))
            .await
            .map_err(|e| RunError::Io(std::io::Error::other(e)))??;
        self.record(&rows, ck).await
    }
}

/// The page cache of a job's own SQLite connection, in KiB. One connection reads both the pages
/// and their decision facts: with a second one for the facts (so that the two reads overlap),
/// each connection's thread kept ~22-26 MB of SQLite's allocations, against ~11-16 MB for the one
/// (peak RSS of a 100,000-session export, freed memory returned at once: 182 MB -> 138-150 MB, no
/// slower: the two cores are busy parsing and deciding meanwhile; `benches/export.sh`).
const JOB_READ_CACHE_KIB: i64 = 8_192;

async fn run_job(inner: &Inner, row: ExportJobRow, owner: &str) -> Result<(), RunError> {
    let reader = inner.store.dedicated_reader(JOB_READ_CACHE_KIB).await?;
    let out = run_job_with(inner, row, owner, reader.clone()).await;
    reader.close_reader().await;
    out
}

async fn run_job_with(inner: &Inner, row: ExportJobRow, owner: &str, reader: Store) -> Result<(), RunError> {
    let params: Params = serde_json::from_str(&row.params).map_err(|e| RunError::Corrupt(e.to_string()))?;
    let mut ck: Checkpoint = match &row.checkpoint {
        Some(c) => serde_json::from_str(c).map_err(|e| RunError::Corrupt(e.to_string()))?,
        None => Checkpoint::default(),
    };
    let purpose = PurposeOfUse::parse(&row.purpose).map_err(RunError::Corrupt)?;
    let dir = job_dir(&inner.settings.export.dir, &row.id);
    // A file of an interrupted run that was never recorded is written again from its checkpoint.
    let recorded: HashSet<String> = inner.store.export_file_list(&row.id).await?.into_iter().map(|f| f.name).collect();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.filter_map(|e| e.ok()) {
            if !e.file_name().to_str().is_some_and(|n| recorded.contains(n)) {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    std::fs::create_dir_all(&dir)?;
    let recipient = Recipient { org: row.org_id.clone(), purpose };
    let mut job = Job {
        inner,
        owner: owner.to_string(),
        row,
        params,
        recipient,
        dir,
        reader,
        last_renew: Instant::now(),
        timings: Default::default(),
    };
    let started = Instant::now();
    if ck.next_seq == 0 {
        ck.next_seq = 1;
        write_ignored(&mut job, &mut ck).await?;
    }
    let t = Instant::now();
    let members = members(&job).await?;
    add_time(&job.timings.bookkeeping, t);
    while ck.phase < 2 {
        let pass = match ck.phase {
            0 => Some((members.clone(), job.params.since_us, job.row.transaction_us)),
            _ => match job.params.since_us {
                Some(since) => {
                    let mut changed = inner.store.consent_changed_patients(since, job.row.transaction_us).await?;
                    // Chunks are positioned in Rust's order (a database collation may differ).
                    changed.sort();
                    changed.dedup();
                    let changed: Vec<String> = match &members {
                        Some(m) => changed.into_iter().filter(|p| m.binary_search(p).is_ok()).collect(),
                        None => changed,
                    };
                    (!changed.is_empty()).then_some((Some(changed), None, since))
                }
                None => None,
            },
        };
        if let Some((students, lo, hi)) = pass {
            let previously = match (ck.phase, &students) {
                (1, Some(s)) => {
                    // What was disclosed before is read from the audit trail: all of it.
                    inner.auditor.flush().await?;
                    inner.store.patients_disclosed_to(&job.row.client_id, s).await?.into_iter().collect()
                }
                _ => HashSet::new(),
            };
            run_pass(&mut job, &mut ck, students.as_deref(), lo, hi, Arc::new(previously)).await?;
        }
        ck.phase += 1;
        ck.type_index = 0;
        ck.cursor = None;
        ck.scan_after = None;
        ck.chunk_after = None;
        ck.chunk_end = None;
        job.record(&[], &ck).await?;
    }
    let t = Instant::now();
    let evaluated = recheck_consent(&mut job, &ck).await?;
    add_time(&job.timings.recheck, t);
    let extension = (!ck.withdrawn_patients.is_empty()).then(|| {
        serde_json::json!({ "patients": ck.withdrawn_patients.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>() }).to_string()
    });
    // The job's AuditEvent (what it examined, wrote and withheld); each download writes one
    // listing the students of that file.
    let mut counts: Vec<(String, u64)> = ck.written.iter().map(|(t, n)| (format!("written {t}"), *n)).collect();
    counts.extend(ck.withheld.iter().map(|(r, n)| (format!("withheld {r}"), *n)));
    counts.push(("withdrawn students".into(), ck.withdrawn_patients.len() as u64));
    let event = crate::audit::bulk_event(
        &crate::audit::BulkDisclosure {
            client_id: &job.row.client_id,
            org: &job.row.org_id,
            purpose,
            request_id: None,
            query: job.row.request.clone(),
            job_id: &job.row.id,
            file: None,
            patients: &[],
            counts,
        },
        chrono::Utc::now(),
    );
    inner.auditor.record(event).await?;
    let now = crate::store::now_us();
    let done = inner
        .store
        .export_complete(&job.row.id, &job.owner, now, now + expire_us(&inner.settings), evaluated, extension.as_deref())
        .await?;
    if !done {
        return Err(RunError::Lost);
    }
    let ms = |slot: &AtomicU64| slot.load(std::sync::atomic::Ordering::Relaxed) / 1000;
    let t = &job.timings;
    tracing::info!(
        job = %job.row.id,
        examined = ck.judged,
        written = ck.written.values().sum::<u64>(),
        seconds = started.elapsed().as_secs_f64(),
        page_wait_ms = ms(&t.page_wait),
        parse_ms = ms(&t.parse),
        facts_ms = ms(&t.facts),
        decide_write_ms = ms(&t.decide_write),
        read_ms = ms(&t.read),
        bookkeeping_ms = ms(&t.bookkeeping),
        recheck_ms = ms(&t.recheck),
        "export job figures"
    );
    Ok(())
}

/// The error file reporting parameters ignored under `Prefer: handling=lenient`.
async fn write_ignored(job: &mut Job<'_>, ck: &mut Checkpoint) -> Result<(), RunError> {
    if job.params.ignored.is_empty() {
        return job.record(&[], ck).await;
    }
    let outcome = crate::fhir::OperationOutcome::new(
        job.params
            .ignored
            .iter()
            .map(|p| {
                crate::fhir::OutcomeIssue {
                    severity: crate::fhir::outcome::Severity::Warning,
                    ..crate::fhir::OutcomeIssue::error(
                        crate::fhir::IssueCode::NotSupported,
                        format!("`{p}` is not supported and was ignored (Prefer: handling=lenient)"),
                    )
                }
                .at_expression(p.clone())
            })
            .collect(),
    );
    let line = serde_json::to_string(&outcome).map_err(|e| RunError::Corrupt(e.to_string()))?;
    let seq = ck.next_seq;
    let path = job.dir.join(file_name(seq, "OperationOutcome", job.params.gzip));
    let gzip = job.params.gzip;
    let (lines, bytes) = tokio::task::spawn_blocking(move || -> std::io::Result<(u64, u64)> {
        let mut f = NdjsonFile::create(path, gzip)?;
        f.write_lines([line.as_str()])?;
        let lines = f.lines;
        Ok((lines, f.finish()?.1))
    })
    .await
    .map_err(|e| RunError::Io(std::io::Error::other(e)))??;
    ck.next_seq += 1;
    let row = ExportFileRow {
        job_id: job.row.id.clone(),
        seq,
        kind: "error".into(),
        resource_type: "OperationOutcome".into(),
        name: file_name(seq, "OperationOutcome", gzip),
        count: i64::try_from(lines).unwrap_or(1),
        bytes: i64::try_from(bytes).unwrap_or(0),
        patients: "[]".into(),
    };
    job.record(&[row], ck).await
}

/// The students a Group or `patient` parameter limits the export to (sorted); `None`: all.
async fn members(job: &Job<'_>) -> Result<Option<Vec<String>>, RunError> {
    let mut members = match (job.params.level, &job.params.group) {
        (Level::Group, Some(g)) => {
            let sites = super::groups_of(&job.inner.settings, Some(&job.row.org_id))
                .into_iter()
                .find(|(id, _, _)| id == g)
                .map(|(_, _, sites)| sites)
                .unwrap_or_default();
            Some(job.inner.store.patients_at_sites(&sites).await?)
        }
        _ => None,
    };
    if let Some(listed) = &job.params.patients {
        members = Some(match members {
            Some(m) => listed.iter().filter(|p| m.binary_search(p).is_ok()).cloned().collect(),
            None => listed.clone(),
        });
    }
    Ok(members)
}

/// `_lastUpdated` in (`lo`, `hi`] (µs).
fn bounds(lo: Option<i64>, hi: i64) -> Vec<Criterion> {
    let mut out = vec![Criterion::LastUpdated(vec![DateCmp { prefix: Prefix::Le, lo: hi, hi }])];
    if let Some(lo) = lo {
        out.push(Criterion::LastUpdated(vec![DateCmp { prefix: Prefix::Gt, lo, hi: lo }]));
    }
    out
}

/// Finishes files (blocking) into their rows.
fn finish_all(open: OpenFiles, job_id: &str, gzip: bool) -> std::io::Result<Vec<ExportFileRow>> {
    open.into_values().map(|f| finish_file(f, job_id, gzip)).collect()
}

/// Finishes a file (blocking) into its row.
fn finish_file(f: OpenFile, job_id: &str, gzip: bool) -> std::io::Result<ExportFileRow> {
    let lines = f.file.lines;
    let (_, bytes) = f.file.finish()?;
    Ok(ExportFileRow {
        job_id: job_id.to_string(),
        seq: f.seq,
        kind: "output".into(),
        name: file_name(f.seq, &f.resource_type, gzip),
        resource_type: f.resource_type,
        count: i64::try_from(lines).unwrap_or(i64::MAX),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        patients: f.patients.to_json(),
    })
}

/// One pass over the types: everything (students `None`) or those students' compartments, with
/// `_lastUpdated` in (`lo`, `hi`].
async fn run_pass(
    job: &mut Job<'_>,
    ck: &mut Checkpoint,
    students: Option<&[String]>,
    lo: Option<i64>,
    hi: i64,
    previously: Arc<HashSet<String>>,
) -> Result<(), RunError> {
    let batch = usize::try_from(job.inner.settings.export.batch_size).unwrap_or(1000);
    // A full export goes through the tables once, in storage order; a job begun type by type
    // (by an earlier version) goes on that way.
    if ck.phase == 0
        && students.is_none()
        && lo.is_none()
        && job.params.type_filters.is_empty()
        && (ck.scan_after.is_some() || (ck.type_index == 0 && ck.cursor.is_none()))
    {
        return run_scan(job, ck, hi, batch).await;
    }
    while ck.type_index < job.params.types.len() {
        let ty = job.params.types[ck.type_index].clone();
        let by_student = students.is_some() && COMPARTMENT.contains(&ty.as_str());
        // The directory is the same for everyone: not part of a consent-changes pass.
        let skip = ck.phase == 1 && !by_student;
        let mut open = OpenFiles::new();
        let mut prefetched: Option<Prepared> = None;
        // The page after `prefetched`, read but not yet prepared.
        let mut read_ahead: Option<crate::store::SearchPage> = None;
        let mut base = match job.params.type_filters.get(&ty) {
            Some(q) => super::type_filter_search(&ty, q, &job.inner.registry)
                .map_err(|_| RunError::Corrupt(format!("the stored _typeFilter of {ty} no longer parses")))?,
            None => SearchRequest {
                resource_type: ty.clone(),
                criteria: Vec::new(),
                count: batch,
                sort: Sort::LastUpdated,
                include: Vec::new(),
                summary_count: false,
                cursor: None,
                link_params: Vec::new(),
            },
        };
        base.count = batch;
        base.sort = Sort::LastUpdated;
        base.criteria.extend(bounds(lo, hi));
        loop {
            if skip {
                break;
            }
            let mut req = base.clone();
            req.cursor = ck.cursor.as_ref().map(|(t, id)| Cursor { last_updated: Some(*t), id: id.clone() });
            let mut chunk_last = None;
            if by_student {
                let all = students.unwrap_or_default();
                let start = match &ck.chunk_after {
                    Some(after) => all.partition_point(|p| p <= after),
                    None => 0,
                };
                // A chunk is an id range fixed when it starts (kept in the checkpoint), so a
                // student who joins while the job runs cannot shift a resumed chunk's bounds.
                let end = match &ck.chunk_end {
                    Some(end) => all.partition_point(|p| p <= end).max(start),
                    None => (start + CHUNK).min(all.len()),
                };
                let chunk = &all[start..end];
                let Some(last) = chunk.last() else {
                    match ck.chunk_end.take() {
                        Some(end) => {
                            ck.chunk_after = Some(end);
                            ck.cursor = None;
                            continue;
                        }
                        None => break,
                    }
                };
                chunk_last = Some(ck.chunk_end.clone().unwrap_or_else(|| last.clone()));
                ck.chunk_end = chunk_last.clone();
                match compartment(&job.inner.store, &ty, chunk).await? {
                    Some(c) => req.criteria.push(c),
                    None => {
                        ck.chunk_after = chunk_last;
                        ck.chunk_end = None;
                        ck.cursor = None;
                        continue;
                    }
                }
            }
            let t = Instant::now();
            let page = match prefetched.take() {
                Some(p) => p,
                None => {
                    let first = read(job, &req).await?;
                    prepare(job, first.matches, Vec::new(), first.next, None).await?
                }
            };
            let next = match (read_ahead.take(), &page.next) {
                (Some(r), _) => Some(r),
                (None, Some(c)) => Some(read(job, &SearchRequest { cursor: Some(c.clone()), ..req.clone() }).await?),
                (None, None) => None,
            };
            add_time(&job.timings.page_wait, t);
            let more = page.next.is_some();
            // Three pages at once: this one is decided and written (on the blocking pool) while
            // the next one is parsed and its decision facts read (on one database connection)
            // and the one after it is read (on the job's other connection).
            let after = next.as_ref().and_then(|n| n.next.clone()).map(|c| SearchRequest { cursor: Some(c), ..req.clone() });
            let prepare_next = async {
                match next {
                    Some(n) => prepare(job, n.matches, Vec::new(), n.next, None).await.map(Some),
                    None => Ok(None),
                }
            };
            let read_after = async {
                match &after {
                    Some(r) => read(job, r).await.map(Some),
                    None => Ok(None),
                }
            };
            let (out, next, after) = tokio::join!(
                judge_page(job, std::mem::take(ck), std::mem::take(&mut open), page, previously.clone()),
                prepare_next,
                read_after
            );
            let out = out?;
            prefetched = next?;
            read_ahead = after?;
            open = job.settle(ck, out).await?;
            if !more {
                if by_student {
                    ck.chunk_after = chunk_last;
                    ck.chunk_end = None;
                    ck.cursor = None;
                    continue;
                }
                break;
            }
        }
        ck.type_index += 1;
        ck.cursor = None;
        ck.chunk_after = None;
        ck.chunk_end = None;
        let t = Instant::now();
        job.close(open, ck).await?;
        add_time(&job.timings.bookkeeping, t);
    }
    Ok(())
}

/// A page of a pass in storage order.
struct ScanPage {
    rids: Vec<i64>,
    resources: Vec<StoredResource>,
    /// Another page follows.
    more: bool,
}

/// Pages whose sessions' decision facts a pass in storage order keeps: intake writes a batch
/// (up to 1,000 sessions) type by type, so a session's Encounter, Conditions, Provenance and
/// notes lie a few pages apart.
const FACTS_CACHE_PAGES: usize = 4;

/// Reads the page of a pass in storage order after storage key `after`.
async fn read_scan(job: &Job<'_>, after: i64, hi: i64, batch: usize) -> Result<ScanPage, RunError> {
    let t = Instant::now();
    let (rows, more) = job.reader.fhir_scan(&job.params.types, after, hi, batch).await?;
    add_time(&job.timings.read, t);
    let (rids, resources) = rows.into_iter().unzip();
    Ok(ScanPage { rids, resources, more })
}

/// The main pass of a full export (no `_since`, Group, `patient` or `_typeFilter`): every type
/// at once, in storage order ([`Store::fhir_scan`]), one file open per type. The tables are
/// read once, front to back (a pass per type reads them once per type), and a session's
/// resources lie a few pages apart, so its decision facts are read once for all of them and
/// kept for the pages after ([`FactsCache`]). Pages overlap as on a pass by type: one is
/// decided and written while the next is parsed and its facts read, and the one after it read.
async fn run_scan(job: &mut Job<'_>, ck: &mut Checkpoint, hi: i64, batch: usize) -> Result<(), RunError> {
    let previously = Arc::new(HashSet::new());
    let mut open = OpenFiles::new();
    let first = read_scan(job, ck.scan_after.unwrap_or(0), hi, batch).await?;
    let mut ahead = match (first.more, first.rids.last()) {
        (true, Some(last)) => Some(read_scan(job, *last, hi, batch).await?),
        _ => None,
    };
    let mut cache = FactsCache::new(FACTS_CACHE_PAGES * batch);
    let mut page = prepare(job, first.resources, first.rids, None, Some(&mut cache)).await?;
    loop {
        let after = ahead.as_ref().filter(|a| a.more).and_then(|a| a.rids.last().copied());
        let prepare_next = async {
            match ahead {
                Some(a) => prepare(job, a.resources, a.rids, None, Some(&mut cache)).await.map(Some),
                None => Ok(None),
            }
        };
        let read_after = async {
            match after {
                Some(rid) => read_scan(job, rid, hi, batch).await.map(Some),
                None => Ok(None),
            }
        };
        let (out, next, after) = tokio::join!(
            judge_page(job, std::mem::take(ck), std::mem::take(&mut open), page, previously.clone()),
            prepare_next,
            read_after
        );
        let out = out?;
        open = job.settle(ck, out).await?;
        match next? {
            Some(p) => {
                page = p;
                ahead = after?;
            }
            None => break,
        }
    }
    let t = Instant::now();
    job.close(open, ck).await?;
    add_time(&job.timings.bookkeeping, t);
    Ok(())
}

/// The criterion limiting a type to some students' compartments; `None` when they have nothing
/// of that type.
async fn compartment(store: &Store, ty: &str, students: &[String]) -> Result<Option<Criterion>, RunError> {
    let refs = || students.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>();
    Ok(Some(match ty {
        "Patient" => Criterion::Ids(students.to_vec()),
        "Coverage" => Criterion::Reference("beneficiary".into(), refs()),
        "Encounter" | "Condition" | "DocumentReference" | "RelatedPerson" => Criterion::Reference("patient".into(), refs()),
        "Provenance" => {
            let sessions = store.sessions_of_patients(students).await?;
            if sessions.is_empty() {
                return Ok(None);
            }
            Criterion::Reference("target".into(), sessions.into_iter().map(|s| format!("Encounter/{s}")).collect())
        }
        _ => return Ok(None),
    }))
}

/// A page of matches ready to be decided: parsed, with the facts its decisions need.
struct Prepared {
    parsed: Parsed,
    facts: DecisionFacts,
    /// On a pass in storage order, each match's storage key (empty otherwise).
    rids: Vec<i64>,
    /// Where the page after it starts (a pass by type).
    next: Option<Cursor>,
}

fn blocking(e: tokio::task::JoinError) -> RunError {
    RunError::Io(std::io::Error::other(e))
}

/// Reads a page of matches.
async fn read(job: &Job<'_>, req: &SearchRequest) -> Result<crate::store::SearchPage, RunError> {
    let t = Instant::now();
    let page = job.reader.fhir_search(req, None).await?;
    add_time(&job.timings.read, t);
    Ok(page)
}

/// Parses a page of matches (on the blocking pool) and reads their decision facts.
async fn prepare(
    job: &Job<'_>,
    rows: Vec<StoredResource>,
    rids: Vec<i64>,
    next: Option<Cursor>,
    cache: Option<&mut FactsCache>,
) -> Result<Prepared, RunError> {
    let t = Instant::now();
    let parsed = tokio::task::spawn_blocking(move || Parsed::new(rows)).await.map_err(blocking)?;
    add_time(&job.timings.parse, t);
    let t = Instant::now();
    let facts = match cache {
        Some(c) => parsed.facts_cached(&job.reader, c).await?,
        None => parsed.facts(&job.reader, Prefetched::default()).await?,
    };
    tracing::trace!(facts_us = t.elapsed().as_micros() as u64, "export page facts");
    add_time(&job.timings.facts, t);
    Ok(Prepared { parsed, facts, rids, next })
}

/// Decides a prepared page and writes what is permitted (on the blocking pool).
async fn judge_page(
    job: &Job<'_>,
    mut ck: Checkpoint,
    open: OpenFiles,
    page: Prepared,
    previously: Arc<HashSet<String>>,
) -> Result<PageOut, RunError> {
    let Prepared { parsed, facts, rids, .. } = page;
    let t = Instant::now();
    let rules = job.inner.rules.clone();
    let recipient = job.recipient.clone();
    let cfg = job.inner.settings.export.clone();
    let (dir, gzip, job_id) = (job.dir.clone(), job.params.gzip, job.row.id.clone());
    let out = tokio::task::spawn_blocking(move || -> Result<PageOut, RunError> {
        let judged = parsed.decide(facts, &rules, recipient.partner());
        let mut open = open;
        let mut finished = Vec::new();
        for (i, j) in judged.into_iter().enumerate() {
            let r = &j.resource;
            ck.judged += 1;
            match rids.get(i) {
                Some(rid) => ck.scan_after = Some(*rid),
                None => ck.cursor = Some((r.last_updated_us, r.id.clone())),
            }
            if !j.verdict.permitted {
                *ck.withheld.entry(j.verdict.rule.to_string()).or_default() += 1;
                // Only the student is listed, never the resource: a withheld resource may be one
                // the client never received (another site's session, a note), and its id alone
                // would disclose that it exists.
                if let Some(p) = &j.verdict.patient
                    && previously.contains(p)
                    && ck.withdrawn_patients.last() != Some(p)
                    && !ck.withdrawn_patients.contains(p)
                {
                    ck.withdrawn_patients.push(p.clone());
                }
                continue;
            }
            // (Keys are looked up before they are cloned: one type's file takes many lines.)
            if !open.contains_key(&r.resource_type) {
                let seq = ck.next_seq;
                ck.next_seq += 1;
                let path = dir.join(file_name(seq, &r.resource_type, gzip));
                let file = OpenFile {
                    file: NdjsonFile::create(path, gzip)?,
                    seq,
                    resource_type: r.resource_type.clone(),
                    patients: PatientSet::default(),
                };
                open.insert(r.resource_type.clone(), file);
            }
            let Some(f) = open.get_mut(&r.resource_type) else { continue };
            f.file.write_lines([r.content.as_str()])?;
            if let Some(p) = &j.verdict.patient {
                f.patients.insert(p);
            }
            match ck.written.get_mut(&r.resource_type) {
                Some(n) => *n += 1,
                None => {
                    ck.written.insert(r.resource_type.clone(), 1);
                }
            }
            if f.file.lines >= cfg.max_file_resources || f.file.raw_bytes >= cfg.max_file_bytes {
                finished.push((finish_all(std::mem::take(&mut open), &job_id, gzip)?, ck.clone()));
            }
        }
        Ok(PageOut { ck, open, finished })
    })
    .await
    .map_err(blocking)?;
    add_time(&job.timings.decide_write, t);
    out
}

/// Judges again every output file holding a student whose consent changed since the job
/// started, until a check finds no change; returns the time consent was last evaluated.
async fn recheck_consent(job: &mut Job<'_>, ck: &Checkpoint) -> Result<i64, RunError> {
    let mut from = job.row.started_us.unwrap_or(job.row.created_us);
    for _ in 0..5 {
        let at = crate::store::now_us();
        let changed: HashSet<String> =
            job.inner.store.consent_changed_patients(from - CONSENT_CLOCK_MARGIN_US, i64::MAX).await?.into_iter().collect();
        if changed.is_empty() {
            return Ok(at);
        }
        for f in job.inner.store.export_files(&job.row.id).await? {
            let patients: Vec<String> = serde_json::from_str(&f.patients).unwrap_or_default();
            if f.kind != "output" || !patients.iter().any(|p| changed.contains(p)) {
                continue;
            }
            let row = rejudge_file(&job.inner.store, &job.inner.rules, &job.recipient, &job.dir, job.params.gzip, f).await?;
            job.record(&[row], ck).await?;
        }
        from = at;
    }
    Ok(from)
}

/// Rewrites one file of a job (in `dir`) with what consent permits now; returns its new row.
pub async fn rejudge_file(
    store: &Store,
    rules: &ConsentRules,
    recipient: &Recipient,
    dir: &std::path::Path,
    gzip: bool,
    f: ExportFileRow,
) -> Result<ExportFileRow, RunError> {
    let path = dir.join(&f.name);
    let tmp = dir.join(format!("{}.{}.rejudge", f.name, uuid::Uuid::new_v4().simple()));
    let mut reader = {
        let p = path.clone();
        tokio::task::spawn_blocking(move || open_lines(&p)).await.map_err(|e| RunError::Io(std::io::Error::other(e)))??
    };
    let mut out = NdjsonFile::create(tmp.clone(), gzip)?;
    let mut patients = PatientSet::default();
    loop {
        let (lines, rest) = tokio::task::spawn_blocking(move || {
            let lines: Vec<std::io::Result<String>> = reader.by_ref().take(1000).collect();
            (lines, reader)
        })
        .await
        .map_err(|e| RunError::Io(std::io::Error::other(e)))?;
        reader = rest;
        if lines.is_empty() {
            break;
        }
        let lines = lines.into_iter().collect::<Result<Vec<String>, _>>()?;
        for (line, patient) in rejudge_lines(store, rules, recipient, lines).await? {
            out.write_lines([line.as_str()])?;
            if let Some(p) = &patient {
                patients.insert(p);
            }
        }
    }
    let count = out.lines;
    let (_, bytes) = out.finish()?;
    std::fs::rename(&tmp, &path)?;
    Ok(ExportFileRow {
        count: i64::try_from(count).unwrap_or(i64::MAX),
        bytes: i64::try_from(bytes).unwrap_or(i64::MAX),
        patients: patients.to_json(),
        ..f
    })
}

/// Judges exported lines again (consent changed since they were written): the lines still
/// permitted, as they are to be sent now, with their students.
pub async fn rejudge_lines(
    store: &Store,
    rules: &ConsentRules,
    recipient: &Recipient,
    lines: Vec<String>,
) -> Result<Vec<(String, Option<String>)>, StoreError> {
    let resources: Vec<StoredResource> = lines
        .into_iter()
        .map(|content| {
            let v: serde_json::Value = serde_json::from_str(&content).unwrap_or_default();
            StoredResource {
                resource_type: v["resourceType"].as_str().unwrap_or_default().to_string(),
                id: v["id"].as_str().unwrap_or_default().to_string(),
                version_id: v["meta"]["versionId"].as_str().and_then(|x| x.parse().ok()).unwrap_or_default(),
                last_updated_us: 0,
                deleted: false,
                content,
            }
        })
        .collect();
    let parsed = Parsed::new(resources);
    let facts = parsed.facts(store, Prefetched::default()).await?;
    Ok(parsed
        .decide(facts, rules, recipient.partner())
        .into_iter()
        .filter(|j| j.verdict.permitted)
        .map(|j| (j.resource.content, j.verdict.patient))
        .collect())
}
