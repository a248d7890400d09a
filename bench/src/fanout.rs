//! `fan-out`: one QoS 1 publisher, many QoS 1 subscribers on one topic of `load/`;
//! deliveries per second until every subscriber has every message.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::mqtt::{self, Conn, Login, Packet};
use crate::publisher;
use crate::report::Samples;
use crate::systems::{Lab, Setup, System};

const TOPIC: &str = "load/fanout";
/// A run that has not delivered everything by then counts what it delivered.
const DEADLINE: Duration = Duration::from_secs(120);
/// Subscribers connecting at once (a burst of 1,000 SYNs overflows listen backlogs, and the
/// retransmits would be measured instead).
const CONNECTING: usize = 100;

#[derive(clap::Args, Clone)]
pub struct FanOutArgs {
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Messages the publisher sends
    #[arg(long, default_value_t = 200)]
    pub msgs: u64,
    /// Payload size in bytes
    #[arg(long, default_value_t = 300)]
    pub size: usize,
    /// Unacknowledged messages the publisher may have
    #[arg(long, default_value_t = 20)]
    pub inflight: u64,
}

struct Outcome {
    connected: usize,
    deliveries: u64,
    secs: f64,
}

pub async fn run(args: &FanOutArgs, lab: &mut Lab, systems: &[System]) -> anyhow::Result<()> {
    let samples = Samples::alternate(args.rounds, systems, async |system| {
        run_once(args, lab, system).await
    })
    .await?;
    println!("{}", samples.summary("deliveries/s"));
    Ok(())
}

async fn run_once(args: &FanOutArgs, lab: &mut Lab, system: System) -> anyhow::Result<f64> {
    let setup = Setup {
        devices: 1,
        max_connections: args.subscribers + 10,
        http: false,
    };
    let hub = lab.start(system, &setup).await?;
    let outcome = drive(args, hub.port).await?;
    let memory = hub.memory()?;
    hub.stop(Duration::from_secs(30)).await?;
    let rate = outcome.deliveries as f64 / outcome.secs.max(1e-9);
    let expected = args.subscribers as u64 * args.msgs;
    println!(
        "{system:<13} subscribers={} connected={} msgs={} deliveries={} missing={} secs={:.3} deliveries_per_s={rate:.0} rss_mb={:.1} hwm_mb={:.1}",
        args.subscribers,
        outcome.connected,
        args.msgs,
        outcome.deliveries,
        expected.saturating_sub(outcome.deliveries),
        outcome.secs,
        memory.rss_mb(),
        memory.hwm_mb(),
    );
    Ok(rate)
}

/// Subscribes everyone, then publishes and waits for the last delivery.
async fn drive(args: &FanOutArgs, port: u16) -> anyhow::Result<Outcome> {
    let subscribers = subscribe_all(port, args.subscribers).await;
    let connected = subscribers.len();
    let started = Instant::now();
    let deadline = started + DEADLINE;
    let mut receivers = JoinSet::new();
    for conn in subscribers {
        receivers.spawn(receive(conn, args.msgs, deadline));
    }
    let login = Login {
        client_id: "fanout-pub",
        user: None,
        keep_alive_s: 600,
    };
    let mut conn = Conn::open(port, &login, DEADLINE).await?;
    let payload = vec![b'x'; args.size];
    let published =
        publisher::publish_all(&mut conn, TOPIC, args.msgs, args.inflight, DEADLINE, |_| {
            payload.clone()
        })
        .await;
    if let Some(error) = published.error {
        eprintln!(
            "publisher stopped after {} acks: {error:#}",
            published.acked
        );
    }
    let (mut deliveries, mut last) = (0, started);
    while let Some(joined) = receivers.join_next().await {
        let (got, finished) = joined.unwrap_or((0, started));
        deliveries += got;
        last = last.max(finished);
    }
    conn.close().await;
    Ok(Outcome {
        connected,
        deliveries,
        secs: (last - started).as_secs_f64(),
    })
}

/// Connects and subscribes `n` clients, `CONNECTING` at a time; those that fail are left out.
async fn subscribe_all(port: u16, n: usize) -> Vec<Conn> {
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut joins = JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        joins.spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            subscriber(port, i).await.ok()
        });
    }
    let mut conns = Vec::with_capacity(n);
    while let Some(joined) = joins.join_next().await {
        conns.extend(joined.ok().flatten());
    }
    conns
}

async fn subscriber(port: u16, i: usize) -> anyhow::Result<Conn> {
    let client_id = format!("fanout-sub-{i}");
    let login = Login {
        client_id: &client_id,
        user: None,
        keep_alive_s: 600,
    };
    let mut conn = Conn::open(port, &login, DEADLINE).await?;
    let mut out = Vec::new();
    mqtt::subscribe(&mut out, 1, TOPIC, 1);
    conn.send(&out).await?;
    loop {
        match conn.read_within(DEADLINE).await? {
            Packet::SubAck { codes, .. } if codes.first().is_some_and(|c| *c <= 2) => {
                return Ok(conn)
            }
            Packet::SubAck { codes, .. } => anyhow::bail!("SUBACK refused: {codes:?}"),
            _ => continue,
        }
    }
}

/// Reads deliveries, acknowledging each, until `msgs` arrived or the deadline passed.
/// Returns how many arrived and when the last one did.
async fn receive(mut conn: Conn, msgs: u64, deadline: Instant) -> (u64, Instant) {
    let (mut got, mut last) = (0, Instant::now());
    let mut out = Vec::new();
    while got < msgs {
        let Ok(Ok(packet)) = tokio::time::timeout_at(deadline, conn.read_packet()).await else {
            break;
        };
        out.clear();
        got += acknowledge(&packet, &mut out);
        while let Ok(Some(packet)) = conn.buffered_packet() {
            got += acknowledge(&packet, &mut out);
        }
        last = Instant::now();
        if !out.is_empty() && conn.send(&out).await.is_err() {
            break;
        }
    }
    conn.close().await;
    (got, last)
}

/// 1 for a delivery (with its PUBACK appended to `out` at QoS 1), 0 for anything else.
fn acknowledge(packet: &Packet, out: &mut Vec<u8>) -> u64 {
    match packet {
        Packet::Publish { id, .. } => {
            if let Some(id) = id {
                mqtt::puback(out, *id);
            }
            1
        }
        _ => 0,
    }
}
