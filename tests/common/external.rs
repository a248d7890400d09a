//! An external MQTT broker (Debian's Mosquitto, started for real on a free port) and
//! `kenko worker` processes taking telemetry from it through a shared subscription.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use super::KENKO;

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// A running Mosquitto, stopped when dropped.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
}

impl Mosquitto {
    /// Starts Mosquitto in `dir` on a free loopback port, anonymous clients allowed and no
    /// limit on the messages it queues for a disconnected persistent session (a worker being
    /// restarted), so that nothing it acknowledged to a device is dropped.
    pub fn start(dir: &Path) -> anyhow::Result<Mosquitto> {
        Mosquitto::start_with(dir, "")
    }

    /// As [`Mosquitto::start`], with `extra` lines in its configuration (`acl_file …`).
    pub fn start_with(dir: &Path, extra: &str) -> anyhow::Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nmax_inflight_messages 100\n{extra}"
            ),
        )?;
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {MOSQUITTO}; install Debian's mosquitto"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut mosquitto = Mosquitto { child, addr };
        super::eventually(Duration::from_secs(10), || {
            if let Some(status) = mosquitto.child.try_wait()? {
                anyhow::bail!("mosquitto exited at start: {status}");
            }
            Ok(std::net::TcpStream::connect(addr).ok())
        })
        .context("mosquitto did not listen")?;
        Ok(mosquitto)
    }
}

impl Mosquitto {
    /// `mosquitto_pub` of `payload` on `device`'s telemetry topic, QoS 1 (anonymous, with
    /// a client id of its own): the broker has it when this returns.
    pub fn publish(&self, device: &str, payload: &str) -> anyhow::Result<()> {
        let client_id = format!("{device}-pub");
        super::telemetry_pub(self.addr.port(), &["-i", &client_id], device, payload)
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kenko worker`, killed when dropped.
pub struct Worker {
    child: Child,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    /// What it printed after its start, line by line.
    out: mpsc::Receiver<String>,
}

impl Worker {
    /// Starts `kenko worker --config CONFIG --data-dir DATA_DIR` and waits until it has
    /// subscribed.
    pub fn start(config: &Path, data_dir: &Path) -> anyhow::Result<Worker> {
        let mut child = Command::new(KENKO)
            .args(["worker", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start kenko worker")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, out) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let worker = Worker {
            child,
            config: config.to_owned(),
            data_dir: data_dir.to_owned(),
            out,
        };
        worker.wait_for("kenko worker: subscribed to ", Duration::from_secs(30))?;
        Ok(worker)
    }

    /// Waits for a line starting with `prefix`; the line.
    pub fn wait_for(&self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .out
                .recv_timeout(left)
                .map_err(|_| anyhow!("kenko worker printed no {prefix:?} within {limit:?}"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    /// SIGKILL: no chance to acknowledge or flush anything.
    pub fn kill(mut self) -> anyhow::Result<(PathBuf, PathBuf)> {
        self.child.kill()?;
        self.child.wait()?;
        Ok((self.config.clone(), self.data_dir.clone()))
    }

    /// SIGTERM, and what it printed when it stopped.
    pub fn terminate(mut self) -> anyhow::Result<String> {
        super::signal(self.child.id(), "TERM")?;
        let status = super::wait_timeout(&mut self.child, Duration::from_secs(30))?;
        anyhow::ensure!(status.success(), "kenko worker exited with {status}");
        self.wait_for("kenko worker: stopped", Duration::from_secs(1))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
