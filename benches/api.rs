//! HTTP API reads on the real `kenko` binary (prints figures, asserts none):
//!
//! 1. a citizen's app reading its own day of heart rate at 1 Hz (86,400 rows) from
//!    `personal.db`, as JSON and as CSV, each read audited as the API does;
//! 2. an analyst's aggregate across 1,000 citizens of `shared.db` (a day of one reading a
//!    minute each, 1.44 million rows): hourly mean, hourly p90 of the citizens' means, and
//!    minute means.
//!
//! 3. the same citizen's console page (`/console`, signed in with a session cookie) with
//!    its charts over a day, a week and a month.
//!
//! Each request is sent on a new connection with HTTP Basic credentials (the console's with
//! the session cookie), one at a time;
//! p50 / p99 / max of the whole request (connect to last byte) and the answer's size.
//!
//! `cargo bench --bench api -- [REPEATS]` (default 30 per figure)

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use kenko_broker::auth::{hash_password, Cost};
use kenko_devices::Metric;
use kenko_ingest::store::PersonalStore;
use kenko_ingest::Observation;

mod common;
use common::{report, Hub};

const DAY_MS: i64 = 86_400_000;
const CITIZENS: usize = 1_000;
const BATCH: usize = 20_000;

fn main() -> anyhow::Result<()> {
    let repeats: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    // Yesterday, whole: a day that is over.
    let day = (now_ms() / DAY_MS - 1) * DAY_MS;
    let started = Instant::now();
    fill(&data.join("personal.db"), day, 1, 1_000)?;
    fill(&data.join("shared.db"), day, CITIZENS, 60_000)?;
    println!(
        "stores filled in {:.1} s: 86,400 rows of one citizen, {} rows of {CITIZENS} citizens",
        started.elapsed().as_secs_f64(),
        CITIZENS * 1_440
    );
    let config = dir.path().join("kenko.toml");
    std::fs::write(&config, config_text())?;
    let hub = Hub::start(&config, &data)?;
    // The hub's retention job seals yesterday's hours into chunks a few seconds after it
    // starts; the figures are of the sealed store.
    let started = Instant::now();
    let sealed = wait_for_sealing(hub.http)?;
    println!(
        "{sealed} rows sealed into chunks by the hub in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let range = format!("from={}&to={}", rfc3339(day), rfc3339(day + DAY_MS));
    let own_day = format!("/api/v1/observations?metric=heart_rate&{range}&limit=100000");
    let across = format!("/api/v1/observations?metric=heart_rate&store=shared&across=true&{range}");
    for (what, who, path) in [
        ("citizen's day at 1 Hz, JSON", "app-001", own_day.clone()),
        (
            "citizen's day at 1 Hz, CSV",
            "app-001",
            format!("{own_day}&format=csv"),
        ),
        (
            "1,000 citizens, hourly mean",
            "analyst-1",
            format!("{across}&every=1h&agg=mean"),
        ),
        (
            "1,000 citizens, hourly p90 of citizens' means",
            "analyst-1",
            format!("{across}&every=1h&agg=p90"),
        ),
        (
            "1,000 citizens, minute means",
            "analyst-1",
            format!("{across}&every=1m&agg=mean"),
        ),
    ] {
        let auth = format!("Authorization: Basic {}", basic(who));
        measure(hub.http, what, &auth, &path, repeats)?;
    }
    let cookie = format!("Cookie: {}", log_in(hub.http, "app-001")?);
    for range in ["day", "week", "month"] {
        let what = format!("citizen's console page, charts over a {range}");
        let path = format!("/console?range={range}&lang=en");
        measure(hub.http, &what, &cookie, &path, repeats)?;
    }
    Ok(())
}

/// Sends `GET path` with the header `auth` `repeats` times; prints the figures.
fn measure(
    http: SocketAddr,
    what: &str,
    auth: &str,
    path: &str,
    repeats: usize,
) -> anyhow::Result<()> {
    let mut samples = Vec::with_capacity(repeats);
    let mut bytes = 0;
    for _ in 0..repeats {
        let (took, size) = get(http, auth, path)?;
        samples.push(took);
        bytes = size;
    }
    report(&format!("{what} ({bytes} bytes)"), samples);
    Ok(())
}

/// `citizens` citizens' heart rate over `day`, one reading every `step_ms`.
fn fill(path: &Path, day: i64, citizens: usize, step_ms: i64) -> anyhow::Result<()> {
    let mut store = PersonalStore::open(path)?;
    let names: Vec<(Arc<str>, Arc<str>)> = (1..=citizens)
        .map(|i| {
            (
                Arc::from(format!("citizen-{i:03}").as_str()),
                Arc::from(format!("bed-{i:03}").as_str()),
            )
        })
        .collect();
    let mut batch = Vec::with_capacity(BATCH);
    let mut t = day;
    while t < day + DAY_MS {
        for (i, (citizen, device)) in names.iter().enumerate() {
            batch.push(Observation {
                citizen: citizen.clone(),
                device: device.clone(),
                metric: Metric::HeartRate,
                value: 55.0 + ((t / step_ms) as usize + i * 7) as f64 % 30.0,
                time_ms: t,
                received_ms: t + 5,
                seq: 0,
                flags: 0,
            });
            if batch.len() == BATCH {
                store.write_batch(&batch)?;
                batch.clear();
            }
        }
        t += step_ms;
    }
    store.write_batch(&batch)?;
    Ok(())
}

fn password(id: &str) -> String {
    format!("pw-{id}")
}

fn config_text() -> String {
    let hash = |id: &str| hash_password(&password(id), Cost::Token);
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nrequests_per_s = 0\n\n\
         [[principals]]\nid = \"app-001\"\nroles = [\"citizen\"]\ncitizen = \"citizen-001\"\npassword_hash = \"{}\"\n\n\
         [[principals]]\nid = \"analyst-1\"\nroles = [\"analyst\"]\npassword_hash = \"{}\"\n\n\
         [[principals]]\nid = \"operator-1\"\nroles = [\"operator\"]\npassword_hash = \"{}\"\n",
        hash("app-001"),
        hash("analyst-1"),
        hash("operator-1")
    )
}

fn basic(who: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{who}:{}", password(who)).as_bytes())
}

/// One request on a new connection: the whole response and how long it took.
fn exchange(http: SocketAddr, request: &str) -> anyhow::Result<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(http)?;
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok((response, started.elapsed()))
}

/// Waits until the hub's count of sealed rows is above zero and has stopped growing; returns it.
fn wait_for_sealing(http: SocketAddr) -> anyhow::Result<u64> {
    let auth = format!("Authorization: Basic {}", basic("operator-1"));
    let request =
        format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n{auth}\r\n\r\n");
    let mut last = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_secs(2));
        let (response, _) = exchange(http, &request)?;
        let text = String::from_utf8_lossy(&response);
        let sealed = text
            .lines()
            .find_map(|l| l.strip_prefix("kenko_store_sealed_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
        if sealed > 0 && sealed == last {
            return Ok(sealed);
        }
        last = sealed;
    }
    anyhow::bail!("the hub sealed {last} rows and had not finished within 120 s")
}

/// Logs `who` in; its session cookie (`kenko_session=...`).
fn log_in(http: SocketAddr, who: &str) -> anyhow::Result<String> {
    let body = format!("{{\"id\":\"{who}\",\"password\":\"{}\"}}", password(who));
    let request = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (response, _) = exchange(http, &request)?;
    let text = String::from_utf8_lossy(&response);
    text.lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .with_context(|| format!("no session cookie: {text}"))
}

/// One GET with the header `auth`; how long it took and how many bytes the answer had.
fn get(http: SocketAddr, auth: &str, path: &str) -> anyhow::Result<(Duration, usize)> {
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n{auth}\r\n\r\n");
    let (response, took) = exchange(http, &request)?;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "{path}: {}",
        String::from_utf8_lossy(&response[..response.len().min(300)])
    );
    let body = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no body")?;
    Ok((took, response.len() - body - 4))
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}
