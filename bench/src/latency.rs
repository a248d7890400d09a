//! `latency`: how long kenko takes from receiving a message to having its observations
//! queryable, at a share (half by default) of the rate it reaches flat out. The hub
//! measures each observation itself (the `kenko_ingest_store_delay_seconds` histogram of
//! `/metrics`); the harness reads the histogram before and after the paced load and
//! reports the quantiles of the difference.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use crate::configs;
use crate::load::{self, bed_json, FanInArgs};
use crate::mqtt::{Conn, Login};
use crate::publisher;
use crate::systems::{Lab, Setup, System};

const HISTOGRAM: &str = "kenko_ingest_store_delay_seconds_bucket{le=\"";
/// Time the store sink gets to catch up before the histogram is read.
const SETTLE: Duration = Duration::from_secs(3);

#[derive(clap::Args, Clone)]
pub struct LatencyArgs {
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Messages each client publishes flat out, to find the maximum rate
    #[arg(long, default_value_t = 2000)]
    pub msgs: u64,
    /// Seconds of the paced load
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// The paced load's rate as a share of the maximum
    #[arg(long, default_value_t = 0.5)]
    pub share: f64,
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    #[arg(long, default_value_t = 20)]
    pub inflight: u64,
}

pub async fn run(args: &LatencyArgs, lab: &mut Lab) -> anyhow::Result<()> {
    let setup = Setup {
        devices: args.clients,
        max_connections: args.clients + 10,
        http: true,
    };
    let hub = lab.start(System::KenkoIngest, &setup).await?;
    let http = hub
        .http_port
        .ok_or_else(|| anyhow::anyhow!("no HTTP port"))?;
    let flat_out = FanInArgs {
        rounds: 1,
        clients: args.clients,
        msgs: args.msgs,
        size: args.size,
        inflight: args.inflight,
        ingest: true,
    };
    let outcome = load::drive(&flat_out, hub.port, System::KenkoIngest, lab.password()).await;
    let max_rate = outcome.acked as f64 / outcome.secs.max(1e-9);
    println!(
        "flat out: {} msgs from {} clients in {:.3} s: {max_rate:.0} msgs/s (failed clients: {})",
        outcome.acked, args.clients, outcome.secs, outcome.failed
    );
    tokio::time::sleep(SETTLE).await;
    let before = scrape(http, lab.password()).await?;
    let rate = max_rate * args.share;
    let acked = paced(args, hub.port, lab.password(), rate).await;
    tokio::time::sleep(SETTLE).await;
    let after = scrape(http, lab.password()).await?;
    let delays = Buckets::between(&before, &after);
    let memory = hub.memory()?;
    hub.stop(Duration::from_secs(30)).await?;
    println!(
        "paced: {acked} msgs at {rate:.0} msgs/s ({:.0} % of flat out) for {} s; rss_mb={:.1}",
        args.share * 100.0,
        args.secs,
        memory.rss_mb()
    );
    println!(
        "receive -> queryable over {} observations: p50 {} p99 {} (kenko_ingest_store_delay_seconds)",
        delays.count(),
        delays.quantile_text(0.5),
        delays.quantile_text(0.99)
    );
    Ok(())
}

/// Every client publishes at its share of `rate` for `args.secs`; returns the messages
/// acknowledged. Event times fall half a second off the flat-out run's, so none repeats.
async fn paced(args: &LatencyArgs, port: u16, password: &str, rate: f64) -> u64 {
    let per_client = rate / args.clients as f64;
    let msgs = (per_client * args.secs as f64).ceil() as u64;
    let base_ms = load::now_ms() - msgs as i64 * 1000 + 500;
    let (args, password): (Arc<LatencyArgs>, Arc<str>) = (Arc::new(args.clone()), password.into());
    let mut clients = JoinSet::new();
    for i in 0..args.clients {
        let (args, password) = (args.clone(), password.clone());
        clients.spawn(async move {
            let device = configs::device_id(i);
            let login = Login {
                client_id: &device,
                user: Some((device.as_str(), &password)),
                keep_alive_s: 600,
            };
            let Ok(mut conn) = Conn::open(port, &login, load::SILENCE).await else {
                return 0;
            };
            let topic = format!("devices/{device}/telemetry");
            let payload = |n| bed_json(n, base_ms, args.size);
            let published = publisher::publish_paced(
                &mut conn,
                &topic,
                msgs,
                args.inflight,
                per_client,
                load::SILENCE,
                payload,
            )
            .await;
            conn.close().await;
            published.acked
        });
    }
    let mut acked = 0;
    while let Some(joined) = clients.join_next().await {
        acked += joined.unwrap_or(0);
    }
    acked
}

/// `GET /metrics` as the bench operator; the body.
async fn scrape(port: u16, password: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let credentials = base64(format!("{}:{password}", configs::OPERATOR).as_bytes());
    let request = format!(
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {credentials}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    anyhow::ensure!(
        response.starts_with("HTTP/1.1 200"),
        "GET /metrics: {}",
        response.lines().next().unwrap_or("no answer")
    );
    Ok(response)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A histogram's cumulative counts by upper bound in seconds (`+Inf` last, as infinity).
struct Buckets(Vec<(f64, u64)>);

impl Buckets {
    fn parse(metrics: &str) -> Buckets {
        let buckets = metrics
            .lines()
            .filter_map(|line| line.strip_prefix(HISTOGRAM))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect();
        Buckets(buckets)
    }

    /// What was added between two readings of the histogram.
    fn between(before: &str, after: &str) -> Buckets {
        let before = Buckets::parse(before);
        let after = Buckets::parse(after);
        let diff = after
            .0
            .iter()
            .map(|&(le, n)| {
                let was = before
                    .0
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0, |(_, n)| *n);
                (le, n.saturating_sub(was))
            })
            .collect();
        Buckets(diff)
    }

    fn count(&self) -> u64 {
        self.0.last().map_or(0, |(_, n)| *n)
    }

    /// The `q` quantile, interpolated within its bucket as Prometheus does; `None` without
    /// observations, infinity if it lies above the last finite bound.
    fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q * total as f64;
        let (mut lower, mut below) = (0.0, 0u64);
        for &(le, n) in &self.0 {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return Some(f64::INFINITY);
                }
                let share = (rank - below as f64) / (n - below).max(1) as f64;
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, n);
        }
        None
    }

    fn quantile_text(&self, q: f64) -> String {
        match self.quantile(q) {
            None => "-".into(),
            Some(s) if s.is_infinite() => {
                let last = self.0.iter().rev().find(|(le, _)| le.is_finite());
                format!("> {} s", last.map_or(0.0, |(le, _)| *le))
            }
            Some(s) => format!("{:.0} ms", s * 1000.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "kenko_ingest_store_delay_seconds_bucket{le=\"0.1\"} 10\n\
        kenko_ingest_store_delay_seconds_bucket{le=\"0.25\"} 10\n\
        kenko_ingest_store_delay_seconds_bucket{le=\"+Inf\"} 10\n";
    const AFTER: &str = "kenko_ingest_store_delay_seconds_bucket{le=\"0.1\"} 60\n\
        kenko_ingest_store_delay_seconds_bucket{le=\"0.25\"} 109\n\
        kenko_ingest_store_delay_seconds_bucket{le=\"+Inf\"} 110\n";

    #[test]
    fn quantiles_come_from_what_was_added_between_two_readings() {
        let delays = Buckets::between(BEFORE, AFTER);
        assert_eq!(delays.count(), 100);
        assert_eq!(
            delays.quantile_text(0.5),
            "100 ms",
            "the 50th of 100 is the first bucket's last"
        );
        let p90 = delays.quantile(0.9).expect("p90");
        let expected = 0.1 + 0.15 * 40.0 / 49.0;
        assert!(
            (p90 - expected).abs() < 1e-9,
            "the 40th of the 49 in 0.1..0.25: {p90}"
        );
        assert_eq!(delays.quantile_text(0.999), "> 0.25 s");
        assert_eq!(Buckets::between(AFTER, AFTER).quantile_text(0.5), "-");
    }

    #[test]
    fn base64_pads_as_http_basic_expects() {
        assert_eq!(base64(b"bench-operator:pw"), "YmVuY2gtb3BlcmF0b3I6cHc=");
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"abc"), "YWJj");
    }
}
