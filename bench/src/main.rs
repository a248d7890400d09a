//! kenko-bench: kenko side by side with Mosquitto and rumqttd under the same MQTT load.
//! This file is the command line; each subcommand lives in a file of its own.

mod configs;
mod fanout;
mod idle;
mod latency;
mod limits;
mod load;
mod memory;
mod mqtt;
mod publisher;
mod report;
mod stored;
mod systems;
mod workdir;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::systems::{Binaries, Lab, System};

/// The release binary of the repository this crate sits in.
const DEFAULT_KENKO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/kenko");

/// kenko side by side with Mosquitto and rumqttd: the same QoS 1 load against each,
/// alternating. Only ratios from one invocation are comparable.
#[derive(Parser)]
#[command(name = "kenko-bench")]
struct Cli {
    /// The kenko binary (build it with `cargo build --release` at the repository root)
    #[arg(long, global = true, default_value = DEFAULT_KENKO)]
    kenko: PathBuf,
    /// The rumqttd 0.20 binary
    #[arg(long, global = true, default_value = "/tmp/rumqttd-bin/bin/rumqttd")]
    rumqttd: PathBuf,
    /// The mosquitto binary (a bare name is looked up on PATH)
    #[arg(long, global = true, default_value = "mosquitto")]
    mosquitto: PathBuf,
    /// Systems to run, comma-separated [default: all that fit the subcommand]
    #[arg(long, global = true, value_delimiter = ',')]
    systems: Vec<System>,
    /// Threads of the load generator (the hub shares the machine with it)
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// QoS 1 fan-in: many publishers, messages acknowledged per second
    FanIn(load::FanInArgs),
    /// QoS 1 fan-out: one publisher, many subscribers on one topic, deliveries per second
    FanOut(fanout::FanOutArgs),
    /// Memory per idle, CONNECTed MQTT 3.1.1 connection
    Idle(idle::IdleArgs),
    /// RSS of one hub across repeated fan-in loads, each followed by an idle pause
    Memory(memory::MemoryArgs),
    /// kenko only: receive-to-queryable delay at a share of the maximum durable rate
    Latency(latency::LatencyArgs),
    /// kenko only: fan-in on Mosquitto with 1, 2, 3 … `kenko worker`s in one shared group
    /// behind it; readings stored per second
    Workers(workers::WorkersArgs),
}

impl Command {
    /// Connections the harness holds at once (the hub needs as many).
    fn connections(&self) -> usize {
        match self {
            Command::FanIn(args) => args.clients,
            Command::FanOut(args) => args.subscribers + 1,
            Command::Idle(args) => args.connections,
            Command::Memory(args) => args.load.clients,
            Command::Latency(args) => args.clients,
            Command::Workers(args) => {
                args.load.clients + args.counts.iter().max().copied().unwrap_or(0)
            }
        }
    }

    /// The systems this subcommand runs: the ones asked for, or its default set. Only
    /// fan-in and memory have a kenko-ingest system (`--ingest`); latency has only that.
    fn systems(&self, asked: &[System]) -> Vec<System> {
        if matches!(self, Command::Latency(_)) {
            return vec![System::KenkoIngest];
        }
        if matches!(self, Command::Workers(_)) {
            return vec![System::Mosquitto, System::KenkoIngest];
        }
        let ingest = match self {
            Command::FanIn(args) => args.ingest,
            Command::Memory(args) => args.load.ingest,
            _ => false,
        };
        let mut systems: Vec<System> = if asked.is_empty() {
            vec![
                System::Mosquitto,
                System::Rumqttd,
                System::KenkoBroker,
                System::KenkoIngest,
            ]
        } else {
            asked.to_vec()
        };
        systems.retain(|s| *s != System::KenkoIngest || ingest || !asked.is_empty());
        if !matches!(self, Command::FanIn(_) | Command::Memory(_)) {
            systems.retain(|s| *s != System::KenkoIngest);
        }
        systems.sort();
        systems.dedup();
        systems
    }
}

fn main() -> ExitCode {
    match bench(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(cli: Cli) -> anyhow::Result<()> {
    let systems = cli.command.systems(&cli.systems);
    anyhow::ensure!(!systems.is_empty(), "no system to run; see --systems");
    let bins = Binaries {
        kenko: cli.kenko.clone(),
        rumqttd: cli.rumqttd.clone(),
        mosquitto: cli.mosquitto.clone(),
    };
    bins.check(&systems)?;
    limits::ensure_open_files(cli.command.connections() as u64 + 200)?;
    runtime(cli.threads)?.block_on(async {
        let mut lab = Lab::new(bins)?;
        // Dropping the run (Ctrl-C) drops its hub, which kills the hub's process.
        tokio::select! {
            result = run(&cli.command, &mut lab, &systems) => result,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; hubs stopped"),
        }
    })
}

async fn run(command: &Command, lab: &mut Lab, systems: &[System]) -> anyhow::Result<()> {
    match command {
        Command::FanIn(args) => load::run(args, lab, systems).await,
        Command::FanOut(args) => fanout::run(args, lab, systems).await,
        Command::Idle(args) => idle::run(args, lab, systems).await,
        Command::Memory(args) => memory::run(args, lab, systems).await,
        Command::Latency(args) => latency::run(args, lab).await,
        Command::Workers(args) => workers::run(args, lab).await,
    }
}

fn runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}
