//! `kenko device add|list|remove`: devices registered in the data directory's `registry.db`,
//! beside the `[[devices]]` of the config file. A running hub picks changes up within a second.

use std::path::{Path, PathBuf};

use crate::output::{out, outln, table};
use anyhow::{bail, Context as _};
use kenko_broker::auth::{hash_password, new_token, Cost};
use kenko_config::{Config, DeviceKind};
use kenko_devices::registry::{DeviceError, DeviceStore, NewDevice, Registry};
use kenko_ingest::consent::ConsentRegistry;

#[derive(clap::Args)]
pub struct DeviceArgs {
    #[command(subcommand)]
    command: DeviceCommand,
}

#[derive(clap::Subcommand)]
enum DeviceCommand {
    /// Register a device in registry.db (a running hub lets it in within a second)
    Add(AddArgs),
    /// List the devices of the config file and of registry.db
    List(ListArgs),
    /// Remove a device added with `kenko device add` (its new connections and telemetry are
    /// refused from then on)
    Remove(RemoveArgs),
}

/// Where the data directory is, for the commands that change `registry.db`.
#[derive(clap::Args)]
pub(crate) struct Place {
    /// Data directory; overrides `data_dir` of the config file [default: ./kenko-data]
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct AddArgs {
    /// The hub's configuration: its profiles, devices and principals decide what is valid
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    place: Place,
    /// Device id: also its MQTT client id and username
    #[arg(long)]
    id: String,
    /// bed, wearable, bp, scale, thermo, oximeter or glucose
    #[arg(long)]
    kind: String,
    /// The citizen who uses the device
    #[arg(long)]
    citizen: String,
    /// Payload profile [default: the kind's]
    #[arg(long)]
    profile: Option<String>,
    /// IANA time zone of the device's clock, for timestamps without an offset [default: the
    /// hub's `ingest.default_timezone`]
    #[arg(long)]
    timezone: Option<String>,
    /// A registered device (a gateway) whose messages may carry this device's readings,
    /// naming it in its profile's `device` field
    #[arg(long)]
    gateway: Option<String>,
    /// Read the device's MQTT password from the first line of stdin
    #[arg(long, conflicts_with = "generate_password")]
    password_stdin: bool,
    /// Make a random password and print it once (only its hash is stored)
    #[arg(long)]
    generate_password: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    /// The hub's configuration, to list its `[[devices]]` too
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
    /// Only devices of this kind
    #[arg(long)]
    kind: Option<String>,
    /// Only devices of this citizen
    #[arg(long)]
    citizen: Option<String>,
}

#[derive(clap::Args)]
struct RemoveArgs {
    /// The hub's configuration (to tell its own devices apart)
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
    #[arg(long)]
    id: String,
}

/// The data directory as `kenko serve` chooses it: the flag, else the config's `data_dir`,
/// else `./kenko-data`.
pub fn data_dir(flag: Option<&Path>, config: &Config) -> PathBuf {
    flag.map(Path::to_owned)
        .or_else(|| config.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from("./kenko-data"))
}

/// The configuration at `config`, or the defaults without one.
pub fn load(config: Option<&Path>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    })
}

pub fn run(args: DeviceArgs) -> anyhow::Result<()> {
    match args.command {
        DeviceCommand::Add(args) => add(args),
        DeviceCommand::List(args) => list(args),
        DeviceCommand::Remove(args) => remove(args),
    }
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let config = Config::from_file(&args.config)?;
    let data_dir = data_dir(args.place.data_dir.as_deref(), &config);
    let mut new = NewDevice {
        id: args.id,
        kind: args.kind,
        citizen: args.citizen,
        profile: args.profile,
        timezone: args.timezone,
        gateway: args.gateway,
        password_hash: None,
    };
    // Checked before a password is asked for or hashed.
    new.clone().check(&config, 0)?;
    let generated = if args.generate_password {
        // 128 random bits: the cheap hash parameters are enough (as for the demo's devices).
        let token = new_token();
        new.password_hash = Some(hash_password(&token, Cost::Token));
        Some(token)
    } else {
        if args.password_stdin {
            let command = format!("kenko device add --id {} ... --password-stdin", new.id);
            new.password_hash = Some(crate::acl::hash_stdin_password(Cost::Password, &command)?);
        }
        None
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("registry.db");
    let now = crate::clock::now_ms();
    let device = DeviceStore::open(&path)?.add(&config, new, now)?;
    let body = serde_json::json!({
        "device": device.id, "kind": device.kind.as_str(), "citizen": device.citizen,
        "profile": device.profile, "timezone": device.timezone, "gateway": device.gateway,
        "password": device.password_hash.is_some(),
    });
    ConsentRegistry::open(&path)?
        .audit(now, "device.add", &body.to_string())
        .context("the device was added, but its audit entry could not be written")?;
    outln!(
        "added device {} ({}, citizen {}, profile {}, time zone {}) to {}",
        device.id,
        device.kind,
        device.citizen,
        device.profile,
        device.timezone.as_deref().unwrap_or("the hub's default"),
        path.display()
    );
    if let Some(gateway) = &device.gateway {
        outln!("its readings may also come in messages of gateway {gateway}");
    }
    match (generated, device.password_hash.is_some()) {
        (Some(token), _) => {
            outln!("password (shown only now; only its argon2id hash is stored): {token}")
        }
        (None, false) => outln!(
            "it has no password: it can authenticate only with a client certificate (CN {})",
            device.id
        ),
        (None, true) => {}
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_deref())?;
    let kind = args
        .kind
        .as_deref()
        .map(str::parse::<DeviceKind>)
        .transpose()?;
    let path = data_dir(args.place.data_dir.as_deref(), &config).join("registry.db");
    let stored = match DeviceStore::open_read_only(&path) {
        Ok(store) => store.list()?,
        Err(DeviceError::Missing(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    // Merged as the hub merges them (a row shadowed by the config is left out, with a warning).
    let registry = Registry::new(&config);
    registry.set_stored(&stored);
    let devices = registry.snapshot();
    let mut rows: Vec<[String; 8]> = devices
        .registered()
        .filter(|d| {
            kind.is_none_or(|k| d.entry.kind == k)
                && args
                    .citizen
                    .as_deref()
                    .is_none_or(|c| *d.entry.citizen == *c)
        })
        .map(|d| {
            let e = &d.entry;
            [
                e.id.to_string(),
                e.kind.to_string(),
                e.citizen.to_string(),
                e.profile.to_string(),
                e.timezone.as_deref().unwrap_or("-").to_owned(),
                e.gateway.as_deref().unwrap_or("-").to_owned(),
                d.source.to_string(),
                if d.password_hash.is_some() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
            ]
        })
        .collect();
    rows.sort();
    let header = [
        "id", "kind", "citizen", "profile", "timezone", "gateway", "source", "password",
    ];
    out!("{}", table(header, &rows));
    Ok(())
}

fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_deref())?;
    let in_config = config.devices.iter().any(|d| d.id == args.id);
    let path = data_dir(args.place.data_dir.as_deref(), &config).join("registry.db");
    let removed = if path.exists() {
        match DeviceStore::open(&path)?.remove(&args.id) {
            Ok(device) => Some(device),
            Err(DeviceError::NotFound(_)) => None,
            Err(e) => return Err(e.into()),
        }
    } else {
        None
    };
    let Some(device) = removed else {
        if in_config {
            bail!(
                "device {} is a [[devices]] entry of {}; remove it by editing that file (`kenko device remove` removes only devices added with `kenko device add`)",
                args.id,
                args.config
                    .as_deref()
                    .map_or_else(|| "the config file".to_owned(), |p| p.display().to_string())
            );
        }
        let hint = if args.config.is_some() {
            ""
        } else {
            "; a device of the config file is removed by editing that file"
        };
        bail!(
            "device {} is not registered in {}{hint}",
            args.id,
            path.display()
        );
    };
    let body = serde_json::json!({ "device": device.id, "citizen": device.citizen });
    ConsentRegistry::open(&path)?
        .audit(crate::clock::now_ms(), "device.remove", &body.to_string())
        .context("the device was removed, but its audit entry could not be written")?;
    if in_config {
        outln!(
            "removed the unused registry.db row of device {}; the config file's device {} stays",
            device.id,
            device.id
        );
    } else {
        outln!(
            "removed device {} (citizen {}) from {}; a running hub refuses its new connections and its telemetry within a second",
            device.id,
            device.citizen,
            path.display()
        );
    }
    Ok(())
}
