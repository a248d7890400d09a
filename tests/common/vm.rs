//! A real VictoriaMetrics server (Debian's `victoria-metrics`), which accepts InfluxDB's
//! `/api/v2/write`, on a free port with its own data directory; points are read back
//! through its export API.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use super::eventually;

pub const BINARY: &str = "/usr/bin/victoria-metrics";

pub struct VictoriaMetrics {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
}

/// A series as exported: its labels, and (timestamp, value) pairs.
#[derive(Debug, Clone)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(i64, f64)>,
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

impl VictoriaMetrics {
    /// Starts a server storing in `dir`.
    pub fn start(dir: &Path) -> anyhow::Result<VictoriaMetrics> {
        let mut vm = VictoriaMetrics {
            child: None,
            addr: free_port()?,
            dir: dir.to_owned(),
        };
        vm.resume()?;
        Ok(vm)
    }

    /// A free address with no server on it yet (start it later with [`Self::resume`]).
    pub fn stopped(dir: &Path) -> anyhow::Result<VictoriaMetrics> {
        Ok(VictoriaMetrics {
            child: None,
            addr: free_port()?,
            dir: dir.to_owned(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts (again) on the same address and data.
    pub fn resume(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "already running");
        std::fs::create_dir_all(&self.dir)?;
        let child = Command::new(BINARY)
            .arg(format!("-httpListenAddr={}", self.addr))
            .arg(format!("-storageDataPath={}", self.dir.display()))
            // Devices send late data; keep everything.
            .arg("-retentionPeriod=100y")
            // InfluxDB keeps one point per series and time; VictoriaMetrics does so with
            // deduplication at the finest interval.
            .arg("-dedup.minScrapeInterval=1ms")
            .arg("-search.latencyOffset=0s")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {BINARY}; install Debian's victoria-metrics"))?;
        self.child = Some(child);
        eventually(Duration::from_secs(30), || {
            Ok(get(self.addr, "/health").ok().filter(|(s, _)| *s == 200))
        })
        .context("VictoriaMetrics did not become healthy")?;
        Ok(())
    }

    /// Stops the server with SIGTERM, so that it flushes what it acknowledged (a killed
    /// VictoriaMetrics loses the last second it holds in memory); its data stays.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            super::signal(child.id(), "TERM")?;
            if super::wait_timeout(&mut child, Duration::from_secs(30)).is_err() {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }

    /// Every series whose name matches the regular expression `name`, flushed first so
    /// that what was written is readable.
    pub fn export(&self, name: &str) -> anyhow::Result<Vec<Series>> {
        let (status, _) = get(self.addr, "/internal/force_flush")?;
        anyhow::ensure!(status == 200, "force_flush answered {status}");
        let query = format!("/api/v1/export?match[]=%7B__name__%3D~%22{name}%22%7D");
        let (status, body) = get(self.addr, &query)?;
        anyhow::ensure!(status == 200, "export answered {status}: {body}");
        let mut out = Vec::new();
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            let labels = v["metric"]
                .as_object()
                .context("metric")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let values = v["values"].as_array().context("values")?;
            let times = v["timestamps"].as_array().context("timestamps")?;
            let points = times
                .iter()
                .zip(values)
                .map(|(t, v)| (t.as_i64().unwrap_or(0), v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            out.push(Series { labels, points });
        }
        Ok(out)
    }
}

impl VictoriaMetrics {
    /// How often each (device label, timestamp) is among the series named by `name`.
    pub fn points(
        &self,
        name: &str,
    ) -> anyhow::Result<std::collections::HashMap<(String, i64), usize>> {
        let mut out = std::collections::HashMap::new();
        for series in self.export(name)? {
            let device = series.labels.get("device").cloned().unwrap_or_default();
            for (t, _) in series.points {
                *out.entry((device.clone(), t)).or_insert(0) += 1;
            }
        }
        Ok(out)
    }
}

impl Drop for VictoriaMetrics {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One HTTP/1.0 GET (the answer ends when the connection closes); status and body.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}");
    };
    let status = head.split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, body.to_owned()))
}
