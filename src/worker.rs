//! `kenko worker`: the ingest pipeline (decoding, consent, write-ahead log, sinks, dead
//! letters, windows) without the embedded broker, fed by an external MQTT broker through a
//! shared subscription (`[source]`). Each message is acknowledged to the broker only once
//! its batch is in the write-ahead log, so a worker killed mid-batch loses nothing: the
//! broker sends it again when the worker (same client id) is back. docs/scale-out.md.

mod registry;
mod source;

use std::path::PathBuf;

use anyhow::Context as _;

use crate::hub::{self, DataDir};

/// What the pipeline may have queued for the broker at once; more are dropped and counted.
const NOTICES: usize = 16_384;

#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Configuration file with a [source] section (see docs/scale-out.md)
    #[arg(long)]
    config: PathBuf,
    /// Data directory; overrides `data_dir` of the config file [default: ./kenko-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Start even when personal.db or shared.db lacks acknowledged readings that the
    /// write-ahead log no longer holds; the loss is recorded in the audit log
    #[arg(long)]
    accept_data_loss: bool,
}

pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    let config = kenko_config::Config::from_file(&args.config)?;
    let source = config.source.clone().with_context(|| {
        format!(
            "{} has no [source] section: a worker needs the external broker it takes telemetry from (url = \"mqtt://HOST:PORT\")",
            args.config.display()
        )
    })?;
    let data_dir = args
        .data_dir
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./kenko-data"));
    let connection = source::Connection::new(&source)?;
    let hub_registry = config
        .registry
        .as_ref()
        .map(registry::Hub::new)
        .transpose()?;
    let data = DataDir::open(&config, &data_dir)?;
    let shutdown = hub::shutdown_on_signals();
    let following = match hub_registry {
        Some(hub_registry) => {
            match follow_registry(hub_registry, &config, &data, &shutdown).await? {
                Some(task) => Some(task),
                None => return Ok(()),
            }
        }
        None => None,
    };
    // Device errors (and live observations, with `live_republish`) go out through the
    // external broker.
    let (notices, notices_rx) = flume::bounded(NOTICES);
    let (ingest, pipeline) = data
        .start_pipeline(&config, args.accept_data_loss, Some(notices), "worker")
        .await?;
    let partition = if source.partitions > 1 {
        format!(
            ", partition {} of {} (devices by FNV-1a of their id)",
            source.partition, source.partitions
        )
    } else {
        String::new()
    };
    println!(
        "kenko worker: {} as {} in group {}{partition}, data in {}",
        source.url,
        connection.client_id(),
        source.share_group(),
        data_dir.display()
    );
    println!("stop with Ctrl-C or SIGTERM");
    let taken = connection.run(ingest, notices_rx, shutdown.clone()).await;
    shutdown.cancel();
    let followed = match following {
        Some(task) => task
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("the registry follower failed: {e}"))),
        None => Ok(()),
    };
    // Every pipeline handle is gone: the writer drains what is queued and the sinks write
    // the log out.
    tokio::task::spawn_blocking(move || pipeline.join())
        .await
        .context("the ingest pipeline did not stop cleanly")?;
    drop(data);
    let taken = taken?;
    println!(
        "kenko worker: stopped; {} messages taken, {} acknowledged, {} sent again by the broker, {} of other partitions passed over",
        taken.taken, taken.acknowledged, taken.resent, taken.others
    );
    followed
}

/// Copies the hub's registry (`[registry]`) before telemetry is taken, then keeps the copy
/// current in the background; `None` if stopped before the first copy.
async fn follow_registry(
    hub_registry: registry::Hub,
    config: &kenko_config::Config,
    data: &DataDir,
    shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<anyhow::Result<()>>>> {
    let url = hub_registry.url().to_owned();
    let follower = registry::Follower::new(hub_registry, &data.path, config);
    if !follower.first_copy(shutdown).await? {
        return Ok(None);
    }
    // In force now, not at the registry watcher's next look.
    data.registry
        .load_stored(&data.path.join("registry.db"))
        .context("cannot read the devices copied from the hub")?;
    println!("kenko worker: consents and devices follow the registry of {url}");
    Ok(Some(follower.follow(shutdown.clone())))
}
