//! The HTTP listener's connection limits against the real hub: idle and slowly sent
//! requests are closed in time, thousands of waiting HTTP connections leave MQTT serving
//! under a 1,024 open-file limit, and running out of descriptors is warned about at start
//! and logged sparingly while it lasts.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::raw::{self, Conn};
use common::Hub;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Connections opened and left silent in the flood.
const IDLE_FLOOD: usize = 5_000;
/// Connections in the flood that send their headers a line at a time, slowly.
const SLOWLORIS_FLOOD: usize = 500;
/// The hub's open-file limit in the flood.
const NOFILE: u64 = 1_024;
/// How long the flood lasts.
const FLOOD: Duration = Duration::from_secs(12);
/// Connections of each kind in the timeout test.
const TIMED: usize = 20;

const HEADER_TIMEOUT_MS: u64 = 1_000;
const IDLE_TIMEOUT_MS: u64 = 4_000;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn http_section(max_connections: usize) -> String {
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\nheader_read_timeout_ms = {HEADER_TIMEOUT_MS}\nidle_timeout_ms = {IDLE_TIMEOUT_MS}\nmax_connections = {max_connections}\n\n"
    )
}

/// How long until the server closes `stream` (EOF or reset), reading what it sends.
async fn closed_after(mut stream: impl AsyncRead + Unpin, started: Instant) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// Sends a request's header lines one every 200 ms, never the blank line that ends them.
async fn slowloris(mut stream: impl AsyncWrite + Unpin, until: Instant) -> bool {
    if stream
        .write_all(b"GET /metrics HTTP/1.1\r\n")
        .await
        .is_err()
    {
        return true;
    }
    for i in 0u64.. {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let line = format!("X-Slow-{i}: still coming\r\n");
        if stream.write_all(line.as_bytes()).await.is_err() {
            return true;
        }
    }
    false
}

#[test]
fn idle_and_slowly_sent_connections_are_closed_within_their_timeouts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = http_section(512) + &common::principal("operator-1", &["operator"]);
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    let http = hub.http_addr.context("http")?;
    let rt = runtime()?;
    let (idle, slow, kept_alive) = rt.block_on(async {
        let started = Instant::now();
        let mut idle = Vec::new();
        let mut slow = Vec::new();
        for _ in 0..TIMED {
            let stream = tokio::net::TcpStream::connect(http).await?;
            idle.push(tokio::spawn(closed_after(stream, started)));
            let stream = tokio::net::TcpStream::connect(http).await?;
            let (reader, writer) = stream.into_split();
            let until = Instant::now() + Duration::from_secs(20);
            tokio::spawn(slowloris(writer, until));
            slow.push(tokio::spawn(closed_after(reader, started)));
        }
        // A complete request on a keep-alive connection, then silence: the idle timeout.
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\n\r\n").as_bytes())
            .await?;
        let mut first = [0u8; 12];
        stream.read_exact(&mut first).await?;
        assert_eq!(&first, b"HTTP/1.1 401", "answered, and kept alive");
        let kept_alive = closed_after(stream, Instant::now()).await;
        let mut idle_times = Vec::new();
        for task in idle {
            idle_times.push(task.await?);
        }
        let mut slow_times = Vec::new();
        for task in slow {
            slow_times.push(task.await?);
        }
        anyhow::Ok((idle_times, slow_times, kept_alive))
    })?;
    eprintln!("idle closed after {idle:?}\nslow closed after {slow:?}\nkept-alive closed after {kept_alive:?}");
    let (header, idle_limit) = (
        Duration::from_millis(HEADER_TIMEOUT_MS),
        Duration::from_millis(IDLE_TIMEOUT_MS),
    );
    // Generous margins: a loaded machine is slow to schedule; the order is what matters.
    for took in &idle {
        let took = took.context("an idle connection was never closed")?;
        assert!(took >= idle_limit - Duration::from_millis(100), "{took:?}");
        assert!(took < idle_limit + Duration::from_secs(3), "{took:?}");
    }
    for took in &slow {
        let took = took.context("a slowloris connection was never closed")?;
        assert!(took >= header - Duration::from_millis(100), "{took:?}");
        assert!(
            took < idle_limit - Duration::from_millis(500),
            "closed by the header timeout, well before the idle one: {took:?}"
        );
    }
    let kept_alive = kept_alive.context("the keep-alive connection was never closed")?;
    assert!(
        kept_alive >= idle_limit - Duration::from_millis(100),
        "{kept_alive:?}"
    );
    assert!(
        kept_alive < idle_limit + Duration::from_secs(3),
        "{kept_alive:?}"
    );
    hub.terminate()
}

/// Publishes QoS 1 telemetry as bed-001 every 200 ms and connects a fresh client every
/// second until `stop`; returns the slowest PUBACK and CONNACK and the counts.
fn keep_publishing(
    mqtt: SocketAddr,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Duration, Duration, usize, usize)> {
    let password = common::password("bed-001");
    let (mut device, code) =
        Conn::connect(mqtt, true, "bed-001", Some(("bed-001", &password)), None)?;
    anyhow::ensure!(code == 0, "bed-001 CONNACK {code:#x}");
    let (mut slowest_ack, mut slowest_connect) = (Duration::ZERO, Duration::ZERO);
    let (mut acked, mut connected) = (0usize, 0usize);
    let mut pkid = 1u16;
    let mut last_connect = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let t = (common::now_ms() - 5_000) / 1000 * 1000 - acked as i64 * 1000;
        let payload = format!(r#"{{"ts":{t},"hr":64}}"#);
        let started = Instant::now();
        device.send(&raw::publish_qos1(
            true,
            "devices/bed-001/telemetry",
            pkid,
            &[],
            payload.as_bytes(),
        ))?;
        let ack = device
            .read_kind(4)
            .with_context(|| format!("no PUBACK for publish {pkid} within 10 s"))?;
        anyhow::ensure!(
            ack.body.get(..2) == Some(&pkid.to_be_bytes()[..]),
            "{ack:?}"
        );
        slowest_ack = slowest_ack.max(started.elapsed());
        acked += 1;
        pkid = pkid.wrapping_add(1).max(1);
        if last_connect.elapsed() >= Duration::from_secs(1) {
            last_connect = Instant::now();
            let pw = common::password("operator-1");
            let started = Instant::now();
            let id = format!("probe-{connected}");
            let (_probe, code) = Conn::connect(mqtt, true, &id, Some(("operator-1", &pw)), None)?;
            anyhow::ensure!(code == 0, "probe CONNACK {code:#x}");
            slowest_connect = slowest_connect.max(started.elapsed());
            connected += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok((slowest_ack, slowest_connect, acked, connected))
}

#[test]
fn mqtt_keeps_serving_while_thousands_of_http_connections_wait() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = format!(
        "[mqtt]\nmax_connections = 300\n\n{}{}",
        http_section(200),
        common::config_with_devices(1)
    );
    common::consent(
        &dir.path().join("data"),
        "grant",
        &["citizen-001"],
        "collect",
    )?;
    let hub = Hub::start_with_nofile(dir.path(), &config, NOFILE)?;
    let (soft, _) = common::fd_usage(hub.pid())?;
    assert_eq!(soft, NOFILE, "the hub runs under the lowered limit");
    let (mqtt, http) = (hub.addr, hub.http_addr.context("http")?);
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || keep_publishing(mqtt, stop))
    };
    let rt = runtime()?;
    let opened = Arc::new(AtomicUsize::new(0));
    let closed_by_hub = Arc::new(AtomicUsize::new(0));
    let mut most_fds = 0;
    rt.block_on(async {
        let until = Instant::now() + FLOOD;
        let mut tasks = Vec::new();
        for i in 0..IDLE_FLOOD + SLOWLORIS_FLOOD {
            let (opened, closed_by_hub) = (opened.clone(), closed_by_hub.clone());
            tasks.push(tokio::spawn(async move {
                let left = until.saturating_duration_since(Instant::now());
                let Ok(Ok(mut stream)) =
                    tokio::time::timeout(left, tokio::net::TcpStream::connect(http)).await
                else {
                    return;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                let closed = if i < SLOWLORIS_FLOOD {
                    slowloris(stream, until).await
                } else {
                    let mut buf = [0u8; 64];
                    let left = until.saturating_duration_since(Instant::now());
                    matches!(
                        tokio::time::timeout(left, stream.read(&mut buf)).await,
                        Ok(Ok(0) | Err(_))
                    )
                };
                if closed {
                    closed_by_hub.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((_, open)) = common::fd_usage(hub.pid()) {
                most_fds = most_fds.max(open);
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let (slowest_ack, slowest_connect, acked, connected) = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    let (opened, closed_by_hub) = (
        opened.load(Ordering::Relaxed),
        closed_by_hub.load(Ordering::Relaxed),
    );
    eprintln!(
        "HTTP flood: {opened} of {} connections opened, {closed_by_hub} closed by the hub; hub fds at most {most_fds} of {NOFILE}\nMQTT during it: {acked} QoS 1 publishes acknowledged (slowest {slowest_ack:?}), {connected} new connections (slowest CONNACK {slowest_connect:?})",
        IDLE_FLOOD + SLOWLORIS_FLOOD
    );
    assert!(
        acked >= 20,
        "publishes went on throughout the flood: {acked}"
    );
    assert!(
        connected >= 5,
        "new MQTT clients got in throughout the flood: {connected}"
    );
    assert!(slowest_ack < Duration::from_secs(5), "{slowest_ack:?}");
    assert!(opened > 1_000, "the flood reached the hub: {opened}");
    assert!(closed_by_hub > 0, "the hub closed timed-out connections");
    assert!(most_fds < NOFILE, "{most_fds}");
    let errors: Vec<String> = hub
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("accept failed") || l.contains("open-file limit"))
        .collect();
    assert!(errors.is_empty(), "descriptors never ran out: {errors:?}");
    hub.terminate()
}

#[test]
fn running_out_of_descriptors_is_warned_at_start_and_logged_sparingly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // The default MQTT cap (10,000 connections) cannot fit in 256 descriptors.
    let config = format!(
        "[mqtt]\nconnect_timeout_ms = 3000\n\n{}{}",
        http_section(16),
        common::config_with_devices(1)
    );
    let hub = Hub::start_with_nofile(dir.path(), &config, 256)?;
    let (mqtt, http) = (hub.addr, hub.http_addr.context("http")?);
    // Silent MQTT connections, more than the descriptors left; each is closed after the
    // connect timeout, and meanwhile accepting fails.
    let mut silent = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    // A loaded machine may drop a SYN now and then: go on, within a time limit.
    while silent.len() + refused < 400 && started.elapsed() < Duration::from_secs(10) {
        match std::net::TcpStream::connect_timeout(&mqtt, Duration::from_millis(500)) {
            Ok(stream) => silent.push(stream),
            Err(_) => refused += 1,
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let (_, open) = common::fd_usage(hub.pid())?;
    eprintln!(
        "{} silent connections ({refused} not made); the hub has {open} descriptors open",
        silent.len()
    );
    assert!(
        silent.len() > 256,
        "more connections than descriptors: {}",
        silent.len()
    );
    drop(silent);
    // Once the connect timeout has closed what the hub accepted, MQTT and HTTP serve again.
    let password = common::password("bed-001");
    common::eventually(Duration::from_secs(15), || {
        Ok(
            Conn::connect(mqtt, true, "bed-001", Some(("bed-001", &password)), None)
                .ok()
                .filter(|(_, code)| *code == 0),
        )
    })
    .context("MQTT serves once descriptors are free again")?;
    let (status, _) = common::http(http, "GET", "/metrics", Some("operator-1"), None)?;
    assert_eq!(status, 200, "HTTP serves too");
    let lines = hub.stderr_lines();
    let warned = lines
        .iter()
        .filter(|l| l.contains("open-file limit is below"))
        .count();
    assert_eq!(
        warned, 1,
        "one warning at start with the numbers: {lines:?}"
    );
    let budget = lines
        .iter()
        .find(|l| l.contains("open-file limit is below"));
    assert!(
        budget.is_some_and(|l| l.contains("256") && l.contains("10000")),
        "{budget:?}"
    );
    let exhausted = lines
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(exhausted >= 1, "running out is logged: {lines:?}");
    assert!(
        exhausted <= 4,
        "at most one line per 5 s: {exhausted} lines"
    );
    hub.terminate()
}

#[test]
fn a_plain_request_still_works_through_the_new_listener() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = http_section(4) + &common::principal("operator-1", &["operator"]);
    let hub = Hub::start_without_consent(dir.path(), &config)?;
    let http = hub.http_addr.context("http")?;
    // More sequential requests than the connection cap: each slot is given back.
    for _ in 0..10 {
        let (status, _) = common::http(http, "GET", "/metrics", Some("operator-1"), None)?;
        assert_eq!(status, 200);
    }
    let mut stream = std::net::TcpStream::connect(http)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    hub.terminate()
}
