//! End to end through the pipeline: messages handed over as the broker does, acknowledged
//! once durable in the write-ahead log, and written out by the sinks. Prints messages
//! acknowledged per second and observations stored per second into SQLite and, when
//! `KENKO_BENCH_INFLUXDB_URL` names an InfluxDB-compatible server (e.g. a VictoriaMetrics
//! started with `victoria-metrics -httpListenAddr=127.0.0.1:8428`), into it.
//!
//! `cargo bench -p kenko-ingest --bench sinks -- [MESSAGES]` (default 200000; each bed-sensor
//! message holds 4 readings).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kenko_config::InfluxConfig;
use kenko_devices::registry::demo_devices;
use kenko_devices::Registry;
use kenko_ingest::consent::{ConsentChange, ConsentRegistry, Purpose, HUB};
use kenko_ingest::pipeline::{self, Origin, Reply, Settings, Submission};

const DEVICES: usize = 100;

fn main() {
    let messages: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let now = jiff::Timestamp::now().as_millisecond();
    let mut registry = ConsentRegistry::open(&dir.path().join("registry.db")).expect("registry");
    for i in 1..=DEVICES {
        let change = ConsentChange {
            citizen: format!("citizen-{i:03}"),
            grantee: HUB.into(),
            purpose: Purpose::Collect,
            data_types: vec![],
            valid_from_ms: None,
            valid_until_ms: None,
            source: "bench".into(),
            granted: true,
            erase: false,
        };
        registry.record(change, now).expect("consent");
    }
    drop(registry);
    let influx_url = std::env::var("KENKO_BENCH_INFLUXDB_URL").ok();
    let settings = Settings {
        influxdb: influx_url.as_ref().map(|url| InfluxConfig {
            url: url.clone(),
            org: "bench".into(),
            token_env: "KENKO_INFLUXDB_TOKEN".into(),
            token_file: None,
            bucket_personal: "personal".into(),
            bucket_shared: "shared".into(),
            measurement: format!("kenko_bench_{now}"),
            shared_measurement: format!("kenko_bench_research_{now}"),
            batch_max: 5_000,
            batch_age_ms: 200,
            timeout_ms: 10_000,
            max_backoff_ms: 1_000,
            gzip: true,
        }),
        ..Settings::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (handle, pipeline) = pipeline::start(
        &settings,
        Registry::from_config(&demo_devices(DEVICES)),
        dir.path(),
        None,
    )
    .expect("start");
    let stats = handle.stats().clone();
    let base = now - 24 * 3_600_000;
    let started = Instant::now();
    let acknowledged = runtime.block_on(async move {
        let (to, verdicts) = flume::unbounded::<pipeline::Outcome>();
        let counter = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok(outcome) = verdicts.recv_async().await {
                assert!(outcome.verdict.is_ok(), "{:?}", outcome.verdict);
                n += 1;
            }
            n
        });
        let devices: Vec<Arc<str>> = (1..=DEVICES)
            .map(|i| Arc::from(format!("bed-{i:03}")))
            .collect();
        for i in 0..messages {
            let device = &devices[(i % DEVICES as u64) as usize];
            let t = base + (i / DEVICES as u64) as i64 * 1000;
            let payload = format!(
                r#"{{"ts":{t},"seq":{i},"occ":true,"hr":{},"rr":14.5,"mv":3}}"#,
                55 + i % 30
            );
            handle
                .submit(Submission {
                    client_id: device.clone(),
                    device: device.as_ref().into(),
                    payload: Bytes::from(payload),
                    received_ms: now,
                    reply: Some(Reply {
                        to: to.clone(),
                        token: i as u32,
                        refusable: false,
                    }),
                    protobuf: false,
                    origin: Origin::Device,
                })
                .await
                .expect("submit");
        }
        drop(to);
        drop(handle);
        counter.await.expect("counter")
    });
    let acked_secs = started.elapsed().as_secs_f64();
    let observations = messages * 4;
    let sqlite_secs = wait_for(&started, || {
        stats.observations_stored.load(Ordering::Relaxed) >= observations
    });
    println!(
        "pipeline: {acknowledged} messages ({observations} observations) from {DEVICES} devices acknowledged in {acked_secs:.2} s: {:.0} messages/s",
        acknowledged as f64 / acked_secs
    );
    println!(
        "sqlite sink: all stored {sqlite_secs:.2} s after the first message: {:.0} observations/s",
        observations as f64 / sqlite_secs
    );
    if let Some(url) = influx_url {
        let influx_secs = wait_for(&started, || {
            stats.influx_points.load(Ordering::Relaxed) >= observations
        });
        println!(
            "influxdb sink ({url}): all written {influx_secs:.2} s after the first message: {:.0} observations/s",
            observations as f64 / influx_secs
        );
    } else {
        println!("influxdb sink: not measured; set KENKO_BENCH_INFLUXDB_URL");
    }
    pipeline.join();
}

fn wait_for(started: &Instant, done: impl Fn() -> bool) -> f64 {
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "sink did not finish within 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed().as_secs_f64()
}
