//! Consent under load, measured on the real `kenko` binary (prints figures, asserts none):
//!
//! 1. acknowledgement latency of 100 devices publishing at QoS 1 every 100 ms, idle and
//!    while a citizen's app polls its own data over the HTTP API every 10 ms (each poll
//!    appends an audit entry to `registry.db`);
//! 2. revocation latency, from the commit of a care withdrawal to the hub refusing live
//!    deliveries to the care service (the last delivery it still made, of a device that
//!    publishes every 5 ms beside the 100 and the polling app), p50 / p99 / max.
//!
//! Both run with `registry.db` bloated first with consent records and audit entries
//! (`KENKO_BENCH_REGISTRY_MB`, default 100; 0 for a fresh registry).
//!
//! `cargo bench --bench consent`

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use kenko_broker::auth::{hash_password, Cost};

mod common;
use common::{report, Hub};
use kenko_ingest::consent::{ConsentChange, ConsentRegistry, Purpose, HUB};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

const DEVICES: usize = 100;
/// Each device publishes this often (1,000 messages a second in all).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const PHASE: Duration = Duration::from_secs(15);
const POLL_EVERY: Duration = Duration::from_millis(10);
const REVOCATIONS: usize = 40;
/// The device whose citizen's care consent is granted and withdrawn, beside the others,
/// and how often it publishes: the resolution of the revocation figure.
const WATCHED: usize = DEVICES + 1;
const WATCHED_EVERY: Duration = Duration::from_millis(5);

fn main() -> anyhow::Result<()> {
    let megabytes: u64 = std::env::var("KENKO_BENCH_REGISTRY_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let registry = data.join("registry.db");
    prepare_registry(&registry, megabytes)?;
    let size = std::fs::metadata(&registry)?.len() as f64 / 1e6;
    println!("registry.db: {size:.1} MB");
    let config = dir.path().join("kenko.toml");
    std::fs::write(&config, config_text())?;
    let hub = Hub::start(&config, &data)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(measure(&hub, &registry));
    drop(hub);
    result
}

async fn measure(hub: &Hub, registry: &Path) -> anyhow::Result<()> {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    for i in 1..=DEVICES {
        spawn_device(hub.mqtt, i, PUBLISH_EVERY, latencies.clone(), stop.clone());
    }
    tokio::time::sleep(Duration::from_secs(3)).await; // connect and warm up
    latencies.lock().expect("lock").clear();
    tokio::time::sleep(PHASE).await;
    let idle = std::mem::take(&mut *latencies.lock().expect("lock"));
    report("ack latency, idle", idle);

    let polls = Arc::new(AtomicU64::new(0));
    let poller = {
        let (stop, polls, http) = (stop.clone(), polls.clone(), hub.http);
        std::thread::spawn(move || poll_own_data(http, &stop, &polls))
    };
    tokio::time::sleep(PHASE).await;
    let polling = std::mem::take(&mut *latencies.lock().expect("lock"));
    report(
        &format!(
            "ack latency, app polling every 10 ms ({} polls answered)",
            polls.load(Ordering::Relaxed)
        ),
        polling,
    );

    spawn_device(
        hub.mqtt,
        WATCHED,
        WATCHED_EVERY,
        Arc::default(),
        stop.clone(),
    );
    let revocations = revocation_latencies(hub.mqtt, registry).await?;
    report("revocation, commit to last live delivery", revocations);
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    Ok(())
}

fn password(id: &str) -> String {
    format!("pw-{id}")
}

fn config_text() -> String {
    let mut text = String::from(
        "[ingest]\nlive_republish = true\nbatch_linger_ms = 2\n\n[http]\nlisten = \"127.0.0.1:0\"\n\n",
    );
    let hash = |id: &str| hash_password(&password(id), Cost::Token);
    for i in 1..=WATCHED {
        let id = format!("bed-{i:03}");
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"bed\"\ncitizen = \"citizen-{i:03}\"\npassword_hash = \"{}\"\n\n",
            hash(&id)
        ));
    }
    for (id, extra) in [
        ("st-luke", "roles = [\"care\"]"),
        (
            "app-001",
            "roles = [\"citizen\"]\ncitizen = \"citizen-001\"",
        ),
    ] {
        text.push_str(&format!(
            "[[principals]]\nid = \"{id}\"\n{extra}\npassword_hash = \"{}\"\n\n",
            hash(id)
        ));
    }
    text
}

/// Collect consent for the devices' citizens, then (raw rows, in one transaction) consent
/// records of other citizens and audit entries until the file holds about `megabytes`.
fn prepare_registry(path: &Path, megabytes: u64) -> anyhow::Result<()> {
    let mut registry = ConsentRegistry::open(path)?;
    for i in 1..=WATCHED {
        registry.record(
            change(&format!("citizen-{i:03}"), HUB, Purpose::Collect, true),
            now_ms(),
        )?;
    }
    drop(registry);
    let mut conn = rusqlite::Connection::open(path)?;
    let tx = conn.transaction()?;
    let padding = "x".repeat(200);
    let rows = megabytes * 1_000_000 / 2 / 300;
    for i in 0..rows {
        tx.execute(
            "INSERT INTO consents (citizen, grantee, purpose, data_types, valid_from_ms,
                valid_until_ms, recorded_ms, source, granted, erase)
             VALUES (?1, 'st-luke', 'care', 'heart_rate,spo2', NULL, NULL, ?2, ?3, ?4, 0)",
            rusqlite::params![
                format!("other-{}", i % 50_000),
                i as i64,
                padding,
                i % 2 == 0
            ],
        )?;
        tx.execute(
            "INSERT INTO audit (seq, at_ms, kind, body, prev, hash)
             VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM audit), ?1, 'access.identified', ?2, zeroblob(32), zeroblob(32))",
            rusqlite::params![i as i64, padding],
        )?;
    }
    tx.commit()?;
    Ok(())
}

fn change(citizen: &str, grantee: &str, purpose: Purpose, granted: bool) -> ConsentChange {
    ConsentChange {
        citizen: citizen.into(),
        grantee: grantee.into(),
        purpose,
        data_types: vec!["heart_rate".into()],
        valid_from_ms: None,
        valid_until_ms: None,
        source: "bench".into(),
        granted,
        erase: false,
    }
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// One device: a reading at QoS 1 every `every`, one at a time, timing each PUBLISH to its
/// PUBACK.
fn spawn_device(
    hub: SocketAddr,
    i: usize,
    every: Duration,
    latencies: Arc<Mutex<Vec<Duration>>>,
    stop: Arc<AtomicBool>,
) {
    let id = format!("bed-{i:03}");
    let mut options = MqttOptions::new(&id, hub.ip().to_string(), hub.port());
    options.set_credentials(&id, password(&id));
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        while !stop.load(Ordering::Relaxed) {
            ticker.tick().await;
            let body = format!(r#"{{"ts":{},"hr":62}}"#, now_ms());
            let topic = format!("devices/{id}/telemetry");
            if client
                .try_publish(topic, QoS::AtLeastOnce, false, body)
                .is_err()
            {
                continue;
            }
            let sent = Instant::now();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => {
                        latencies.lock().expect("lock").push(sent.elapsed());
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
            }
        }
    });
}

/// The citizen's app reads its own recent data every [`POLL_EVERY`] until `stop`.
fn poll_own_data(http: SocketAddr, stop: &AtomicBool, polls: &AtomicU64) {
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("app-001:{}", password("app-001")).as_bytes());
    let request = format!(
        "GET /api/v1/observations?metric=heart_rate&from=-10s HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\nAuthorization: Basic {credentials}\r\n\r\n"
    );
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let answered = std::net::TcpStream::connect(http).and_then(|mut s| {
            s.write_all(request.as_bytes())?;
            let mut response = Vec::new();
            s.read_to_end(&mut response)?;
            Ok(response.starts_with(b"HTTP/1.1 200"))
        });
        if matches!(answered, Ok(true)) {
            polls.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(POLL_EVERY.saturating_sub(started.elapsed()));
    }
}

/// Grants care to st-luke, waits for live deliveries, withdraws it (committed to the
/// registry directly) and takes the time from the commit to the last delivery received;
/// [`REVOCATIONS`] times, while the watched device publishes every [`WATCHED_EVERY`].
async fn revocation_latencies(hub: SocketAddr, registry: &Path) -> anyhow::Result<Vec<Duration>> {
    let mut options = MqttOptions::new("st-luke", hub.ip().to_string(), hub.port());
    options.set_credentials("st-luke", password("st-luke"));
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    client
        .subscribe(
            format!("citizens/citizen-{WATCHED:03}/observations/+"),
            QoS::AtMostOnce,
        )
        .await?;
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let sink = seen.clone();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Incoming::Publish(_)) = event {
                sink.lock().expect("lock").push(Instant::now());
            }
        }
    });
    let mut registry = ConsentRegistry::open(registry)?;
    let mut delays = Vec::new();
    let citizen = format!("citizen-{WATCHED:03}");
    for _ in 0..REVOCATIONS {
        registry.record(change(&citizen, "st-luke", Purpose::Care, true), now_ms())?;
        let before = seen.lock().expect("lock").len();
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().expect("lock").len() < before + 3 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no live deliveries after a grant"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        registry.record(change(&citizen, "st-luke", Purpose::Care, false), now_ms())?;
        let committed = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let last = seen
            .lock()
            .expect("lock")
            .last()
            .copied()
            .context("deliveries")?;
        delays.push(last.saturating_duration_since(committed));
    }
    Ok(delays)
}
