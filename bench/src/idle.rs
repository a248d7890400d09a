//! `idle`: the memory one CONNECTed, silent MQTT 3.1.1 connection costs each hub —
//! (RSS with N connections − RSS before) / N.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::mqtt::{Conn, Login};
use crate::systems::{Lab, Memory, Setup, System};

/// Connections being opened at once.
const CONNECTING: usize = 200;
/// How long a hub is left alone before its RSS is read, so start-up or connection work
/// in flight is done.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(clap::Args, Clone)]
pub struct IdleArgs {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
}

pub async fn run(args: &IdleArgs, lab: &mut Lab, systems: &[System]) -> anyhow::Result<()> {
    for &system in systems {
        run_once(args, lab, system).await?;
    }
    Ok(())
}

async fn run_once(args: &IdleArgs, lab: &mut Lab, system: System) -> anyhow::Result<()> {
    let setup = Setup {
        devices: 1,
        max_connections: args.connections + 10,
        http: false,
    };
    let hub = lab.start(system, &setup).await?;
    tokio::time::sleep(SETTLE).await;
    let before = hub.memory()?;
    let (conns, first_failure) = open_all(hub.port, args.connections).await;
    tokio::time::sleep(SETTLE).await;
    let after = hub.memory()?;
    let open = conns.len();
    drop(conns);
    if let Some(error) = first_failure {
        eprintln!("{system}: first failed connection: {error:#}");
    }
    hub.stop(Duration::from_secs(30)).await?;
    println!(
        "{system:<13} connections={} open={open} failed={} rss_before_mb={:.1} rss_after_mb={:.1} bytes_per_conn={:.0}",
        args.connections,
        args.connections - open,
        before.rss_mb(),
        after.rss_mb(),
        per_connection(before, after, open),
    );
    Ok(())
}

fn per_connection(before: Memory, after: Memory, open: usize) -> f64 {
    let grown_kb = after.rss_kb as f64 - before.rss_kb as f64;
    grown_kb * 1024.0 / open.max(1) as f64
}

/// Opens and CONNECTs `n` connections, `CONNECTING` at a time; failures are left out, the
/// first one's reason is returned.
async fn open_all(port: u16, n: usize) -> (Vec<Conn>, Option<anyhow::Error>) {
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut joins = JoinSet::new();
    for i in 0..n {
        let gate = gate.clone();
        joins.spawn(async move {
            let _permit = gate.acquire().await?;
            let client_id = format!("idle-{i}");
            let login = Login {
                client_id: &client_id,
                user: None,
                keep_alive_s: 600,
            };
            Conn::open(port, &login, Duration::from_secs(60)).await
        });
    }
    let (mut conns, mut first_failure) = (Vec::with_capacity(n), None);
    while let Some(joined) = joins.join_next().await {
        match joined
            .map_err(anyhow::Error::from)
            .and_then(|opened| opened)
        {
            Ok(conn) => conns.push(conn),
            Err(error) => {
                first_failure.get_or_insert(error);
            }
        }
    }
    (conns, first_failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_connection_is_growth_over_open_connections() {
        let before = Memory {
            rss_kb: 1000,
            hwm_kb: 0,
        };
        let after = Memory {
            rss_kb: 3000,
            hwm_kb: 0,
        };
        assert_eq!(per_connection(before, after, 1024), 2000.0);
    }
}
