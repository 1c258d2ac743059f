//! The audit journal (SQLite): where a partner request's AuditEvent becomes durable before the
//! response is sent, and from which a loader moves events into the database in large batches.
//!
//! Appending each request's event to the SQLite database cost more than the read it audited:
//! every small commit writes whole 16 KiB pages of the per-student index to the WAL, makes every
//! reading connection drop its page cache, and hands each statement to a connection thread and
//! back (partner reads ran at 40-59% of an admin's throughput; `benches/consent.sh`). Here:
//! - the journal is a file beside the database (`<database>-audit`), one line per event: a JSON
//!   head with its place in the chain (position, previous hash, hash), a tab, the event. A request
//!   appends its line with one `write(2)` on its own thread, under a mutex that also keeps the
//!   chain's head, and answers once the write returned: as durable as a commit with the
//!   database's `synchronous = NORMAL` (it survives a crash of the gateway; an OS crash or power
//!   loss can lose the last lines, as it can the last commits);
//! - a loader task inserts the new lines into `audit_events` every
//!   `database.audit_journal_load_ms` (1 s), or at once when [`Journal::flush`] asks (every reader
//!   of the trail does first, so what was disclosed is always visible to them), in transactions of
//!   about 4 MiB; once the loaded part is past [`EMPTY_AT_BYTES`], the database is synced to disk and the
//!   journal replaced by a file holding only the lines not yet loaded (written beside it, then
//!   renamed over it: no line is ever in neither file);
//! - it fails closed: while the loader cannot write the database, appends are refused and so
//!   nothing is disclosed; events already journaled stay in the file until they are loaded;
//! - at start every whole line not yet in the database is loaded (a line cut short by a crash
//!   mid-write was never acknowledged and is dropped), the database is synced, then the file is
//!   emptied; a write that fails half-way and cannot be taken back closes the journal until a
//!   restart (nothing may follow a broken line);
//! - one process: the journal file is locked exclusively while a gateway uses it.
//!
//! The loader takes the events it loads from memory: each append also keeps its event (already
//! chained) in a queue mirroring the unloaded lines, so the loader neither reads the file back
//! nor parses it. The file is read only at start (what a stopped gateway left) and after a failed
//! load or a queue grown past 64 MiB: the queue is dropped then (the file is the truth), and the
//! loader reads the lines written until its next file read, from which on appends are mirrored
//! again. The file is read with blocking calls on the runtime's thread, at most about `MAX_LOAD_BYTES` (4 MiB)
//! a round, just written and so in the OS page cache (~1 ms).
//!
//! PostgreSQL keeps appending in the database (the chain is shared by every instance; see
//! `Auditor`).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::store::{ChainRow, ChainedEvent, PendingEvent, Store, chain_event};

/// Most bytes of the journal read and loaded in one transaction.
const MAX_LOAD_BYTES: u64 = 4 << 20;
/// The journal is emptied once everything in it is loaded and it holds at least this much.
pub const EMPTY_AT_BYTES: u64 = 16 << 20;
/// How long a starting gateway waits for a stopping one to let go of the journal.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// How long [`Journal::flush`] waits for the loader.
const FLUSH_WAIT: Duration = Duration::from_secs(30);

/// Most bytes of unloaded events kept in memory (beyond, the loader reads them from the file).
const MAX_QUEUED_BYTES: u64 = 64 << 20;

/// The journal of a SQLite database file.
pub fn path_for(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-audit");
    PathBuf::from(name)
}

struct State {
    /// The locked journal, opened for appending; `None` once closed.
    file: Option<File>,
    /// Bytes of whole lines in the file.
    len: u64,
    /// Position and hash of the last event written.
    head: (i64, String),
    /// Why the loader cannot write the database (appends are refused meanwhile).
    failed: Option<String>,
    /// While `mirrored`: the events of the lines from `mirror_from` on, in order, with each
    /// line's length.
    queue: std::collections::VecDeque<(u64, ChainedEvent)>,
    /// Bytes of the lines in `queue`.
    queued: u64,
    /// Whether `queue` holds every line from `mirror_from` on (the loader reads the lines before
    /// it, and all lines when not mirrored, from the file).
    mirrored: bool,
    /// Where in the file the queue begins; never before the loader's offset.
    mirror_from: u64,
}

impl State {
    /// Stops mirroring: the loader reads the unloaded lines from the file.
    fn unmirror(&mut self) {
        self.mirrored = false;
        self.queue.clear();
        self.queued = 0;
    }

    /// Mirrors the lines appended from now on (the loader reads those before from the file).
    fn mirror_from_end(&mut self) {
        if !self.mirrored {
            self.queue.clear();
            self.queued = 0;
            self.mirrored = true;
            self.mirror_from = self.len;
        }
    }
}

/// What the loader has done: the last position loaded, and why it is failing, if it is.
type Progress = (i64, Option<String>);

/// The journal and its loader (see the module doc).
pub struct Journal {
    path: PathBuf,
    database: PathBuf,
    /// Replace the journal once this many of its bytes are loaded ([`EMPTY_AT_BYTES`]).
    replace_at: u64,
    state: Mutex<State>,
    progress: watch::Sender<Progress>,
    wake: Notify,
    /// Events loaded from the file rather than from the queue (at start and after a failure).
    read_back: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish_non_exhaustive()
    }
}

fn io(context: &str, path: &Path, e: std::io::Error) -> String {
    format!("{context} {}: {e}", path.display())
}

/// Bytes of whole lines in the first `len` bytes of `file` (a last line without its newline is
/// one whose write never finished).
fn whole_lines_len(file: &mut File, len: u64) -> std::io::Result<u64> {
    let mut end = len;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(block.len());
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block[..n])?;
        if let Some(i) = block[..n].iter().rposition(|b| *b == b'\n') {
            return Ok(start + i as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}

/// A journal line's head: the event's place in the chain and index rows (the event text
/// follows it on the line).
#[derive(serde::Serialize, serde::Deserialize)]
struct LineHead<'a> {
    seq: i64,
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    recorded_us: i64,
    #[serde(borrow)]
    client_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    prev_hash: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    hash: std::borrow::Cow<'a, str>,
    patients: std::borrow::Cow<'a, [(String, bool)]>,
}

/// One journal line: the head as JSON, a tab, the AuditEvent's stored JSON text as it is (JSON
/// text written by serde_json holds no raw tab or newline, so neither needs escaping), a newline.
fn write_line(e: &ChainedEvent, out: &mut Vec<u8>) -> Result<(), String> {
    let head = LineHead {
        seq: e.seq,
        id: e.id.as_str().into(),
        recorded_us: e.recorded_us,
        client_id: e.client_id.as_str().into(),
        prev_hash: e.prev_hash.as_str().into(),
        hash: e.hash.as_str().into(),
        patients: e.patients.as_slice().into(),
    };
    if e.event.contains(['\t', '\n']) {
        return Err("an AuditEvent's text holds a raw tab or newline (a bug)".into());
    }
    serde_json::to_writer(&mut *out, &head).map_err(|e| e.to_string())?;
    out.push(b'\t');
    out.extend_from_slice(e.event.as_bytes());
    out.push(b'\n');
    Ok(())
}

/// The event of one journal line (without its newline).
fn read_line(line: &[u8]) -> Result<ChainedEvent, String> {
    let bad = |why: String| format!("an audit journal line is not an event: {why}");
    let tab = line.iter().position(|b| *b == b'\t').ok_or_else(|| bad("no tab".into()))?;
    let head: LineHead<'_> = serde_json::from_slice(&line[..tab]).map_err(|e| bad(e.to_string()))?;
    let event = std::str::from_utf8(&line[tab + 1..]).map_err(|e| bad(e.to_string()))?.to_string();
    Ok(ChainedEvent {
        seq: head.seq,
        id: head.id.into_owned(),
        recorded_us: head.recorded_us,
        client_id: head.client_id.into_owned(),
        prev_hash: head.prev_hash.into_owned(),
        hash: head.hash.into_owned(),
        patients: head.patients.into_owned(),
        event,
    })
}

/// The events of whole journal lines (`bytes` ends with a newline).
fn parse_lines(bytes: &[u8]) -> Result<Vec<ChainedEvent>, String> {
    bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(read_line).collect()
}

/// Reads whole lines of `file` from `offset`: about [`MAX_LOAD_BYTES`] (one longer line whole),
/// never past `end` (which ends a line).
fn read_from(file: &mut File, offset: u64, end: u64) -> std::io::Result<Vec<u8>> {
    let mut want = (end - offset).min(MAX_LOAD_BYTES);
    loop {
        let mut bytes = vec![0u8; usize::try_from(want).map_err(std::io::Error::other)?];
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut bytes)?;
        if let Some(i) = bytes.iter().rposition(|b| *b == b'\n') {
            bytes.truncate(i + 1);
            return Ok(bytes);
        }
        if offset + want >= end {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the journal's last line has no end"));
        }
        want = (want * 2).min(end - offset);
    }
}

impl Journal {
    /// Opens (creating) the journal at `path`, loads what it holds into the database and empties
    /// it, and starts the loader on the current runtime. Waits up to 10 s for another
    /// gateway process (one stopping) to let go of it.
    pub async fn open(store: Store, database: &Path, interval: Duration) -> Result<Arc<Journal>, String> {
        Self::open_with(store, database, interval, EMPTY_AT_BYTES).await
    }

    /// As [`Journal::open`], replacing the journal once `replace_at` bytes of it are loaded (tests).
    #[doc(hidden)]
    pub async fn open_with(store: Store, database: &Path, interval: Duration, replace_at: u64) -> Result<Arc<Journal>, String> {
        let path = path_for(database);
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        let mut file = loop {
            let file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(|e| io("opening", &path, e))?;
            match file.try_lock() {
                // Locked the file that is still the journal (not one a running gateway has just
                // replaced)?
                Ok(()) if same_file(&file, &path) => break file,
                Ok(()) if tokio::time::Instant::now() < deadline => continue,
                Ok(()) => return Err(format!("the audit journal {} keeps being replaced", path.display())),
                Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(format!(
                        "another gateway process uses the audit journal {} (a SQLite database serves one gateway process)",
                        path.display()
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", &path, e)),
            }
        };
        // A copy a crash left mid-replacement holds only lines the journal holds too.
        match std::fs::remove_file(next_path(&path)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &next_path(&path), e)),
            _ => {}
        }
        let len = file.metadata().map_err(|e| io("reading", &path, e))?.len();
        let whole = whole_lines_len(&mut file, len).map_err(|e| io("reading", &path, e))?;
        let journal = Arc::new(Journal {
            path: path.clone(),
            database: database.to_path_buf(),
            replace_at,
            state: Mutex::new(State {
                file: Some(file),
                len: whole,
                head: (0, String::new()),
                failed: None,
                queue: std::collections::VecDeque::new(),
                queued: 0,
                // What the file holds now is read from it (at start, below).
                mirrored: true,
                mirror_from: whole,
            }),
            progress: watch::Sender::new((0, None)),
            wake: Notify::new(),
            read_back: std::sync::atomic::AtomicU64::new(0),
        });
        let mut reader = File::open(&path).map_err(|e| io("opening", &path, e))?;
        let mut offset = 0;
        journal.load(&store, &mut reader, &mut offset).await.map_err(|e| format!("loading the audit journal {}: {e}", path.display()))?;
        let head = store.audit_head().await.map_err(|e| e.to_string())?;
        if whole > 0 {
            sync_database(database.to_path_buf()).await?;
        }
        {
            let mut st = journal.lock()?;
            if let Some(f) = &st.file {
                // Also drops a line cut short by a crash.
                f.set_len(0).map_err(|e| io("emptying", &path, e))?;
            }
            st.len = 0;
            // (Nothing was appended yet: the journal is not handed out before this returns.)
            st.unmirror();
            st.mirror_from_end();
            st.head = head.clone();
        }
        if whole > 0 || len > whole {
            tracing::info!(bytes = whole, dropped_bytes = len - whole, last = head.0, "audit journal loaded at start");
        }
        journal.progress.send_replace((head.0, None));
        tokio::spawn(journal.clone().run(store, reader, interval));
        Ok(journal)
    }

    /// Events the loader has read back from the file rather than taken from memory (tests).
    #[doc(hidden)]
    pub fn events_read_back(&self) -> u64 {
        self.read_back.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, String> {
        self.state.lock().map_err(|_| "the audit journal's lock was poisoned".to_string())
    }

    /// Appends an event: gives it the next place in the chain and writes its line. Once this
    /// returns `Ok`, the event is durable (see the module doc).
    pub fn append(&self, event: PendingEvent) -> Result<(), String> {
        let mut st = self.lock()?;
        if let Some(why) = &st.failed {
            return Err(format!("the audit trail cannot be written to the database: {why}"));
        }
        let mut head = st.head.clone();
        let chained = chain_event(event, &mut head).map_err(|e| e.to_string())?;
        let mut line = Vec::with_capacity(chained.event.len() + 512);
        write_line(&chained, &mut line)?;
        let st = &mut *st;
        let Some(file) = st.file.as_mut() else { return Err("the audit journal is closed".into()) };
        if let Err(e) = file.write_all(&line) {
            // Take back a partly written line, or refuse everything after it.
            if file.set_len(st.len).is_err() {
                // Nothing may follow the broken line: the journal takes no more lines until a
                // restart (which drops it).
                st.file = None;
                tracing::error!("the audit journal could not be repaired after a failed write; disclosures are refused until a restart");
            }
            return Err(io("writing", &self.path, e));
        }
        st.len += line.len() as u64;
        st.head = head;
        if st.mirrored {
            if st.queued + line.len() as u64 > MAX_QUEUED_BYTES {
                st.unmirror();
            } else {
                st.queued += line.len() as u64;
                st.queue.push_back((line.len() as u64, chained));
            }
        }
        Ok(())
    }

    /// Waits until every event written so far is in the database (readers of the audit trail
    /// call this first).
    pub async fn flush(&self) -> Result<(), String> {
        let target = {
            let st = self.lock()?;
            if let Some(why) = &st.failed {
                return Err(format!("the audit trail cannot be written to the database: {why}"));
            }
            if st.file.is_none() {
                return Err("the audit journal is closed".into());
            }
            st.head.0
        };
        let mut progress = self.progress.subscribe();
        self.wake.notify_one();
        let reached = tokio::time::timeout(FLUSH_WAIT, progress.wait_for(|(loaded, failed)| *loaded >= target || failed.is_some()))
            .await
            .map_err(|_| "the audit journal's loader did not catch up in time".to_string())?
            .map_err(|_| "the audit journal's loader has stopped".to_string())?;
        match &reached.1 {
            Some(why) if reached.0 < target => Err(format!("the audit trail cannot be written to the database: {why}")),
            _ => Ok(()),
        }
    }

    /// Loads what is left and lets go of the file (the next gateway on this database may open
    /// it at once). Later appends are refused.
    pub async fn close(&self) {
        let _ = self.flush().await;
        if let Ok(mut st) = self.lock() {
            st.file = None;
        }
        self.wake.notify_one();
    }

    /// The loader: every `interval` or when woken, until the store or the journal closes.
    async fn run(self: Arc<Self>, store: Store, mut reader: File, interval: Duration) {
        /// If the loader panics, appends must stop: nothing would load them (fail closed).
        struct Watch<'a>(&'a Journal);
        impl Drop for Watch<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    let why = "the audit journal's loader stopped".to_string();
                    if let Ok(mut st) = self.0.state.lock() {
                        st.failed = Some(why.clone());
                    }
                    self.0.progress.send_modify(|p| p.1 = Some(why));
                }
            }
        }
        let _watch = Watch(&self);
        let mut offset = 0;
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(interval) => {}
            }
            let open = self.lock().map(|st| st.file.is_some()).unwrap_or(false);
            if store.is_closed() || !open {
                // Let go of the file so that a gateway started next can lock it.
                if let Ok(mut st) = self.lock() {
                    st.file = None;
                }
                break;
            }
            match self.load(&store, &mut reader, &mut offset).await {
                Ok(()) => {
                    if let Ok(mut st) = self.lock()
                        && st.failed.take().is_some()
                    {
                        self.progress.send_modify(|p| p.1 = None);
                        tracing::warn!("the audit journal loads again; disclosures resume");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "the audit journal cannot be loaded into the database; disclosures are refused");
                    if let Ok(mut st) = self.lock() {
                        st.failed = Some(e.clone());
                    }
                    self.progress.send_modify(|p| p.1 = Some(e));
                }
            }
        }
    }

    /// Loads the whole lines written after `offset` by now into the database, in transactions of
    /// about [`MAX_LOAD_BYTES`], and empties the file once all is loaded and it has grown past
    /// [`EMPTY_AT_BYTES`]. Lines written meanwhile wait for the next round (chasing them would
    /// turn the batches back into many small commits).
    async fn load(&self, store: &Store, reader: &mut File, offset: &mut u64) -> Result<(), String> {
        let end = self.lock()?.len;
        loop {
            if end <= *offset {
                if *offset >= self.replace_at {
                    self.replace(reader, offset).await?;
                }
                return Ok(());
            }
            let (events, taken) = match self.take_queued(*offset, end)? {
                Some(taken) => taken,
                None => {
                    // The lines before the queue's first (all, after a failure: lines appended from
                    // now on are mirrored again).
                    let upto = {
                        let mut st = self.lock()?;
                        if st.mirror_from < *offset {
                            // (Never expected: the queue would begin before the loader.)
                            st.unmirror();
                        }
                        st.mirror_from_end();
                        st.mirror_from.min(end)
                    };
                    let bytes = read_from(reader, *offset, upto).map_err(|e| io("reading", &self.path, e))?;
                    let events = parse_lines(&bytes)?;
                    self.read_back.fetch_add(events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    (events, bytes.len() as u64)
                }
            };
            let last = events.last().map(|e| e.seq);
            let (n, started) = (events.len(), std::time::Instant::now());
            if let Err(e) = store.load_audit(events).await {
                // The events taken are gone from memory: they are read from the file again.
                self.lock()?.unmirror();
                return Err(e.to_string());
            }
            tracing::debug!(events = n, bytes = taken, ms = started.elapsed().as_millis() as u64, "audit journal loaded");
            *offset += taken;
            if let Some(last) = last {
                self.progress.send_replace((last, None));
            }
        }
    }
}

impl Journal {
    /// The queued events of the lines from `offset` on, at most about [`MAX_LOAD_BYTES`] of lines
    /// and none past `end` (what was written when the round began), with their lines' bytes;
    /// `None` when the line at `offset` is not queued (the loader reads the file).
    fn take_queued(&self, offset: u64, end: u64) -> Result<Option<(Vec<ChainedEvent>, u64)>, String> {
        let mut st = self.lock()?;
        if !st.mirrored || st.mirror_from != offset {
            return Ok(None);
        }
        let want = end.saturating_sub(offset);
        let (mut events, mut taken) = (Vec::new(), 0u64);
        while let Some((len, _)) = st.queue.front() {
            let len = *len;
            if taken + len > want || (taken > 0 && taken + len > MAX_LOAD_BYTES) {
                break;
            }
            let Some((_, e)) = st.queue.pop_front() else { break };
            taken += len;
            events.push(e);
        }
        st.queued -= taken;
        st.mirror_from += taken;
        if taken == 0 {
            // Lines unloaded but none queued: the queue lost step with the file (never expected).
            st.unmirror();
            return Ok(None);
        }
        Ok(Some((events, taken)))
    }
}

/// Where a replacement journal is written before it is renamed over the journal.
fn next_path(journal: &Path) -> PathBuf {
    let mut name = journal.as_os_str().to_owned();
    name.push(".next");
    PathBuf::from(name)
}

/// Whether `file` is (still) the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Flushes the database's WAL and file to disk: what it committed survives an OS crash, so the
/// journal may let go of those events.
async fn sync_database(database: PathBuf) -> Result<(), String> {
    tokio::task::spawn_blocking(move || {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        for p in [PathBuf::from(wal), database] {
            match File::open(&p) {
                Ok(f) => f.sync_all().map_err(|e| io("syncing", &p, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("syncing", &p, e)),
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?
}

impl Journal {
    /// Replaces the journal by a file holding only the lines after `offset` (all before it are
    /// loaded): the database is synced first, the copy is written beside the journal, locked and
    /// renamed over it. Appends wait for the lock meanwhile (the copy is the few lines written
    /// during the last round).
    async fn replace(&self, reader: &mut File, offset: &mut u64) -> Result<(), String> {
        sync_database(self.database.clone()).await?;
        let next = next_path(&self.path);
        let mut st = self.lock()?;
        if st.file.is_none() {
            return Ok(());
        }
        let mut tail = vec![0u8; usize::try_from(st.len - *offset).map_err(|e| e.to_string())?];
        reader.seek(SeekFrom::Start(*offset)).and_then(|_| reader.read_exact(&mut tail)).map_err(|e| io("reading", &self.path, e))?;
        // Everything that can fail happens before the rename; after it, only moves.
        let written = (|| -> std::io::Result<(File, File)> {
            let mut file = OpenOptions::new().create_new(true).read(true).append(true).open(&next)?;
            file.try_lock().map_err(std::io::Error::other)?;
            file.write_all(&tail)?;
            let new_reader = File::open(&next)?;
            std::fs::rename(&next, &self.path)?;
            Ok((file, new_reader))
        })();
        let (file, new_reader) = match written {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(&next);
                return Err(io("replacing", &self.path, e));
            }
        };
        *reader = new_reader;
        st.file = Some(file);
        st.len = tail.len() as u64;
        // The new file begins with the line at `offset`.
        st.mirror_from = st.mirror_from.saturating_sub(*offset);
        *offset = 0;
        Ok(())
    }
}

/// The events in the journal of a SQLite database file that may not be in the database yet,
/// for `audit verify` (read-only: a running gateway may be writing it). Read before the
/// database, so that whatever the loader moves meanwhile is found in one or the other.
pub fn pending(database: &Path) -> Result<Vec<ChainRow>, String> {
    let path = path_for(database);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("opening", &path, e)),
    };
    // One read: the journal may be replaced meanwhile (the open file stays whole).
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io("reading", &path, e))?;
    bytes.truncate(bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1));
    Ok(parse_lines(&bytes)?
        .into_iter()
        .map(|e| ChainRow { seq: e.seq, id: e.id, event: e.event, prev_hash: e.prev_hash, hash: e.hash })
        .collect())
}
