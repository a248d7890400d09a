//! Test harness: runs the real `kenko` binary on a free port in a temporary data directory and
//! talks to it with real MQTT clients.

#![allow(dead_code)]

pub mod cli;
pub mod external;
pub mod fleet;
pub mod mqtt311;
pub mod pki;
pub mod raw;
pub mod readings;
pub mod store;
pub mod vm;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rumqttc::{AsyncClient, EventLoop, MqttOptions};

pub const KENKO: &str = env!("CARGO_BIN_EXE_kenko");

/// The password the test configs give principal or device `id`.
pub fn password(id: &str) -> String {
    format!("pw-{id}")
}

/// The argon2id hash of [`password`]`(id)`.
pub fn password_hash(id: &str) -> String {
    kenko_broker::auth::hash_password(&password(id), kenko_broker::auth::Cost::Token)
}

/// A `[[principals]]` entry with roles and the test password.
pub fn principal(id: &str, roles: &[&str]) -> String {
    let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[principals]]\nid = \"{id}\"\nroles = [{}]\npassword_hash = \"{}\"\n\n",
        roles.join(", "),
        password_hash(id)
    )
}

/// A config registering bed-001 … bed-NNN for citizen-001 … citizen-NNN, each with its test
/// password, and an operator principal `operator-1`; kenko's built-in ACL rules.
pub fn config_with_devices(n: usize) -> String {
    let mut text = String::from("[ingest]\nbatch_linger_ms = 2\n\n");
    for i in 1..=n {
        let id = format!("bed-{i:03}");
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"bed\"\ncitizen = \"citizen-{i:03}\"\npassword_hash = \"{}\"\n\n",
            password_hash(&id)
        ));
    }
    text.push_str(&principal("operator-1", &["operator"]));
    text
}

/// As [`config_with_devices`], with each bed registered with the payload profile
/// `kenko simulate` gives it (bed-002 speaks bed-json-v2, bed-008 protobuf, ...).
pub fn config_for_simulation(n: usize) -> String {
    let mut text = config_with_devices(n);
    for i in 1..=n {
        let id = format!("bed-{i:03}");
        let profile = kenko_sim::profile_for(kenko_config::DeviceKind::Bed, i);
        text = text.replace(
            &format!("id = \"{id}\"\n"),
            &format!("id = \"{id}\"\nprofile = \"{profile}\"\n"),
        );
    }
    text
}

/// Writes "DEVICE-ID PASSWORD" lines for bed-001 … bed-NNN, as `kenko simulate --passwords` reads.
pub fn password_file(dir: &Path, n: usize) -> anyhow::Result<PathBuf> {
    let path = dir.join("passwords.txt");
    let text: String = (1..=n)
        .map(|i| {
            let id = format!("bed-{i:03}");
            format!("{id} {}\n", password(&id))
        })
        .collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// config/interop.toml: anonymous clients may use every non-$ topic.
/// How long a test waits to be sure something does not arrive.
pub const QUIET: Duration = Duration::from_millis(500);
/// How long a test waits for something that should arrive.
pub const SOON: Duration = Duration::from_secs(5);

/// A hub with config/interop.toml: anonymous publish and subscribe on every non-$ topic,
/// subscribing to test/nosubscribe denied. The directory goes with it.
pub fn interop_hub() -> anyhow::Result<(tempfile::TempDir, Hub)> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &interop_config())?;
    Ok((dir, hub))
}

pub fn interop_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/interop.toml")
}

/// A `kenko serve` process.
pub struct Hub {
    child: Child,
    pub addr: SocketAddr,
    /// The TLS listener, when the config has `[mqtt.tls]`.
    pub tls_addr: Option<SocketAddr>,
    /// The WebSocket listener, when the config has `mqtt.websocket`.
    pub websocket_addr: Option<SocketAddr>,
    /// The HTTP API, when the config has `http.listen`.
    pub http_addr: Option<SocketAddr>,
    /// The HTTPS API, when the config has `[http.tls]`.
    pub https_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    _stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Hub {
    /// Starts `kenko serve` with `config` in `dir` on a port the OS picks, after recording
    /// `collect` consent for every citizen the config's devices belong to.
    pub fn start(dir: &Path, config: &str) -> anyhow::Result<Hub> {
        let mut citizens: Vec<&str> = config
            .lines()
            .filter_map(|l| l.trim().strip_prefix("citizen = \""))
            .filter_map(|rest| rest.strip_suffix('"'))
            .collect();
        citizens.sort_unstable();
        citizens.dedup();
        if !citizens.is_empty() {
            consent(&dir.join("data"), "grant", &citizens, "collect")?;
        }
        Hub::start_without_consent(dir, config)
    }

    /// Starts `kenko serve` with `config` in `dir`, recording no consent.
    pub fn start_without_consent(dir: &Path, config: &str) -> anyhow::Result<Hub> {
        let config_path = dir.join("kenko.toml");
        std::fs::write(&config_path, config)?;
        Hub::start_with(dir, &config_path)
    }

    pub fn start_with(dir: &Path, config_path: &Path) -> anyhow::Result<Hub> {
        Hub::start_on(dir, config_path, "127.0.0.1:0")
    }

    /// Starts `kenko serve` with MQTT on `mqtt` (e.g. the address of a hub that was killed,
    /// so that its clients reconnect to the new one).
    pub fn start_on(dir: &Path, config_path: &Path, mqtt: &str) -> anyhow::Result<Hub> {
        Hub::start_in(dir, config_path, mqtt, Command::new(KENKO))
    }

    /// Starts `kenko serve` with `config` in `dir` under an open-file limit of `nofile`
    /// (soft and hard, through util-linux's `prlimit`), recording no consent.
    pub fn start_with_nofile(dir: &Path, config: &str, nofile: u64) -> anyhow::Result<Hub> {
        let config_path = dir.join("kenko.toml");
        std::fs::write(&config_path, config)?;
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={nofile}:{nofile}"))
            .arg(KENKO);
        Hub::start_in(dir, &config_path, "127.0.0.1:0", command)
    }

    /// Runs `command` (the `kenko` binary, or a launcher whose last argument is it) as
    /// `serve` and waits for its listeners.
    fn start_in(
        dir: &Path,
        config_path: &Path,
        mqtt: &str,
        mut command: Command,
    ) -> anyhow::Result<Hub> {
        let data_dir = dir.join("data");
        let mut child = command
            .args(["serve", "--config"])
            .arg(config_path)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--mqtt", mqtt])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start kenko")?;
        let stderr = child.stderr.take().context("no stderr")?;
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let _ = err_tx.send(line);
            }
        });
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| anyhow!("kenko serve printed no address within 20 s"))?;
            if let Some(rest) = line.strip_prefix("kenko serve: MQTT on ") {
                let addr = rest.split(',').next().context("address")?;
                break addr.parse::<SocketAddr>()?;
            }
        };
        // Further listeners are announced before "stop with Ctrl-C".
        let (mut tls_addr, mut websocket_addr, mut http_addr, mut https_addr) =
            (None, None, None, None);
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
            if let Some(addr) = line.strip_prefix("kenko serve: MQTT over TLS on ") {
                tls_addr = Some(addr.trim().parse::<SocketAddr>()?);
            } else if let Some(addr) = line.strip_prefix("kenko serve: MQTT over WebSocket on ") {
                websocket_addr = Some(addr.trim().parse::<SocketAddr>()?);
            } else if let Some(addr) = line.strip_prefix("kenko serve: HTTP API on ") {
                http_addr = Some(addr.trim().parse::<SocketAddr>()?);
            } else if let Some(addr) = line.strip_prefix("kenko serve: HTTPS API on ") {
                https_addr = Some(addr.trim().parse::<SocketAddr>()?);
            } else if line.starts_with("stop with") {
                break;
            }
        }
        Ok(Hub {
            child,
            addr,
            tls_addr,
            websocket_addr,
            http_addr,
            https_addr,
            data_dir,
            config: config_path.to_owned(),
            _stdout: rx,
            stderr: err_rx,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the hub process.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        signal(self.child.id(), name)
    }

    /// What the hub has written to stderr so far (it is also passed on to the test's).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// SIGKILL: the process ends at once, in the middle of whatever it was doing.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Sends SIGTERM and waits for an orderly exit; fails if the exit is not clean.
    pub fn terminate(mut self) -> anyhow::Result<()> {
        signal(self.child.id(), "TERM")?;
        let status = wait_timeout(&mut self.child, Duration::from_secs(30))?;
        if !status.success() {
            bail!("kenko exited with {status} after SIGTERM");
        }
        Ok(())
    }

    /// Rust-side client options for this hub, without credentials (anonymous).
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.port());
        options.set_keep_alive(Duration::from_secs(10));
        options
    }

    /// Client options that log in as principal `client_id` with its test password.
    pub fn login(&self, client_id: &str) -> MqttOptions {
        let mut options = self.options(client_id);
        options.set_credentials(client_id, password(client_id));
        options
    }

    /// An anonymous client.
    pub fn client(&self, client_id: &str) -> (AsyncClient, EventLoop) {
        AsyncClient::new(self.options(client_id), 1000)
    }

    /// A client logged in as principal (or device) `client_id`.
    pub fn device(&self, client_id: &str) -> (AsyncClient, EventLoop) {
        AsyncClient::new(self.login(client_id), 1000)
    }

    /// Runs `kenko query` on this hub's data and parses its JSON.
    pub fn query(&self, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
        query(&self.data_dir, args)
    }

    /// Runs `kenko query` until it returns at least `n` rows (30 s at most) and returns them.
    /// The store sink follows the write-ahead log, so what was acknowledged may still be on
    /// its way into the store; tests then assert on exactly what came back.
    pub fn query_at_least(
        &self,
        n: usize,
        args: &[&str],
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut last = Vec::new();
        let waited = eventually(Duration::from_secs(30), || {
            last = self.query(args)?;
            Ok((last.len() >= n).then(|| last.clone()))
        });
        waited.map_err(|e| {
            anyhow::anyhow!(
                "{e}: wanted {n} rows of `kenko query {}`, have {}: {last:?}",
                args.join(" "),
                last.len()
            )
        })
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with Basic credentials of `principal` (its test password); returns
/// the status code and the body parsed as JSON.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    principal: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let (status, text) = http_text(addr, method, path, principal, body)?;
    let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// The value of the `/metrics` sample whose name (with labels) is `prefix`.
pub fn metric(body: &str, prefix: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{prefix} missing from:\n{body}"))
}

/// As [`http`], with the response body as text (`/metrics`, `/readyz`).
pub fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    principal: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let (status, _, body) = http_response(addr, method, path, principal, body)?;
    Ok((status, body))
}

/// As [`http_text`], with the response's header lines too (`name: value`, as sent).
pub fn http_response(
    addr: SocketAddr,
    method: &str,
    path: &str,
    principal: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, Vec<String>, String)> {
    let password = principal.map(password);
    let credentials = principal.zip(password.as_deref());
    http_exchange(addr, method, path, credentials, body)
}

/// One HTTP/1.1 request, with Basic `credentials` (id, password) if given; returns the
/// status code, the response's header lines and its body.
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    credentials: Option<(&str, &str)>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, Vec<String>, String)> {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let token = credentials.map(|(id, password)| {
        format!(
            "Basic {}",
            base64_encode(format!("{id}:{password}").as_bytes())
        )
    });
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(token) = &token {
        headers.push(("Authorization", token));
    }
    http_request(addr, method, path, &headers, &body)
}

/// One HTTP/1.1 request with these extra header lines and body; returns the status code, the
/// response's header lines (`name: value`, as sent) and its body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> anyhow::Result<(u16, Vec<String>, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no body")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status line")?
        .parse()?;
    let headers: Vec<String> = head.lines().skip(1).map(str::to_owned).collect();
    let chunked = headers.iter().any(|h| {
        h.to_ascii_lowercase()
            .replace(' ', "")
            .starts_with("transfer-encoding:chunked")
    });
    let raw = &response[split + 4..];
    let body = if chunked { unchunk(raw)? } else { raw.to_vec() };
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn unchunk(mut raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line")?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        anyhow::ensure!(raw.len() >= size + 2, "a chunk runs past the response");
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

impl Hub {
    /// `mosquitto_pub` of `payload` from `device` (its test password) on its telemetry
    /// topic, QoS 1: the message is acknowledged, so stored or dead-lettered, when it returns.
    pub fn publish_as(&self, device: &str, payload: &str) -> anyhow::Result<()> {
        let login = ["-i", device, "-u", device, "-P", &password(device)];
        telemetry_pub(self.port(), &login, device, payload)
    }
}

/// `mosquitto_pub` at QoS 1 of `payload` on `device`'s telemetry topic, to the broker on
/// `port`, with the client id and credentials in `login`.
pub fn telemetry_pub(port: u16, login: &[&str], device: &str, payload: &str) -> anyhow::Result<()> {
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(login)
        .args(["-t", &format!("devices/{device}/telemetry"), "-m", payload])
        .output()
        .context("mosquitto_pub not found; install mosquitto-clients")?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Subscribes `watcher` (an operator) to `devices/+/errors` and, once subscribed, gathers
/// the first error body of each topic until `topics` topics have one or 30 s have passed.
pub async fn watch_device_errors(
    watcher: &AsyncClient,
    mut events: EventLoop,
    topics: usize,
) -> anyhow::Result<tokio::task::JoinHandle<std::collections::HashMap<String, serde_json::Value>>> {
    use rumqttc::{Event, Incoming, QoS};
    watcher
        .subscribe("devices/+/errors", QoS::AtLeastOnce)
        .await?;
    let errors = tokio::spawn(async move {
        let mut errors = std::collections::HashMap::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while errors.len() < topics && tokio::time::Instant::now() < deadline {
            if let Ok(Ok(Event::Incoming(Incoming::Publish(p)))) =
                tokio::time::timeout(Duration::from_secs(1), events.poll()).await
            {
                let body: serde_json::Value =
                    serde_json::from_slice(&p.payload).unwrap_or_default();
                errors.insert(p.topic.clone(), body);
            }
        }
        errors
    });
    // Wait for the SUBACK before the caller's traffic starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(errors)
}

/// Standard base64 with padding (HTTP Basic credentials).
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// `kenko consent grant|revoke --citizen … --purpose P [extra…]` on `data_dir`.
pub fn consent(
    data_dir: &Path,
    change: &str,
    citizens: &[&str],
    purpose: &str,
) -> anyhow::Result<()> {
    consent_with(data_dir, change, citizens, purpose, &[]).map(drop)
}

/// Records (`change` = grant or revoke) `citizen`'s care consent to care service `service`
/// in the hub's data directory under `dir` (as `Hub::start` lays it out).
pub fn care_consent(dir: &Path, change: &str, citizen: &str, service: &str) -> anyhow::Result<()> {
    consent_with(
        &dir.join("data"),
        change,
        &[citizen],
        "care",
        &["--grantee", service],
    )
    .map(drop)
}

/// Runs `kenko consent CHANGE` with `extra` arguments; returns what it printed.
pub fn consent_with(
    data_dir: &Path,
    change: &str,
    citizens: &[&str],
    purpose: &str,
    extra: &[&str],
) -> anyhow::Result<String> {
    let mut command = Command::new(KENKO);
    command
        .args(["consent", change, "--data-dir"])
        .arg(data_dir)
        .args(["--purpose", purpose, "--source", "test"]);
    for c in citizens {
        command.args(["--citizen", c]);
    }
    let output = command.args(extra).output()?;
    if !output.status.success() {
        bail!(
            "kenko consent {change} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn query(data_dir: &Path, args: &[&str]) -> anyhow::Result<Vec<serde_json::Value>> {
    let output = Command::new(KENKO)
        .arg("query")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--format", "json"])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "kenko query failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}

pub fn wait_timeout(
    child: &mut Child,
    limit: Duration,
) -> anyhow::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub fn eventually<T>(
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check()? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("condition not met within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Epoch milliseconds now.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Resident memory of a process from `/proc/<pid>/status`, in kB: `VmRSS` now and `VmHWM`, the
/// most it has held since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MB, VmHWM {:.1} MB",
            self.rss_kb as f64 / 1024.0,
            self.hwm_kb as f64 / 1024.0
        )
    }
}

/// The memory of process `pid` now.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        Ok(line.trim().trim_end_matches("kB").trim().parse()?)
    };
    Ok(Memory {
        rss_kb: field("VmRSS:")?,
        hwm_kb: field("VmHWM:")?,
    })
}

/// File descriptors process `pid` may open (soft RLIMIT_NOFILE) and has open now.
pub fn fd_usage(pid: u32) -> anyhow::Result<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no 'Max open files' in /proc/<pid>/limits")?;
    let soft = if soft == "unlimited" {
        u64::MAX
    } else {
        soft.parse()?
    };
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok((soft, open))
}

impl Hub {
    /// The `kenko serve` process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The hub's resident memory now.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        memory(self.child.id())
    }
}
