//! The hubs under test: finding their binaries, starting one with a fresh config on a port
//! the OS picked, reading its memory from /proc, and stopping it. A `Hub` that is dropped
//! (an error, Ctrl-C) takes its process with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::AsyncWriteExt as _;
use tokio::process::{Child, Command};

use crate::configs;
use crate::workdir::Workdir;

/// One system under test. kenko appears twice: its broker path (anonymous clients on
/// `load/#`) and its whole ingest path (devices on `devices/{id}/telemetry`, stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum System {
    Mosquitto,
    Rumqttd,
    KenkoBroker,
    KenkoIngest,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::Mosquitto => "mosquitto",
            System::Rumqttd => "rumqttd",
            System::KenkoBroker => "kenko-broker",
            System::KenkoIngest => "kenko-ingest",
        }
    }

    fn is_kenko(self) -> bool {
        matches!(self, System::KenkoBroker | System::KenkoIngest)
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Where the three brokers' binaries are.
pub struct Binaries {
    pub kenko: PathBuf,
    pub rumqttd: PathBuf,
    pub mosquitto: PathBuf,
}

impl Binaries {
    /// Fails, saying how to get it, if a binary one of `systems` needs is missing.
    pub fn check(&self, systems: &[System]) -> anyhow::Result<()> {
        for &system in systems {
            let (path, how) = match system {
                System::Mosquitto => (&self.mosquitto, "apt-get install -y mosquitto, or pass --mosquitto PATH"),
                System::Rumqttd => (&self.rumqttd, "cargo install rumqttd --version 0.20.0 --root /tmp/rumqttd-bin, or pass --rumqttd PATH"),
                _ => (&self.kenko, "run `cargo build --release` at the repository root, or pass --kenko PATH"),
            };
            if find_executable(path).is_none() {
                bail!(
                    "{system} needs {}, which is not there: {how}",
                    path.display()
                );
            }
        }
        Ok(())
    }
}

/// `path` itself if it has a directory part, else the first match on PATH.
fn find_executable(path: &Path) -> Option<PathBuf> {
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|dir| dir.join(path))
        .find(|candidate| candidate.is_file())
}

/// What a run needs of a hub beyond its defaults.
pub struct Setup {
    /// kenko devices bed-000.. to register (and, for the ingest path, give collect consent).
    pub devices: usize,
    /// Connections the hub must accept at once.
    pub max_connections: usize,
    /// kenko only: also serve the HTTP API, with an operator `bench-operator` who has the
    /// fleet's password (to read `/metrics`).
    pub http: bool,
}

/// The shared password of kenko's bench devices and its hash, made once by the kenko binary
/// itself (`hash-password --token`: cheap argon2 parameters, fit for a random 128-bit
/// secret, so that logins do not dominate a fan-in).
pub struct Fleet {
    pub password: String,
    hash: String,
}

/// Everything runs need in common: the binaries, the scratch directory, kenko's fleet.
pub struct Lab {
    pub bins: Binaries,
    workdir: Workdir,
    fleet: Option<Fleet>,
    runs: usize,
}

impl Lab {
    pub fn new(bins: Binaries) -> anyhow::Result<Lab> {
        Ok(Lab {
            bins,
            workdir: Workdir::create()?,
            fleet: None,
            runs: 0,
        })
    }

    pub fn password(&self) -> &str {
        self.fleet.as_ref().map_or("", |f| f.password.as_str())
    }

    /// A fresh directory for `what` of this invocation's next run.
    pub fn run_dir(&mut self, what: &str) -> anyhow::Result<PathBuf> {
        self.runs += 1;
        self.workdir.subdir(&format!("{:03}-{what}", self.runs))
    }

    /// Writes `system`'s config into a fresh directory, starts it and waits for its port.
    pub async fn start(&mut self, system: System, setup: &Setup) -> anyhow::Result<Hub> {
        self.runs += 1;
        let dir = self
            .workdir
            .subdir(&format!("{:03}-{}", self.runs, system.name()))?;
        let port = free_port()?;
        let http_port = match setup.http && system.is_kenko() {
            true => Some(free_port()?),
            false => None,
        };
        let mut command = match system {
            System::Mosquitto => self.mosquitto_command(&dir, port)?,
            System::Rumqttd => self.rumqttd_command(&dir, port, setup)?,
            _ => {
                self.kenko_command(system, &dir, port, http_port, setup)
                    .await?
            }
        };
        let log_path = dir.join("hub.log");
        let log = std::fs::File::create(&log_path)?;
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {system}"))?;
        let mut hub = Hub {
            system,
            port,
            http_port,
            child,
            log: log_path,
            data_dir: dir.join("data"),
        };
        hub.wait_listening(Duration::from_secs(30)).await?;
        Ok(hub)
    }

    fn mosquitto_command(&self, dir: &Path, port: u16) -> anyhow::Result<Command> {
        let config = dir.join("mosquitto.conf");
        std::fs::write(&config, configs::mosquitto(port))?;
        let mut command = Command::new(&self.bins.mosquitto);
        command.arg("-c").arg(config);
        Ok(command)
    }

    fn rumqttd_command(&self, dir: &Path, port: u16, setup: &Setup) -> anyhow::Result<Command> {
        let config = dir.join("rumqttd.toml");
        let text = configs::rumqttd(port, free_port()?, setup.max_connections + 10);
        std::fs::write(&config, text)?;
        let mut command = Command::new(&self.bins.rumqttd);
        command.arg("-c").arg(config);
        Ok(command)
    }

    async fn kenko_command(
        &mut self,
        system: System,
        dir: &Path,
        port: u16,
        http_port: Option<u16>,
        setup: &Setup,
    ) -> anyhow::Result<Command> {
        let hash = self.fleet_hash().await?;
        let config = dir.join("kenko.toml");
        let mut text = configs::kenko(setup.devices, &hash, setup.max_connections + 10);
        if let Some(http_port) = http_port {
            text.push_str(&configs::kenko_http(http_port, &hash));
        }
        std::fs::write(&config, text)?;
        std::fs::write(dir.join("acl.toml"), configs::KENKO_ACL)?;
        let data_dir = dir.join("data");
        std::fs::create_dir_all(&data_dir)?;
        if system == System::KenkoIngest {
            self.grant_collect(&data_dir, setup.devices).await?;
        }
        let mut command = Command::new(&self.bins.kenko);
        command
            .arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--mqtt")
            .arg(format!("127.0.0.1:{port}"));
        Ok(command)
    }

    /// The fleet's password hash, made on first use.
    pub async fn fleet_hash(&mut self) -> anyhow::Result<String> {
        if let Some(fleet) = &self.fleet {
            return Ok(fleet.hash.clone());
        }
        let password = random_hex(16)?;
        let hash = self.kenko_hash(&password).await?;
        self.fleet = Some(Fleet {
            password,
            hash: hash.clone(),
        });
        Ok(hash)
    }

    async fn kenko_hash(&self, password: &str) -> anyhow::Result<String> {
        let mut child = Command::new(&self.bins.kenko)
            .args(["hash-password", "--token"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run kenko hash-password")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(format!("{password}\n").as_bytes()).await?;
        }
        let out = child.wait_with_output().await?;
        if !out.status.success() {
            bail!(
                "kenko hash-password failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Collect consent for citizens 0..n, recorded before the hub starts.
    pub async fn grant_collect(&self, data_dir: &Path, n: usize) -> anyhow::Result<()> {
        let mut command = Command::new(&self.bins.kenko);
        command
            .args(["consent", "grant", "--purpose", "collect", "--data-dir"])
            .arg(data_dir);
        for i in 0..n {
            command.arg("--citizen").arg(configs::citizen_id(i));
        }
        let out = command
            .output()
            .await
            .context("cannot run kenko consent grant")?;
        if !out.status.success() {
            bail!(
                "kenko consent grant failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

/// A port on 127.0.0.1 that the OS just handed out (and that is free again).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Resident memory of a process, from /proc/PID/status.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kb: u64,
    pub hwm_kb: u64,
}

impl Memory {
    pub fn rss_mb(self) -> f64 {
        self.rss_kb as f64 / 1024.0
    }

    pub fn hwm_mb(self) -> f64 {
        self.hwm_kb as f64 / 1024.0
    }
}

/// A running hub.
pub struct Hub {
    pub system: System,
    pub port: u16,
    /// The HTTP API's port, when the run asked for it ([`Setup::http`]).
    pub http_port: Option<u16>,
    child: Child,
    log: PathBuf,
    pub data_dir: PathBuf,
}

impl Hub {
    async fn wait_listening(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited at start ({status}); {}",
                    self.system,
                    self.log_tail()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!(
                    "{} is not listening after {limit:?}; {}",
                    self.system,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(10)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log.display())
    }

    /// VmRSS and VmHWM of the hub's process.
    pub fn memory(&self) -> anyhow::Result<Memory> {
        let pid = self.child.id().context("the hub has exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Ok(Memory {
            rss_kb: field("VmRSS:"),
            hwm_kb: field("VmHWM:"),
        })
    }

    /// SIGTERM (kenko flushes and closes its stores), then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
            if self.system.is_kenko() {
                eprintln!(
                    "warning: {} did not stop within {grace:?}; killed",
                    self.system
                );
            }
        }
        Ok(())
    }
}
