//! The `kenko` command line: run the hub (`demo`, `serve`), drive it (`simulate`), register
//! devices (`device`) and read what it stored (`query`).

mod acl;
mod acl_export;
mod clock;
mod consent;
mod deadletter;
mod demo;
mod device;
mod hub;
mod kpi;
mod output;
mod principal;
mod profile;
mod query;
mod simulate;
mod store;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "kenko", version, about = "Ingestion hub for city health IoT")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a hub on embedded defaults with simulated devices of every kind, for trying kenko
    Demo(demo::DemoArgs),
    /// Run the hub from a configuration file (production)
    Serve(ServeArgs),
    /// Publish simulated telemetry of every kind of device to a hub (live or replaying a period)
    Simulate(simulate::SimulateArgs),
    /// Query stored observations
    Query(query::QueryArgs),
    /// List payload profiles, and try one on a payload without a hub
    Profile(profile::ProfileArgs),
    /// Explain and test ACL rules
    Acl(acl::AclArgs),
    /// Hash a password (read from stdin) for a principal's or device's `password_hash`
    HashPassword(acl::HashPasswordArgs),
    /// Record and list citizens' consent
    Consent(consent::ConsentArgs),
    /// Add, list and remove devices in registry.db (beside the config file's)
    Device(device::DeviceArgs),
    /// Add, list, remove principals (people and services) in registry.db, or change their
    /// passwords
    Principal(principal::PrincipalArgs),
    /// Verify the audit log of consent changes
    Audit(consent::AuditArgs),
    /// List, show and replay messages the hub refused to store
    Deadletter(deadletter::DeadLetterArgs),
    /// Check the stores' sealed chunks for damage
    Store(store::StoreArgs),
    /// The city's figures for a month (participation), never over fewer than k citizens
    Kpi(kpi::KpiArgs),
    /// Run the ingest pipeline fed by an external MQTT broker's shared subscription
    /// (`[source]`), without the embedded broker
    Worker(worker::WorkerArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (see config/kenko.example.toml)
    #[arg(long)]
    config: PathBuf,
    /// Data directory; overrides `data_dir` of the config file [default: ./kenko-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// MQTT listen address; overrides `mqtt.listen` of the config file
    #[arg(long, value_name = "HOST:PORT")]
    mqtt: Option<SocketAddr>,
    /// MQTT over TLS listen address; overrides `mqtt.tls.listen` (needs `[mqtt.tls]`)
    #[arg(long, value_name = "HOST:PORT")]
    mqtt_tls: Option<SocketAddr>,
    /// MQTT over WebSocket listen address; overrides `mqtt.websocket`
    #[arg(long, value_name = "HOST:PORT")]
    websocket: Option<SocketAddr>,
    /// HTTP API listen address; overrides `http.listen`
    #[arg(long, value_name = "HOST:PORT")]
    http: Option<SocketAddr>,
    /// Start even when personal.db or shared.db lacks acknowledged readings that the
    /// write-ahead log no longer holds; the loss is recorded in the audit log
    #[arg(long)]
    accept_data_loss: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Progress and results go to stdout; logs go to stderr. Quiet by default where the
    // command prints its own progress.
    let default_level = match cli.command {
        Command::Serve(_) | Command::Worker(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();

    let result = match cli.command {
        Command::Query(args) => query::run(args).map(|()| true),
        Command::Acl(args) => acl::run(args),
        Command::HashPassword(args) => acl::hash(args).map(|()| true),
        Command::Consent(args) => consent::run(args).map(|()| true),
        Command::Device(args) => device::run(args).map(|()| true),
        Command::Principal(args) => principal::run(args).map(|()| true),
        Command::Audit(args) => consent::audit(args),
        Command::Deadletter(args) => deadletter::run(args).map(|()| true),
        Command::Store(args) => store::run(args),
        Command::Kpi(args) => kpi::run(args).map(|()| true),
        Command::Profile(args) => profile::run(args),
        command => runtime().and_then(|rt| rt.block_on(run_async(command)).map(|()| true)),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        // The reader of the output went away (`| head`): nothing went wrong.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kenko: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run_async(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => demo::run(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Query(_)
        | Command::Acl(_)
        | Command::HashPassword(_)
        | Command::Consent(_)
        | Command::Device(_)
        | Command::Principal(_)
        | Command::Audit(_)
        | Command::Deadletter(_)
        | Command::Store(_)
        | Command::Kpi(_)
        | Command::Profile(_) => {
            unreachable!("runs without a runtime")
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = kenko_config::Config::from_file(&args.config)?;
    if let Some(addr) = args.mqtt {
        config.mqtt.listen = addr;
    }
    if let Some(addr) = args.mqtt_tls {
        let Some(tls) = config.mqtt.tls.as_mut() else {
            anyhow::bail!(
                "--mqtt-tls needs a [mqtt.tls] section (cert, key) in {}",
                args.config.display()
            );
        };
        tls.listen = addr;
    }
    if let Some(addr) = args.websocket {
        config.mqtt.websocket = Some(addr);
    }
    if let Some(addr) = args.http {
        config
            .http
            .check_plain_listen(addr)
            .map_err(anyhow::Error::msg)?;
        config.http.listen = Some(addr);
    }
    let data_dir = args
        .data_dir
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./kenko-data"));
    let shutdown = hub::shutdown_on_signals();
    let hub = hub::Hub::start(config, &data_dir, shutdown, args.accept_data_loss).await?;
    println!(
        "kenko serve: MQTT on {}, data in {}",
        hub.mqtt_addr,
        data_dir.display()
    );
    if let Some(addr) = hub.tls_addr {
        println!("kenko serve: MQTT over TLS on {addr}");
    }
    if let Some(addr) = hub.websocket_addr {
        println!("kenko serve: MQTT over WebSocket on {addr}");
    }
    if let Some(addr) = hub.http_addr {
        println!("kenko serve: HTTP API on {addr}");
    }
    if let Some(addr) = hub.https_addr {
        println!("kenko serve: HTTPS API on {addr}");
    }
    println!("stop with Ctrl-C or SIGTERM");
    hub.wait().await
}
