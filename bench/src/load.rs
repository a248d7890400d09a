//! `fan-in`: many QoS 1 publishers at once, each with a window of unacknowledged messages;
//! messages acknowledged per second, per system, alternating systems every round.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::JoinSet;

use crate::configs;
use crate::mqtt::{Conn, Login};
use crate::publisher;
use crate::report::Samples;
use crate::systems::{Lab, Setup, System};

/// The silence after which a client counts as failed.
pub const SILENCE: Duration = Duration::from_secs(60);

#[derive(clap::Args, Clone)]
pub struct FanInArgs {
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Messages each client publishes
    #[arg(long, default_value_t = 2000)]
    pub msgs: u64,
    /// Payload size in bytes (about)
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// Unacknowledged messages a client may have
    #[arg(long, default_value_t = 20)]
    pub inflight: u64,
    /// Also run kenko's whole ingest path (devices/{id}/telemetry, stored and counted)
    #[arg(long)]
    pub ingest: bool,
}

/// What one run of the load did.
pub struct Outcome {
    pub acked: u64,
    pub failed: usize,
    pub secs: f64,
}

pub async fn run(args: &FanInArgs, lab: &mut Lab, systems: &[System]) -> anyhow::Result<()> {
    let samples = Samples::alternate(args.rounds, systems, async |system| {
        run_once(args, lab, system).await
    })
    .await?;
    println!("{}", samples.summary("msgs/s"));
    Ok(())
}

/// One system, one run: start it, load it, read its memory, stop it, print one line.
async fn run_once(args: &FanInArgs, lab: &mut Lab, system: System) -> anyhow::Result<f64> {
    let setup = Setup {
        devices: args.clients,
        max_connections: args.clients + 10,
        http: false,
    };
    let hub = lab.start(system, &setup).await?;
    let outcome = drive(args, hub.port, system, lab.password()).await;
    let memory = hub.memory()?;
    let data_dir = hub.data_dir.clone();
    if system == System::KenkoIngest {
        // Let the last batches reach the store before the hub is asked to stop.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    hub.stop(Duration::from_secs(30)).await?;
    let rate = outcome.acked as f64 / outcome.secs.max(1e-9);
    let mut line = format!(
        "{system:<13} clients={} msgs={} failed={} secs={:.3} msgs_per_s={rate:.0} rss_mb={:.1} hwm_mb={:.1}",
        args.clients,
        outcome.acked,
        outcome.failed,
        outcome.secs,
        memory.rss_mb(),
        memory.hwm_mb(),
    );
    if system == System::KenkoIngest {
        let rows = crate::stored::heart_rate_rows(&lab.bins.kenko, &data_dir).await?;
        line.push_str(&format!(" stored_heart_rate={rows}"));
    }
    println!("{line}");
    Ok(rate)
}

/// Runs every client at once and waits for all of them.
pub async fn drive(args: &FanInArgs, port: u16, system: System, password: &str) -> Outcome {
    let base_ms = now_ms() - args.msgs as i64 * 1000;
    let args = Arc::new(args.clone());
    let password: Arc<str> = password.into();
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for i in 0..args.clients {
        let (args, password) = (args.clone(), password.clone());
        clients.spawn(async move { client(&args, port, system, i, &password, base_ms).await });
    }
    let (mut acked, mut failed) = (0, 0);
    while let Some(joined) = clients.join_next().await {
        let (n, ok) = joined.unwrap_or((0, false));
        acked += n;
        failed += usize::from(!ok);
    }
    Outcome {
        acked,
        failed,
        secs: started.elapsed().as_secs_f64(),
    }
}

/// One client: connect, publish every message, disconnect. Returns (acknowledged, ok).
async fn client(
    args: &FanInArgs,
    port: u16,
    system: System,
    i: usize,
    password: &str,
    base_ms: i64,
) -> (u64, bool) {
    let (client_id, topic) = match system {
        System::KenkoIngest => {
            let device = configs::device_id(i);
            let topic = format!("devices/{device}/telemetry");
            (device, topic)
        }
        _ => (format!("load-{i}"), format!("load/{i}/telemetry")),
    };
    let user = (system == System::KenkoIngest).then_some((client_id.as_str(), password));
    let login = Login {
        client_id: &client_id,
        user,
        keep_alive_s: 600,
    };
    let Ok(mut conn) = Conn::open(port, &login, SILENCE).await else {
        return (0, false);
    };
    let payload = |n| bed_json(n, base_ms, args.size);
    let published = publisher::publish_all(
        &mut conn,
        &topic,
        args.msgs,
        args.inflight,
        SILENCE,
        payload,
    )
    .await;
    conn.close().await;
    (published.acked, published.error.is_none())
}

/// A bed-json-v1 message padded to about `size` bytes; message `n` is timed `n` seconds
/// after `base_ms`, so the last one is about now.
pub fn bed_json(n: u64, base_ms: i64, size: usize) -> Vec<u8> {
    let mut text = format!(
        r#"{{"seq":{n},"ts":{},"hr":{},"rr":{},"mv":{},"occ":true,"stage":"light","pad":""#,
        base_ms + n as i64 * 1000,
        55 + n % 30,
        12 + n % 6,
        n % 4,
    );
    let pad = size.saturating_sub(text.len() + 2);
    text.extend(std::iter::repeat_n('x', pad));
    text.push_str("\"}");
    text.into_bytes()
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bed_json_is_padded_to_size_and_well_formed() {
        let text = String::from_utf8(bed_json(7, 1_000, 300)).expect("utf-8");
        assert_eq!(text.len(), 300);
        assert!(text.starts_with(r#"{"seq":7,"ts":8000,"hr":62,"rr":13,"mv":3,"occ":true"#));
        assert!(text.ends_with("xx\"}"));
    }

    #[test]
    fn bed_json_smaller_than_its_fields_is_not_padded() {
        let text = String::from_utf8(bed_json(0, 0, 10)).expect("utf-8");
        assert!(text.ends_with(r#""pad":""}"#), "{text}");
    }
}
