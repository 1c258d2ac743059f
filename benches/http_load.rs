//! Load client for a running gateway (a second process), and a generator of large CSV files.
//! Driven by `benches/http.sh` and `benches/import_memory.sh`; run by hand as
//!
//! ```text
//! cargo bench --bench http_load -- batch  URL TOKEN [batches=50] [size=1000] [concurrency=2]
//! cargo bench --bench http_load -- single URL TOKEN [requests=20000] [concurrency=32]
//! cargo bench --bench http_load -- fhir-read   URL TOKEN [requests=50000] [concurrency=64]
//! cargo bench --bench http_load -- fhir-search URL TOKEN [requests=20000] [concurrency=8] [students=100000]
//! cargo bench --bench http_load -- token URL CLIENT_ID [requests=5000] [concurrency=16] [alg=ES384|RS384]
//! cargo bench --bench http_load -- consents URL TOKEN STUDENTS
//! cargo bench --bench http_load -- smart-token URL CLIENT_ID
//! cargo bench --bench http_load -- gen-csv FILE ROWS [students=ROWS]
//! ```
//!
//! `consents` records the example consent (`schemas/examples/valid/consent.json`) for students
//! `S00000000`.. (the district ids `batch` and `single` give their sessions); `smart-token` prints an
//! access token of a partner registered with the fixture JWKS.
//!
//! `token` signs all client assertions first (with the fixture keys of `tests/fixtures/smart/`,
//! which the partner CLIENT_ID must be registered with), then times only the token requests.
//!
//! `fhir-read` reads the first 1,000 Encounters' ids, then `GET /fhir/Encounter/{id}` over them;
//! `fhir-search` looks up 200 students' Patient ids, then runs
//! `GET /fhir/Encounter?patient={id}&date=ge2026-10-15` over them.
//!
//! Every session is distinct (unique source_id), so each request really stores a new version.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

fn example() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/valid/session.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("example session")).expect("example is JSON")
}

fn session(base: &Value, run: &str, i: usize) -> Value {
    let mut s = base.clone();
    s["source_id"] = format!("LOAD-{run}-{i:08}").into();
    s["student"]["district_id"] = format!("S{i:08}").into();
    s
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Every task's latencies, sorted, and the seconds since `started`.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) -> (Vec<Duration>, f64) {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort();
    (all, secs)
}

/// `T s = N req/s; latency p50 .., p90 .., p99 .., max ..` of sorted latencies over `secs`.
fn latency_summary(sorted: &[Duration], secs: f64) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "{secs:.2} s = {:.0} req/s; latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        sorted.len() as f64 / secs,
        ms(percentile(sorted, 0.50)),
        ms(percentile(sorted, 0.90)),
        ms(percentile(sorted, 0.99)),
        ms(sorted.last().copied().unwrap_or_default()),
    )
}

async fn batch(url: String, token: String, batches: usize, size: usize, concurrency: usize) {
    let client = reqwest::Client::new();
    let run = format!("{}", std::process::id());
    let base = example();
    // Bodies are built before timing.
    let bodies: Vec<Vec<u8>> = (0..batches)
        .map(|b| serde_json::to_vec(&Value::Array((0..size).map(|i| session(&base, &run, b * size + i)).collect())).unwrap())
        .collect();
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, bodies, next) = (client.clone(), url.clone(), token.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut created = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let res = client
                    .post(format!("{url}/api/v1/sessions/$batch"))
                    .bearer_auth(&token)
                    .header("Content-Type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("request");
                assert!(res.status().is_success(), "batch failed: {}", res.status());
                let receipt: Value = res.json().await.expect("receipt");
                created += receipt["created"].as_u64().unwrap_or(0);
            }
            created
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "batch intake: {created} sessions in {batches} batches of {size} ({concurrency} concurrent) in {secs:.2} s = {:.0} sessions/s",
        created as f64 / secs
    );
    assert_eq!(created as usize, batches * size, "every session must be stored");
}

async fn single(url: String, token: String, requests: usize, concurrency: usize) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let run = format!("{}", std::process::id());
    let base = Arc::new(example());
    let next = Arc::new(AtomicUsize::new(0));
    // Warm-up: connections and prepared statements.
    for i in 0..concurrency {
        let res = client
            .post(format!("{url}/api/v1/sessions"))
            .bearer_auth(&token)
            .json(&session(&base, &format!("{run}w"), i))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, base, next, run) = (client.clone(), url.clone(), token.clone(), base.clone(), next.clone(), run.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let body = serde_json::to_vec(&session(&base, &run, i)).unwrap();
                let t0 = Instant::now();
                let res = client
                    .post(format!("{url}/api/v1/sessions"))
                    .bearer_auth(&token)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("request");
                let status = res.status();
                let _ = res.bytes().await;
                latencies.push(t0.elapsed());
                assert_eq!(status.as_u16(), 201, "unexpected status");
            }
            latencies
        }));
    }
    let (all, secs) = gather(tasks, started).await;
    println!("single POST: {} requests, {concurrency} concurrent, {}", all.len(), latency_summary(&all, secs));
}

async fn consents(url: String, token: String, students: usize) {
    use futures_util::StreamExt;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/examples/valid/consent.json");
    let form: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let client = reqwest::Client::new();
    // 16 at a time: a million-student benchmark records its consents in minutes, not hours.
    futures_util::stream::iter(0..students)
        .map(|i| {
            let mut f = form.clone();
            f["source_id"] = format!("BENCH-CONSENT-{i:08}").into();
            f["student"]["district_id"] = format!("S{i:08}").into();
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            async move {
                let res = client.post(format!("{url}/api/v1/consents")).bearer_auth(&token).json(&f).send().await.unwrap();
                assert!(res.status().is_success(), "consent refused: {}", res.status());
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    eprintln!("recorded {students} consents");
}

/// The form of a client-credentials token request for `system/*.read` with this assertion.
fn token_form(assertion: &str) -> String {
    serde_urlencoded::to_string([
        ("grant_type", "client_credentials"),
        ("scope", "system/*.read"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", assertion),
    ])
    .unwrap()
}

async fn smart_token(url: String, client_id: String) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let pem = std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart/rs384-private.pem")).unwrap();
    let mut header = Header::new(Algorithm::RS384);
    header.kid = Some("test-rs384".into());
    let claims = serde_json::json!({"iss": client_id, "sub": client_id, "aud": format!("{url}/auth/token"),
        "exp": jsonwebtoken::get_current_timestamp() + 240, "jti": uuid::Uuid::new_v4().to_string()});
    let assertion = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_rsa_pem(&pem).unwrap()).unwrap();
    let body = token_form(&assertion);
    let res: Value = reqwest::Client::new()
        .post(format!("{url}/auth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!("{}", res["access_token"].as_str().expect("token issued"));
}

async fn token(url: String, client_id: String, requests: usize, concurrency: usize, alg: String) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/smart");
    let (alg, key, kid) = match alg.as_str() {
        "RS384" => {
            (Algorithm::RS384, EncodingKey::from_rsa_pem(&std::fs::read(dir.join("rs384-private.pem")).unwrap()).unwrap(), "test-rs384")
        }
        _ => (Algorithm::ES384, EncodingKey::from_ec_pem(&std::fs::read(dir.join("es384-private.pem")).unwrap()).unwrap(), "test-es384"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    let exp = jsonwebtoken::get_current_timestamp() + 280;
    let signing = Instant::now();
    let forms: Vec<String> = (0..requests + concurrency)
        .map(|i| {
            let claims = serde_json::json!({"iss": client_id, "sub": client_id, "aud": format!("{url}/auth/token"), "exp": exp, "jti": format!("bench-{}-{i}", std::process::id())});
            token_form(&jsonwebtoken::encode(&header, &claims, &key).unwrap())
        })
        .collect();
    eprintln!("signed {} {alg:?} assertions in {:.1} s (not timed)", forms.len(), signing.elapsed().as_secs_f64());
    let forms = Arc::new(forms);
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let post = |client: reqwest::Client, url: String, body: String| async move {
        let res = client
            .post(format!("{url}/auth/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = res.status();
        let _ = res.bytes().await;
        assert_eq!(status.as_u16(), 200, "token refused");
    };
    // Warm-up: connections, the client's JWKS in the cache.
    for i in requests..requests + concurrency {
        post(client.clone(), url.clone(), forms[i].clone()).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, forms, next) = (client.clone(), url.clone(), forms.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t0 = Instant::now();
                post(client.clone(), url.clone(), forms[i].clone()).await;
                latencies.push(t0.elapsed());
            }
            latencies
        }));
    }
    let (all, secs) = gather(tasks, started).await;
    println!(
        "token ({alg:?}): {} tokens, {concurrency} concurrent, {}",
        all.len(),
        latency_summary(&all, secs).replace("req/s", "tokens/s")
    );
}

/// GETs `paths` round-robin with `concurrency` clients and prints throughput and latency.
async fn get_load(label: &str, url: &str, token: &str, paths: Vec<String>, requests: usize, concurrency: usize, bundles: bool) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build().unwrap();
    let paths = Arc::new(paths);
    let next = Arc::new(AtomicUsize::new(0));
    let matched = Arc::new(AtomicUsize::new(0));
    // Warm-up: connections, prepared statements, page cache.
    for p in paths.iter().take(concurrency.max(50)) {
        let res = client.get(format!("{url}{p}")).bearer_auth(token).send().await.unwrap();
        assert!(res.status().is_success(), "{p}: {}", res.status());
        let _ = res.bytes().await;
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, token, paths, next, matched) =
            (client.clone(), url.to_string(), token.to_string(), paths.clone(), next.clone(), matched.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let t0 = Instant::now();
                let res = client.get(format!("{url}{}", paths[i % paths.len()])).bearer_auth(&token).send().await.expect("request");
                let status = res.status();
                let body = res.bytes().await.expect("body");
                latencies.push(t0.elapsed());
                assert_eq!(status.as_u16(), 200, "unexpected status");
                // Count the resources returned (a read returns one; a Bundle's own type is not counted).
                let types = body.windows(14).filter(|w| w == b"\"resourceType\"").count();
                matched.fetch_add(if bundles { types.saturating_sub(1) } else { types }, Ordering::Relaxed);
            }
            latencies
        }));
    }
    let (all, secs) = gather(tasks, started).await;
    println!(
        "{label}: {} requests, {concurrency} concurrent, {}; {:.1} resources per response",
        all.len(),
        latency_summary(&all, secs),
        matched.load(Ordering::Relaxed) as f64 / all.len().max(1) as f64,
    );
}

async fn fhir_read(url: String, token: String, requests: usize, concurrency: usize) {
    let client = reqwest::Client::new();
    let page: Value =
        client.get(format!("{url}/fhir/Encounter?_count=1000")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let paths: Vec<String> = page["entry"]
        .as_array()
        .expect("encounters are stored")
        .iter()
        .map(|e| format!("/fhir/Encounter/{}", e["resource"]["id"].as_str().unwrap()))
        .collect();
    assert!(!paths.is_empty(), "no encounters stored");
    get_load("GET /fhir/Encounter/{id}", &url, &token, paths, requests, concurrency, false).await;
}

async fn fhir_search(url: String, token: String, requests: usize, concurrency: usize, students: usize) {
    let client = reqwest::Client::new();
    let mut paths = Vec::new();
    for k in 0..200usize {
        let n = (k * 7919 + 13) % students.max(1);
        let page: Value =
            client.get(format!("{url}/fhir/Patient?identifier=S{n:08}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let id = page["entry"][0]["resource"]["id"].as_str().unwrap_or_else(|| panic!("student S{n:08} not stored")).to_string();
        paths.push(format!("/fhir/Encounter?patient={id}&date=ge2026-10-15"));
    }
    let total: Value =
        client.get(format!("{url}/fhir/Encounter?_summary=count")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    println!("stored encounters: {}", total["total"]);
    get_load("GET /fhir/Encounter?patient=..&date=ge..", &url, &token, paths, requests, concurrency, true).await;
}

fn gen_csv(path: &str, rows: usize, students: usize) {
    let file = std::fs::File::create(path).expect("create CSV");
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    writeln!(w, "source_id,lea,site,student.district_id,student.medi_cal_cin,student.given_name,student.family_name,student.birth_date,student.sex,student.grade,clinician.npi,clinician.given_name,clinician.family_name,clinician.credential,service.type,service.tier,service.modality,service.start,service.end,diagnoses,consent_ids,note").unwrap();
    for i in 0..rows {
        let day = 1 + i % 28;
        writeln!(
            w,
            "GEN-{i:08},lea-demo,site-demo-hs,S{:08},9{:07}A,Synthetic,Student{},2011-04-02,female,09,1234567893,Maya,Reed,LCSW,individual-counseling,3,in-person,2026-10-{day:02}T10:05:00-07:00,2026-10-{day:02}T10:50:00-07:00,F41.1;Z63.8,,Synthetic note {i}",
            i % students,
            i % students,
            (i % students) % 1000
        )
        .unwrap();
    }
    w.flush().unwrap();
    println!("wrote {rows} rows to {path}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    match args.first().map(String::as_str) {
        Some("batch") => rt.block_on(batch(args[1].clone(), args[2].clone(), arg(&args, 3, 50), arg(&args, 4, 1000), arg(&args, 5, 2))),
        Some("single") => rt.block_on(single(args[1].clone(), args[2].clone(), arg(&args, 3, 20_000), arg(&args, 4, 32))),
        Some("fhir-read") => rt.block_on(fhir_read(args[1].clone(), args[2].clone(), arg(&args, 3, 50_000), arg(&args, 4, 64))),
        Some("fhir-search") => {
            rt.block_on(fhir_search(args[1].clone(), args[2].clone(), arg(&args, 3, 20_000), arg(&args, 4, 8), arg(&args, 5, 100_000)))
        }
        Some("token") => rt.block_on(token(
            args[1].clone(),
            args[2].clone(),
            arg(&args, 3, 5_000),
            arg(&args, 4, 16),
            args.get(5).cloned().unwrap_or_else(|| "ES384".into()),
        )),
        Some("consents") => rt.block_on(consents(args[1].clone(), args[2].clone(), arg(&args, 3, 1000))),
        Some("smart-token") => rt.block_on(smart_token(args[1].clone(), args[2].clone())),
        Some("gen-csv") => {
            let rows = arg(&args, 2, 1_000_000);
            gen_csv(&args[1], rows, arg(&args, 3, rows))
        }
        _ => eprintln!(
            "usage: http_load batch|single|fhir-read|fhir-search URL TOKEN [...] | token URL CLIENT_ID [...] | gen-csv FILE ROWS [STUDENTS] (see the file's doc)"
        ),
    }
}
