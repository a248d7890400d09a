//! Password guessing against the real hub, over MQTT and HTTP at once: a real device and a
//! real operator still log in, the hub's memory stays bounded, guesses are throttled, and
//! failures are logged (sparingly) and counted; unknown names take as long as known ones;
//! a hash that would take more than 64 MiB per login is refused at start.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::{base64_encode, raw, Hub};
use kenko_broker::auth::{hash_password, Cost};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Wrong passwords sent at once, over each of MQTT and HTTP.
const GUESSES: usize = 1_000;
/// Loopback addresses the guesses of each listener come from (127.0.1.1 … for MQTT,
/// 127.0.2.1 … for HTTP).
const ATTACKER_ADDRESSES: u8 = 10;
/// Logins timed per kind of username.
const TIMING_SAMPLES: usize = 60;
/// Resident memory the hub must stay under while it is attacked.
const RSS_LIMIT_KB: u64 = 100 * 1024;

const CONNACK_SUCCESS: u8 = 0x00;
const CONNACK_BAD_LOGIN: u8 = 0x86;
const CONNACK_SERVER_BUSY: u8 = 0x89;
const CONNACK_RATE_EXCEEDED: u8 = 0x9F;

const VICTIM_DEVICE: &str = "bed-001";
const VICTIM_OPERATOR: &str = "ops-victim";

fn loopback(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// The victims have argon2id's password cost (19 MiB, 2 passes), as people's passwords do:
/// the cost that made a guessing storm take the hub's memory and every login's time.
fn config(extra: &str) -> String {
    let device_hash = hash_password(&common::password(VICTIM_DEVICE), Cost::Password);
    let operator_hash = hash_password(&common::password(VICTIM_OPERATOR), Cost::Password);
    format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n{extra}\n\n[[devices]]\nid = \"{VICTIM_DEVICE}\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\npassword_hash = \"{device_hash}\"\n\n[[principals]]\nid = \"{VICTIM_OPERATOR}\"\nroles = [\"operator\"]\npassword_hash = \"{operator_hash}\"\n\n{}",
        common::principal("operator-1", &["operator"])
    )
}

async fn connect_from(source: IpAddr, to: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket.connect(to).await?)
}

/// An MQTT 5 CONNECT from `source`; the CONNACK's reason code.
async fn mqtt_login(
    hub: SocketAddr,
    source: IpAddr,
    client_id: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<u8> {
    let mut stream = connect_from(source, hub).await?;
    let connect = raw::connect(true, client_id, Some((user, password)), None);
    stream.write_all(&connect).await?;
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).await?;
    if head[0] != 0x20 {
        bail!("expected CONNACK, got packet type {:#x}", head[0]);
    }
    let mut rest = vec![0u8; usize::from(head[1] & 0x7f).max(2)];
    stream.read_exact(&mut rest[..2]).await?;
    Ok(rest[1])
}

/// `GET /metrics` with Basic credentials from `source`: status, `Retry-After`, body.
async fn http_get_metrics(
    hub: SocketAddr,
    source: IpAddr,
    user: &str,
    password: &str,
) -> anyhow::Result<(u16, Option<u64>, String)> {
    let mut stream = connect_from(source, hub).await?;
    let token = base64_encode(format!("{user}:{password}").as_bytes());
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: {hub}\r\nConnection: close\r\nAuthorization: Basic {token}\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let retry_after = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("retry-after:")
                .map(str::to_owned)
        })
        .and_then(|v| v.trim().parse().ok());
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    Ok((status, retry_after, body.unwrap_or_default()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// The value of a sample line of the Prometheus text, e.g. `kenko_x{listener="mqtt"}`.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[derive(Debug, Default)]
struct Tally {
    success: usize,
    refused: usize,
    throttled: usize,
    busy: usize,
    other: Vec<String>,
}

#[test]
fn password_guessing_over_mqtt_and_http_leaves_real_logins_working() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config(""))?;
    let (mqtt, http) = (hub.addr, hub.http_addr.context("http")?);
    let device_home = loopback(0, 0, 2);
    let operator_home = loopback(0, 0, 3);
    let rt = runtime()?;
    let device_pw = common::password(VICTIM_DEVICE);
    let operator_pw = common::password(VICTIM_OPERATOR);
    // The device and the operator have logged in from where they live before.
    rt.block_on(async {
        let code = mqtt_login(mqtt, device_home, VICTIM_DEVICE, VICTIM_DEVICE, &device_pw).await?;
        assert_eq!(
            code, CONNACK_SUCCESS,
            "the device logs in before the attack"
        );
        let (status, _, _) =
            http_get_metrics(http, operator_home, VICTIM_OPERATOR, &operator_pw).await?;
        assert_eq!(status, 200, "the operator logs in before the attack");
        anyhow::Ok(())
    })?;
    let rss_before = hub.memory()?;
    let (mqtt_tally, http_tally, device_took, operator_took, peak_rss_kb) = rt.block_on(async {
        let mut guesses = Vec::new();
        for i in 0..GUESSES {
            let source = loopback(0, 1, 1 + (i % usize::from(ATTACKER_ADDRESSES)) as u8);
            let id = format!("guess-{i}");
            guesses.push(tokio::spawn(async move {
                mqtt_login(mqtt, source, &id, VICTIM_DEVICE, "guess").await
            }));
        }
        let mut http_guesses = Vec::new();
        // From other addresses than the MQTT guesses, so that each listener's guesses meet
        // source buckets of their own and some of each are verified.
        for i in 0..GUESSES {
            let source = loopback(0, 2, 1 + (i % usize::from(ATTACKER_ADDRESSES)) as u8);
            http_guesses.push(tokio::spawn(async move {
                http_get_metrics(http, source, VICTIM_OPERATOR, "guess").await
            }));
        }
        // While the guesses are in flight, the real ones log in again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let code = tokio::time::timeout(
            Duration::from_secs(5),
            mqtt_login(mqtt, device_home, VICTIM_DEVICE, VICTIM_DEVICE, &device_pw),
        )
        .await
        .context("the device's login took more than 5 s")??;
        let device_took = started.elapsed();
        assert_eq!(
            code, CONNACK_SUCCESS,
            "the device logs in during the attack"
        );
        let started = Instant::now();
        let (status, _, _) = tokio::time::timeout(
            Duration::from_secs(5),
            http_get_metrics(http, operator_home, VICTIM_OPERATOR, &operator_pw),
        )
        .await
        .context("the operator's login took more than 5 s")??;
        let operator_took = started.elapsed();
        assert_eq!(status, 200, "the operator logs in during the attack");
        let mut peak_rss_kb = 0;
        let mut mqtt_tally = Tally::default();
        for guess in guesses {
            peak_rss_kb = peak_rss_kb.max(hub.memory()?.rss_kb);
            match guess.await? {
                Ok(CONNACK_SUCCESS) => mqtt_tally.success += 1,
                Ok(CONNACK_BAD_LOGIN) => mqtt_tally.refused += 1,
                Ok(CONNACK_RATE_EXCEEDED) => mqtt_tally.throttled += 1,
                Ok(CONNACK_SERVER_BUSY) => mqtt_tally.busy += 1,
                other => mqtt_tally.other.push(format!("{other:?}")),
            }
        }
        let mut http_tally = Tally::default();
        for guess in http_guesses {
            peak_rss_kb = peak_rss_kb.max(hub.memory()?.rss_kb);
            match guess.await? {
                Ok((200, _, _)) => http_tally.success += 1,
                Ok((401, _, _)) => http_tally.refused += 1,
                Ok((429, Some(seconds), _)) if seconds >= 1 => http_tally.throttled += 1,
                Ok((503, Some(_), _)) => http_tally.busy += 1,
                other => http_tally.other.push(format!("{other:?}")),
            }
        }
        anyhow::Ok((
            mqtt_tally,
            http_tally,
            device_took,
            operator_took,
            peak_rss_kb,
        ))
    })?;
    let rss_after = hub.memory()?;
    eprintln!(
        "MQTT guesses: {mqtt_tally:?}\nHTTP guesses: {http_tally:?}\ndevice login during the attack: {device_took:?}; operator: {operator_took:?}\nhub before {rss_before}, peak {:.1} MB, after {rss_after}",
        peak_rss_kb as f64 / 1024.0
    );
    for tally in [&mqtt_tally, &http_tally] {
        assert_eq!(tally.success, 0, "{tally:?}");
        assert!(
            tally.other.is_empty(),
            "every guess gets an answer: {tally:?}"
        );
        assert!(tally.refused > 0, "some guesses are verified: {tally:?}");
        assert!(
            tally.throttled > GUESSES / 2,
            "most guesses are throttled before verification: {tally:?}"
        );
    }
    assert!(
        peak_rss_kb.max(rss_after.rss_kb) < RSS_LIMIT_KB,
        "hub RSS {peak_rss_kb} kB"
    );
    let (status, _, metrics) = rt.block_on(http_get_metrics(
        http,
        loopback(0, 0, 4),
        "operator-1",
        &common::password("operator-1"),
    ))?;
    assert_eq!(status, 200, "{metrics}");
    let counted = |name: &str| sample(&metrics, name).unwrap_or(0);
    let mqtt_failures = counted("kenko_login_failures_total{listener=\"mqtt\"}");
    let http_failures = counted("kenko_login_failures_total{listener=\"http\"}");
    assert_eq!(mqtt_failures, mqtt_tally.refused as u64, "{metrics}");
    assert_eq!(http_failures, http_tally.refused as u64, "{metrics}");
    assert_eq!(
        counted("kenko_login_throttled_total{listener=\"mqtt\"}"),
        mqtt_tally.throttled as u64
    );
    assert_eq!(
        counted("kenko_login_throttled_total{listener=\"http\"}"),
        http_tally.throttled as u64
    );
    let logged: Vec<String> = hub
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("login failed"))
        .collect();
    assert!(!logged.is_empty(), "failed logins are logged");
    assert!(
        (logged.len() as u64) < mqtt_failures + http_failures,
        "at a bounded rate: {} lines for {} failures",
        logged.len(),
        mqtt_failures + http_failures
    );
    assert!(
        logged.iter().any(|l| l.contains("\"mqtt\""))
            && logged.iter().any(|l| l.contains("\"http\"")),
        "{logged:?}"
    );
    hub.terminate()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

#[test]
fn unknown_and_known_usernames_take_the_same_time() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Limits out of the way: this test times the verification itself.
    let limits = "[auth.login]\nsource_burst = 10000\nprincipal_burst = 10000\n";
    let hub = Hub::start_without_consent(dir.path(), &config(limits))?;
    let (mqtt, http) = (hub.addr, hub.http_addr.context("http")?);
    let rt = runtime()?;
    let (known, unknown) = rt.block_on(async {
        let (mut known, mut unknown) = (Vec::new(), Vec::new());
        for i in 0..TIMING_SAMPLES {
            // Interleaved, first one then the other first, so that a change of load and
            // whatever the first of a pair pays weigh on both alike.
            let mut pair = [(VICTIM_DEVICE, &mut known), ("bed-999", &mut unknown)];
            if i % 2 == 1 {
                pair.reverse();
            }
            for (user, into) in pair {
                let source = loopback(0, 2, 1 + (i % 200) as u8);
                let started = Instant::now();
                let code = mqtt_login(mqtt, source, user, user, "wrong").await?;
                into.push(started.elapsed());
                assert_eq!(code, CONNACK_BAD_LOGIN, "{user}");
            }
        }
        anyhow::Ok((known, unknown))
    })?;
    // The two of a pair ran back to back, under the same load: their ratio cancels what
    // other work on the machine adds, which medians taken apart do not.
    let mut ratios: Vec<f64> = known
        .iter()
        .zip(&unknown)
        .map(|(k, u)| u.as_secs_f64() / k.as_secs_f64())
        .collect();
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let (known, unknown) = (median(known), median(unknown));
    eprintln!(
        "median refusal: known username {known:?}, unknown {unknown:?}; median ratio of pairs {ratio:.2}"
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "unknown {unknown:?} vs known {known:?} (ratio {ratio:.2}): the names can be told apart"
    );
    let (status, _, metrics) = rt.block_on(http_get_metrics(
        http,
        loopback(0, 0, 4),
        "operator-1",
        &common::password("operator-1"),
    ))?;
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "kenko_login_stand_in_verifications_total"),
        Some(TIMING_SAMPLES as u64),
        "every unknown name was verified against the stand-in: {metrics}"
    );
    hub.terminate()
}

#[test]
fn a_hash_that_takes_more_than_64_mib_is_refused_at_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // m=1 GiB: each login would have taken 1 GiB and seconds. Made by editing a cheap hash
    // (the parameters are not covered by the hash), so that the test needs no 1 GiB.
    let cheap = hash_password("pw", Cost::Token);
    let greedy = cheap.replace("m=256", "m=1048576");
    assert_ne!(cheap, greedy);
    let config = format!(
        "[[devices]]\nid = \"bed-greedy\"\nkind = \"bed\"\ncitizen = \"citizen-001\"\npassword_hash = \"{greedy}\"\n"
    );
    let path = dir.path().join("kenko.toml");
    std::fs::write(&path, config)?;
    let mut child = Command::new(common::KENKO)
        .args(["serve", "--config"])
        .arg(&path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--mqtt", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let status = common::wait_timeout(&mut child, Duration::from_secs(20))?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut stderr)?;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("password_hash of bed-greedy")
            && stderr.contains("m=1048576 KiB")
            && stderr.contains("64 MiB"),
        "{stderr}"
    );
    Ok(())
}
