//! The MQTT hooks an external broker calls (`POST /api/v1/mqtt/acl` and `/auth`) on the real
//! `kenko` binary, with 1,000 devices registered and 500 of their citizens' care consents in
//! force (prints figures, asserts none):
//!
//! 1. ACL decisions as mosquitto-go-auth asks them, on one kept-alive connection (as a
//!    broker's HTTP client keeps it): devices publishing their own telemetry (allowed) and
//!    another's (denied), and a care service's deliveries of citizens who consented
//!    (allowed) and who did not (denied);
//! 2. the same on a new connection per request;
//! 3. logins (`/auth`), whose cost is the principal's argon2id hash: here the test-grade
//!    parameters of the config below, so the figure is of the hook around the hash.
//!
//! `cargo bench --bench mqtt_hooks -- [REQUESTS]` (default 20,000 ACL decisions per figure)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use anyhow::Context as _;
use kenko_broker::auth::{hash_password, Cost};

mod common;
use common::{report, Hub, KENKO};

const DEVICES: usize = 1_000;
const CONSENTED: usize = 500;
const SECRET: &str = "bench-hooks-secret";

fn main() -> anyhow::Result<()> {
    let requests: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    grant_care(&data)?;
    let config = dir.path().join("kenko.toml");
    std::fs::write(&config, config_text(&secret_digest()))?;
    let hub = Hub::start(&config, &data)?;

    let bodies: Vec<(String, u16)> = (0..requests).map(acl_request).collect();
    let mut kept = Connection::open(hub.http)?;
    let mut samples = Vec::with_capacity(requests);
    for (body, expected) in &bodies {
        let started = Instant::now();
        let status = kept.post("/api/v1/mqtt/acl", body)?;
        samples.push(started.elapsed());
        anyhow::ensure!(status == *expected, "{body}: {status}, not {expected}");
    }
    report("ACL decision, kept-alive connection", samples);

    let fresh = requests.min(5_000);
    let mut samples = Vec::with_capacity(fresh);
    for (body, expected) in bodies.iter().take(fresh) {
        let started = Instant::now();
        let status = Connection::open(hub.http)?.post("/api/v1/mqtt/acl", body)?;
        samples.push(started.elapsed());
        anyhow::ensure!(status == *expected, "{body}: {status}");
    }
    report("ACL decision, new connection each", samples);

    let logins = requests.min(1_000);
    let mut samples = Vec::with_capacity(logins);
    for i in 0..logins {
        let id = format!("bed-{:04}", i % DEVICES + 1);
        let body = format!(
            r#"{{"username":"{id}","password":"pw-{id}","clientid":"{id}","peerhost":"10.0.{}.{}"}}"#,
            i / 250,
            i % 250
        );
        let started = Instant::now();
        let status = kept.post("/api/v1/mqtt/auth", &body)?;
        samples.push(started.elapsed());
        anyhow::ensure!(status == 200, "login of {id}: {status}");
    }
    report(
        "login (argon2id m=256 KiB, t=1), kept-alive connection",
        samples,
    );
    Ok(())
}

/// The `i`th ACL question and the status it must get: a quarter each of own telemetry,
/// another device's telemetry, a consented delivery and an unconsented one.
fn acl_request(i: usize) -> (String, u16) {
    let device = i % DEVICES + 1;
    let id = format!("bed-{device:04}");
    let other = format!("bed-{:04}", (device % DEVICES) + 1);
    let consented = format!("citizen-{:04}", i % CONSENTED + 1);
    let not_consented = format!("citizen-{:04}", CONSENTED + i % (DEVICES - CONSENTED) + 1);
    let ask = |user: &str, topic: &str, acc: u8| {
        format!(r#"{{"username":"{user}","clientid":"{user}","topic":"{topic}","acc":{acc}}}"#)
    };
    match i % 4 {
        0 => (ask(&id, &format!("devices/{id}/telemetry"), 2), 200),
        1 => (ask(&id, &format!("devices/{other}/telemetry"), 2), 403),
        2 => (
            ask(
                "st-luke",
                &format!("citizens/{consented}/observations/heart_rate"),
                1,
            ),
            200,
        ),
        _ => (
            ask(
                "st-luke",
                &format!("citizens/{not_consented}/observations/heart_rate"),
                1,
            ),
            403,
        ),
    }
}

/// One HTTP/1.1 connection, kept alive across requests.
struct Connection {
    reader: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Connection {
    fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            reader: BufReader::new(stream),
            addr,
        })
    }

    /// POSTs `body` as JSON with the hooks' secret; the answer's status.
    fn post(&mut self, path: &str, body: &str) -> anyhow::Result<u16> {
        let request = format!(
            "POST {path}?token={SECRET} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("no status line")?
            .parse()?;
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer)?;
        Ok(status)
    }
}

/// Care consent of the first `CONSENTED` citizens to st-luke for heart rate.
fn grant_care(data: &std::path::Path) -> anyhow::Result<()> {
    let mut command = std::process::Command::new(KENKO);
    command
        .args(["consent", "grant", "--data-dir"])
        .arg(data)
        .args([
            "--purpose",
            "care",
            "--grantee",
            "st-luke",
            "--source",
            "bench",
        ])
        .args(["--types", "heart_rate"]);
    for i in 1..=CONSENTED {
        command.args(["--citizen", &format!("citizen-{i:04}")]);
    }
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "kenko consent grant: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

fn secret_digest() -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(SECRET.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config_text(digest: &str) -> String {
    let mut text = format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\n[http.mqtt_hooks]\ntoken_sha256 = \"{digest}\"\n\n\
         [auth.login]\nsource_burst = 100000\nsource_per_minute = 100000\n\
         principal_burst = 100000\nprincipal_per_minute = 100000\n\n"
    );
    for i in 1..=DEVICES {
        let id = format!("bed-{i:04}");
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"bed\"\ncitizen = \"citizen-{i:04}\"\npassword_hash = \"{}\"\n\n",
            hash_password(&format!("pw-{id}"), Cost::Token)
        ));
    }
    text.push_str(&format!(
        "[[principals]]\nid = \"st-luke\"\nroles = [\"care\"]\npassword_hash = \"{}\"\n",
        hash_password("pw-st-luke", Cost::Token)
    ));
    text
}
