//! `kenko deadletter list|show|replay`: what the hub refused to store, and running it
//! through the pipeline again once the cause is fixed (a device registered, a profile
//! corrected, consent given).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::output::outln;
use anyhow::bail;
use kenko_devices::Registry;
use kenko_ingest::deadletter::{DeadLetter, DeadLetterStore, ReplayRequest, Selection};
use kenko_ingest::pipeline::{self, Settings};

#[derive(clap::Args)]
pub struct DeadLetterArgs {
    #[command(subcommand)]
    command: DeadLetterCommand,
}

#[derive(clap::Subcommand)]
enum DeadLetterCommand {
    /// List dead letters, newest first, and how many there are per reason
    List(ListArgs),
    /// Show one dead letter in full, payload included
    Show {
        #[arg(long, default_value = "./kenko-data")]
        data_dir: PathBuf,
        /// The letter's id (from `list`)
        id: i64,
    },
    /// Run dead letters through the pipeline again: stored ones leave the dead letters,
    /// refused ones stay with their new reason. A running hub on the data directory does
    /// the work; otherwise this command does it itself with the configuration given.
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
struct Select {
    /// Only this letter
    #[arg(long)]
    id: Option<i64>,
    /// Only letters with this reason code (e.g. unknown_device, malformed_payload)
    #[arg(long)]
    reason: Option<String>,
    /// Only letters from this device
    #[arg(long)]
    device: Option<String>,
}

impl Select {
    fn selection(&self) -> Selection {
        Selection {
            id: self.id,
            reason_code: self.reason.clone(),
            device: self.device.clone(),
        }
    }
}

#[derive(clap::Args)]
struct ListArgs {
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    select: Select,
    /// Most letters listed
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// table or json
    #[arg(long, default_value = "table")]
    format: String,
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The hub's configuration (its device registry decides what is known); used when no
    /// hub is running on the data directory
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory; overrides `data_dir` of the config file [default: ./kenko-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    select: Select,
    /// How long to wait for a running hub to carry out the request, in seconds
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

pub fn run(args: DeadLetterArgs) -> anyhow::Result<()> {
    match args.command {
        DeadLetterCommand::List(args) => list(args),
        DeadLetterCommand::Show { data_dir, id } => show(&data_dir, id),
        DeadLetterCommand::Replay(args) => replay(args),
    }
}

fn open(data_dir: &Path) -> anyhow::Result<DeadLetterStore> {
    Ok(DeadLetterStore::open_read_only(
        &data_dir.join("deadletter.db"),
    )?)
}

fn time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| ms.to_string(), |t| t.to_string())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let store = open(&args.data_dir)?;
    let letters = store.select(&args.select.selection(), args.limit)?;
    match args.format.as_str() {
        "json" => {
            let rows: Vec<serde_json::Value> = letters
                .iter()
                .map(|(id, l)| {
                    serde_json::json!({
                        "id": id,
                        "received": time(l.received_ms),
                        "client_id": l.client_id,
                        "topic": l.topic,
                        "device": l.device,
                        "reason_code": l.reason_code,
                        "reason": l.reason,
                        "payload_bytes": l.payload.len(),
                    })
                })
                .collect();
            outln!("{}", serde_json::to_string_pretty(&rows)?);
        }
        "table" => {
            let counts = store.count_by_reason()?;
            let total: u64 = counts.iter().map(|(_, n)| n).sum();
            outln!("{total} dead letters");
            for (code, n) in &counts {
                outln!("  {code}: {n}");
            }
            if !letters.is_empty() {
                outln!();
                outln!(
                    "{:>8}  {:<24}  {:<14}  {:<20}  reason",
                    "id",
                    "received",
                    "device",
                    "code"
                );
            }
            for (id, l) in &letters {
                outln!(
                    "{id:>8}  {:<24}  {:<14}  {:<20}  {}",
                    time(l.received_ms),
                    l.device.as_deref().unwrap_or("-"),
                    l.reason_code,
                    l.reason
                );
            }
        }
        other => bail!("--format {other:?}: use table or json"),
    }
    Ok(())
}

fn show(data_dir: &Path, id: i64) -> anyhow::Result<()> {
    let store = open(data_dir)?;
    let selection = Selection {
        id: Some(id),
        ..Selection::default()
    };
    let Some((_, letter)) = store.select(&selection, 1)?.into_iter().next() else {
        bail!("no dead letter {id} in {}", data_dir.display());
    };
    print_letter(id, &letter);
    Ok(())
}

fn print_letter(id: i64, l: &DeadLetter) {
    outln!("id:          {id}");
    outln!("received:    {}", time(l.received_ms));
    outln!("client id:   {}", l.client_id);
    outln!("topic:       {}", l.topic);
    outln!("device:      {}", l.device.as_deref().unwrap_or("-"));
    outln!("reason code: {}", l.reason_code);
    outln!("reason:      {}", l.reason);
    outln!("payload:     {} bytes", l.payload.len());
    match std::str::from_utf8(&l.payload) {
        Ok(text) => outln!("{text}"),
        Err(_) => {
            for chunk in l.payload.chunks(32) {
                let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
                outln!("{}", hex.join(" "));
            }
        }
    }
}

fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(path) => Some(kenko_config::Config::from_file(path)?),
        None => None,
    };
    let data_dir = args
        .data_dir
        .clone()
        .or_else(|| config.as_ref().and_then(|c| c.data_dir.clone()))
        .unwrap_or_else(|| PathBuf::from("./kenko-data"));
    let path = data_dir.join("deadletter.db");
    if !path.exists() {
        bail!(
            "no dead letters at {}; pass the hub's --data-dir",
            path.display()
        );
    }
    let mut store = DeadLetterStore::open(&path)?;
    let selection = args.select.selection();
    let matching = store.select(&selection, usize::MAX)?.len();
    if matching == 0 {
        outln!("no dead letters match; nothing to replay");
        return Ok(());
    }
    let now = jiff::Timestamp::now().as_millisecond();
    // Without a hub running, this process runs the pipeline itself, holding the data
    // directory as a hub would.
    let local = match crate::hub::lock_data_dir(&data_dir) {
        Ok(lock) => {
            let Some(config) = config else {
                bail!(
                    "no hub is running on {}; pass --config with the hub's configuration so that its devices are known",
                    data_dir.display()
                );
            };
            Some((lock, config))
        }
        Err(_) => None,
    };
    let id = store.request_replay(&selection, now)?;
    outln!("replaying {matching} dead letters (request {id})");
    let done = match local {
        Some((_lock, config)) => {
            let registry = Registry::new(&config);
            registry.load_stored(&data_dir.join("registry.db"))?;
            let (handle, pipeline) =
                pipeline::start(&Settings::try_from(&config)?, registry, &data_dir, None)
                    .map_err(|e| crate::hub::start_error(e, &data_dir))?;
            let done = wait_for(&store, id, Duration::from_secs(args.wait.max(600)));
            drop(handle);
            pipeline.join();
            done?
        }
        None => {
            outln!(
                "a hub is running on {}; it carries out the request",
                data_dir.display()
            );
            wait_for(&store, id, Duration::from_secs(args.wait))?
        }
    };
    outln!(
        "replayed {}: stored {}, refused again {}, not replayable {}",
        matching,
        done.replayed,
        done.failed,
        done.skipped
    );
    if done.failed > 0 {
        outln!("see `kenko deadletter list` for the reasons of those refused again");
    }
    Ok(())
}

fn wait_for(store: &DeadLetterStore, id: i64, limit: Duration) -> anyhow::Result<ReplayRequest> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(request) = store.replay_requests(Some(id))?.into_iter().next() {
            if request.done_ms.is_some() {
                return Ok(request);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "request {id} not carried out within {} s; the hub takes it up when it runs (see `kenko deadletter list`)",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
