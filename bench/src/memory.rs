//! `memory`: one hub per system takes the fan-in load several times over, with an idle
//! pause after each; its RSS after each load and after each pause shows whether it gives
//! memory back and whether repeated loads ratchet it up.

use std::time::Duration;

use crate::load::{self, FanInArgs};
use crate::systems::{Lab, Setup, System};

#[derive(clap::Args, Clone)]
pub struct MemoryArgs {
    /// The load (its --rounds is the number of loads on the one hub)
    #[command(flatten)]
    pub load: FanInArgs,
    /// Seconds the hub is left idle after each load before its RSS is read
    #[arg(long, default_value_t = 30)]
    pub idle_s: u64,
}

pub async fn run(args: &MemoryArgs, lab: &mut Lab, systems: &[System]) -> anyhow::Result<()> {
    let mut summary = Vec::new();
    for &system in systems {
        summary.push(run_system(args, lab, system).await?);
    }
    for line in summary {
        println!("{line}");
    }
    Ok(())
}

/// One system: start it, load it `rounds` times with a pause after each, stop it. Returns
/// its summary line.
async fn run_system(args: &MemoryArgs, lab: &mut Lab, system: System) -> anyhow::Result<String> {
    let setup = Setup {
        devices: args.load.clients,
        max_connections: args.load.clients + 10,
        http: false,
    };
    let hub = lab.start(system, &setup).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = hub.memory()?;
    println!("{system:<13} start rss_mb={:.1}", start.rss_mb());
    let mut idle = Vec::new();
    for round in 1..=args.load.rounds {
        let outcome = load::drive(&args.load, hub.port, system, lab.password()).await;
        let loaded = hub.memory()?;
        tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
        let rested = hub.memory()?;
        println!(
            "{system:<13} load={round} msgs={} failed={} rss_after_load_mb={:.1} rss_after_idle_mb={:.1} hwm_mb={:.1}",
            outcome.acked,
            outcome.failed,
            loaded.rss_mb(),
            rested.rss_mb(),
            rested.hwm_mb(),
        );
        idle.push(rested.rss_mb());
    }
    hub.stop(Duration::from_secs(30)).await?;
    Ok(summarize(system, start.rss_mb(), &idle))
}

/// "SYSTEM idle rss_mb: start S, after each load A, B, C; growth from the first idle to
/// the last G".
fn summarize(system: System, start_mb: f64, idle_mb: &[f64]) -> String {
    let list: Vec<String> = idle_mb.iter().map(|mb| format!("{mb:.1}")).collect();
    let growth = match (idle_mb.first(), idle_mb.last()) {
        (Some(first), Some(last)) => format!("{:+.1}", last - first),
        _ => "-".into(),
    };
    format!(
        "{system:<13} idle rss_mb: start {start_mb:.1}, after each load {}; growth from the first idle to the last {growth} MB",
        list.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_each_idle_figure_and_the_growth_between_first_and_last() {
        let line = summarize(System::KenkoIngest, 12.6, &[29.5, 28.5, 31.0]);
        assert!(line.contains("start 12.6"), "{line}");
        assert!(line.contains("after each load 29.5, 28.5, 31.0"), "{line}");
        assert!(
            line.contains("growth from the first idle to the last +1.5 MB"),
            "{line}"
        );
        let none = summarize(System::Mosquitto, 1.0, &[]);
        assert!(none.ends_with("the last - MB"), "{none}");
    }
}
