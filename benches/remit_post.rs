//! 835 posting (issue 7): `CLAIMS` claims (default 100,000; each with a payable and an
//! informational line, as an FQHC PPS 837I has) are put in a fresh SQLite database, then one
//! generated 835 paying all of them (one transaction set: the worst case for memory) is posted
//! with `remit::post_file`, the path `wellness-gateway remit FILE` takes: a checking pass, then
//! the posting pass in chunks. Reports the file size, the time of each pass, claims posted per
//! second, and the peak RSS of a process started only to post the file (targets: >= 20,000
//! claims/s into SQLite; a 200 MB 835 posted in < 100 MB RSS: `CLAIMS=930000` makes a file of
//! about 200 MB).
//!
//! `cargo bench --bench remit_post` (`CLAIMS=n` for another size)

use std::io::Write;
use std::time::Instant;

use wellness_gateway::remit::{self, RemitCodes};
use wellness_gateway::settings::Settings;
use wellness_gateway::store::Store;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn rss_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn pcn(i: usize) -> String {
    format!("B{i:011}")
}

fn main() -> anyhow::Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match std::env::var_os(CHILD_FILE) {
        Some(file) => rt.block_on(post(std::path::PathBuf::from(file))),
        None => rt.block_on(run()),
    }
}

/// Set for the child process that posts the file (its path); `CHILD_DB` names the database.
const CHILD_FILE: &str = "REMIT_POST_BENCH_FILE";
const CHILD_DB: &str = "REMIT_POST_BENCH_DB";

fn settings(db: &str) -> anyhow::Result<Settings> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut settings = Settings::load(Some(&root.join("config/default.toml")))?;
    settings.database.url = db.to_string().into();
    Ok(settings)
}

/// The posting, in a process of its own started for it, as `wellness-gateway remit FILE` runs:
/// its peak RSS is the posting's, not the set-up's.
async fn post(path: std::path::PathBuf) -> anyhow::Result<()> {
    let n: usize = std::env::var("CLAIMS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let db = std::env::var(CHILD_DB)?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let store = Store::connect(&settings(&db)?.database).await?;
    let codes = RemitCodes::load(&root.join("mappings"))?;
    let size = std::fs::metadata(&path)?.len();
    let check_t = Instant::now();
    remit::check(std::io::BufReader::new(std::fs::File::open(&path)?)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let check_secs = check_t.elapsed().as_secs_f64();
    let before = rss_kb("VmHWM:");
    let t = Instant::now();
    let report = remit::post_file(&store, &codes, &path, "bench", false).await?;
    let secs = t.elapsed().as_secs_f64();
    let peak = rss_kb("VmHWM:");
    let posted = &report.transactions[0];
    anyhow::ensure!(posted.matched == n as i64 && posted.balanced, "posting went wrong: {posted:?}");
    let post_secs = secs - check_secs;
    eprintln!(
        "remit: {n} claims, 835 of {:.1} MB: check pass {check_secs:.2} s ({:.0} MB/s); check + post {secs:.2} s = {:.0} claims/s; \
         posting pass alone ~{post_secs:.2} s = {:.0} claims/s; peak RSS of the posting process {} MB ({} MB after the first check pass)",
        size as f64 / 1e6,
        size as f64 / 1e6 / check_secs,
        n as f64 / secs,
        n as f64 / post_secs,
        peak / 1024,
        before / 1024
    );
    store.close().await;
    Ok(())
}

async fn run() -> anyhow::Result<()> {
    let n: usize = std::env::var("CLAIMS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir()?;
    let db = format!("sqlite://{}/bench.db", dir.path().display());
    let store = Store::connect(&settings(&db)?.database).await?;
    store.migrate().await?;
    store.close().await;

    // The claims, as billing would have filed them (submitted, two lines each).
    let t = Instant::now();
    let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(&format!("{db}?mode=rwc")).await?;
    let mut tx = pool.begin().await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut claims = String::from(
            "INSERT INTO claims (id, pcn, session_id, session_version, patient_id, service_date, site_id, lea_id, program, program_version, visit_category, \
             form, biller, payer, rendering_npi, frequency, status, active, charge_cents, expected_cents, plan, resource, created_us, updated_us) VALUES ",
        );
        let mut lines = String::from(
            "INSERT INTO claim_lines (claim_id, line_no, line_id, revenue_code, code, modifiers, units, charge_cents, expected_cents, informational) VALUES ",
        );
        for (k, i) in chunk.iter().enumerate() {
            let sep = if k == 0 { "" } else { ", " };
            claims.push_str(&format!(
                "{sep}('c{i}', '{}', 's{i}', 1, 'p{i}', '2026-10-{:02}', 'site-demo-hs', 'lea-demo', 'medi-cal-fqhc-pps', '2025-07-01', 'visit', \
                 'institutional', 'fqhc-demo', 'medi-cal-ffs', '1234567893', '1', 'submitted', 1, 24567, 24567, '{{}}', '{{}}', 0, 0)",
                pcn(*i),
                1 + i % 28
            ));
            lines.push_str(&format!(
                "{sep}('c{i}', 1, '{p}-1', '0521', 'T1015', 'SE', 1, 24567, 24567, 0), ('c{i}', 2, '{p}-2', '0900', '90834', '', 1, 0, 0, 1)",
                p = pcn(*i)
            ));
        }
        sqlx::query(sqlx::AssertSqlSafe(claims)).execute(&mut *tx).await?;
        sqlx::query(sqlx::AssertSqlSafe(lines)).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    pool.close().await;
    let setup = t.elapsed().as_secs_f64();

    // One 835 paying every claim: $200.00 of $245.67 (CO-45 on the payable line), the
    // informational line $0, REF*6R on each line.
    let path = dir.path().join("bench.835");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path)?);
        let paid_total = 20000 * n as i64;
        let mut segments = 0usize;
        write!(
            f,
            "ISA*00*          *00*          *ZZ*PAYER          *ZZ*WELLNESSGW     *261201*1200*^*00501*000000001*0*P*:~\n\
             GS*HP*PAYER*WELLNESSGW*20261201*1200*1*X*005010X221A1~\nST*835*0001~\nBPR*I*{}.00*C*ACH*CCP*01*999999999*DA*123456*1512345678**01*999999999*DA*98765*20261201~\n\
             TRN*1*BENCH-EFT-1*1610442~\nN1*PR*MEDI-CAL*PI*610442~\nN1*PE*DEMO COMMUNITY HEALTH CENTER*XX*1600000016~\nLX*1~\n",
            paid_total / 100
        )?;
        segments += 6; // ST BPR TRN N1 N1 LX
        for i in 0..n {
            let p = pcn(i);
            let d = 1 + i % 28;
            write!(
                f,
                "CLP*{p}*1*245.67*200**MC*ICN{i}*13*1~\nSVC*HC:T1015:SE*245.67*200*0521*1~\nDTP*472*D8*202610{d:02}~\nCAS*CO*45*45.67~\nREF*6R*{p}-1~\n\
                 SVC*HC:90834*0*0*0900*1~\nDTP*472*D8*202610{d:02}~\nREF*6R*{p}-2~\n"
            )?;
            segments += 8;
        }
        write!(f, "SE*{}*0001~\nGE*1*1~\nIEA*1*000000001~\n", segments + 1)?;
        f.flush()?;
    }
    eprintln!("remit: {n} claims set up in {setup:.1} s");
    let status = std::process::Command::new(std::env::current_exe()?)
        .env(CHILD_FILE, &path)
        .env(CHILD_DB, &db)
        .env("CLAIMS", n.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "the posting process failed: {status}");
    Ok(())
}
