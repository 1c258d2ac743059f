//! X12 reading (issue 7 groundwork): a generated 835 of about `MB` megabytes (default 200), made
//! by repeating the corpus's 1,000-claim synthetic 835 as whole interchanges, read from a file
//! with the streaming reader into typed remittances on one thread. Reports MB/s, claims/s and
//! the process's peak RSS (target for issue 7: >= 200 MB/s; posting a 200 MB 835 < 100 MB RSS).
//!
//! `cargo bench --bench x12_read` (`MB=n` for another size)

use std::io::{BufReader, Write};
use std::time::Instant;

use wellness_gateway::x12::remit835::{RemitItem, RemittanceReader};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let mb: usize = std::env::var("MB").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let sample = std::fs::read(root.join("../shared/corpora/x12/large/x12sdk-synthetic__synth_835_1000.x12"))?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("big.835");
    let mut copies = 0u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let mut written = 0;
        while written < mb * 1_000_000 {
            copies += 1;
            f.write_all(&sample)?;
            f.write_all(b"\n")?;
            written += sample.len() + 1;
        }
        f.flush()?;
    }
    let size = std::fs::metadata(&path)?.len();
    let before = peak_rss_kb().unwrap_or(0);
    let t = Instant::now();
    let mut reader = RemittanceReader::new(BufReader::new(std::fs::File::open(&path)?));
    let (mut sets, mut claims, mut paid) = (0u64, 0u64, 0i64);
    // One claim at a time, as ingest reads (`next()` would collect each transaction's claims).
    while let Some(item) = reader.next_item() {
        match item.map_err(|e| anyhow::anyhow!("{e}"))? {
            RemitItem::Begin(_) => sets += 1,
            RemitItem::Claim(c) => {
                claims += 1;
                paid += c.paid_cents;
            }
            RemitItem::End(r) => anyhow::ensure!(r.problems.is_empty(), "problems in {}", r.control_number),
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let per_copy = sample.windows(4).filter(|w| w == b"CLP*").count() as u64;
    anyhow::ensure!(claims == copies * per_copy, "read {claims} claims of {}", copies * per_copy);
    eprintln!(
        "read {:.0} MB: {sets} remittances, {claims} claims, paid {paid} cents in {secs:.2} s = {:.0} MB/s, {:.0} claims/s; peak RSS {} MB (before reading {} MB)",
        size as f64 / 1e6,
        size as f64 / 1e6 / secs,
        claims as f64 / secs,
        peak_rss_kb().unwrap_or(0) / 1024,
        before / 1024
    );
    Ok(())
}
