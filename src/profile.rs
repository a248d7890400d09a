//! `kenko profile list|test`: payload profiles tried without a hub. `test` decodes one
//! payload exactly as the hub's pipeline would (the same decoder, unit conversion, time
//! zone, time limits and plausibility check) and prints the canonical observations, or the
//! reason the hub would refuse the message.

use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use kenko_config::Config;
use kenko_devices::profile::Profiles;
use kenko_ingest::decode::{RejectCode, Standalone};
use kenko_ingest::query::{parse_time, render, Format, Row};

#[derive(Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// The profiles a configuration knows: kenko's own and its [[profiles]]
    List(ListArgs),
    /// Decode one payload as the hub would: its canonical observations, or why it is refused
    Test(TestArgs),
}

#[derive(Args)]
struct ListArgs {
    /// The hub's configuration, for its [[profiles]] [default: the built-in profiles only]
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct TestArgs {
    /// The hub's configuration, for its [[profiles]] and default time zone
    #[arg(long)]
    config: Option<PathBuf>,
    /// The profile to decode with (`kenko profile list` names them)
    #[arg(long)]
    profile: String,
    /// The device's time zone, for times without an offset [default: the config's
    /// `ingest.default_timezone`]
    #[arg(long)]
    timezone: Option<String>,
    /// Decode as this [[devices]] entry of the config (a gateway): in its time zone, with
    /// the devices a payload names checked against those registered behind it in the
    /// config [default: a device dev-001, behind which any device a payload names counts
    /// as registered]
    #[arg(long, conflicts_with = "timezone")]
    device: Option<String>,
    /// When the hub receives the message: RFC 3339 or relative (-2d) [default: now]. Event
    /// times are checked against it (`ingest.late_horizon_s`, `max_future_s`), so give a
    /// time near a sample payload's own.
    #[arg(long, allow_hyphen_values = true)]
    at: Option<String>,
    /// Output format: table, csv, json
    #[arg(long, default_value = "table")]
    format: String,
    /// The payload file (JSON, or protobuf for a protobuf profile); `-` reads stdin
    /// [default: the profile's `sample`]
    payload: Option<PathBuf>,
}

pub fn run(args: ProfileArgs) -> anyhow::Result<bool> {
    match args.command {
        ProfileCommand::List(args) => list(args).map(|()| true),
        ProfileCommand::Test(args) => test(args),
    }
}

fn config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    })
}

fn compile(config: &Config) -> anyhow::Result<Profiles> {
    Ok(Profiles::compile(&kenko_config::profile::all_profiles(
        &config.profiles,
    )?)?)
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let config = config(args.config.as_ref())?;
    let mut profiles: Vec<_> = compile(&config)?.iter().cloned().collect();
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::from("profile              kind       format    key=metric\n");
    for p in profiles {
        let kind = p.kind.map_or_else(|| "any".to_owned(), |k| k.to_string());
        let format = format!("{:?}", p.format).to_lowercase();
        let mut keys: Vec<String> = p
            .fields
            .iter()
            .map(|f| format!("{}={}", f.key, f.metric.name()))
            .collect();
        keys.sort_unstable();
        if let Some(measures) = &p.measures {
            let mut codes: Vec<String> = measures
                .codes
                .iter()
                .map(|(code, f)| format!("{code}={}", f.metric.name()))
                .collect();
            codes.sort_unstable();
            keys.push(format!("{} codes {}", measures.path, codes.join(" ")));
        }
        if keys.is_empty() {
            keys.push("(any metric, by name, in canonical units)".into());
        }
        if let Some(device) = &p.device {
            keys.push(format!("devices named in {device}"));
        }
        out.push_str(&format!(
            "{:<20} {kind:<10} {format:<9} {}\n",
            p.name,
            keys.join(", ")
        ));
    }
    crate::output::print(format_args!("{out}"));
    Ok(())
}

/// Decodes the payload; `false` (exit status 1) when the hub would refuse it.
fn test(args: TestArgs) -> anyhow::Result<bool> {
    let config = config(args.config.as_ref())?;
    let format: Format = args.format.parse()?;
    let profiles = compile(&config)?;
    let profile = profiles.get(&args.profile).cloned().with_context(|| {
        let mut names: Vec<&str> = profiles.iter().map(|p| &*p.name).collect();
        names.sort_unstable();
        format!("no profile {:?}; known: {}", args.profile, names.join(", "))
    })?;
    let zone = args
        .timezone
        .as_deref()
        .unwrap_or(&config.ingest.default_timezone);
    let mut decoder = match &args.device {
        None => Standalone::new(Arc::clone(&profile), zone)?,
        Some(id) => {
            let registry = kenko_devices::Registry::new(&config);
            let device = registry
                .get(id)
                .with_context(|| format!("--device {id} is no [[devices]] entry of the config"))?;
            Standalone::of_registered(Arc::clone(&profile), zone, registry, &device)?
        }
    };
    decoder.plausibility = config.ingest.plausibility;
    decoder.limits = kenko_ingest::decode::TimeLimits::from_config(&config.ingest);
    let now = crate::clock::now_ms();
    let received_ms = match &args.at {
        Some(at) => parse_time(at, now).context("--at")?,
        None => now,
    };
    let payload = match &args.payload {
        Some(path) => read_payload(path)?,
        None => config
            .profiles
            .iter()
            .find(|p| p.name == args.profile)
            .and_then(|p| p.sample_text.clone())
            .map(String::into_bytes)
            .with_context(|| {
                format!(
                    "give a payload file (or - for stdin): profile {} has no `sample`",
                    args.profile
                )
            })?,
    };
    let mut observations = Vec::new();
    if let Err(refusal) = decoder.decode(&payload, received_ms, &mut observations) {
        let hint = match refusal.code {
            RejectCode::TooOld | RejectCode::FutureTimestamp if args.at.is_none() => {
                " (checked against now: give --at a time near the payload's)"
            }
            _ => "",
        };
        crate::output::print(format_args!(
            "refused ({}): {}{hint}\n",
            refusal.code.as_str(),
            refusal.message
        ));
        return Ok(false);
    }
    let rows: Vec<Row> = observations
        .iter()
        .map(|o| Row {
            time_ms: o.time_ms,
            citizen: o.citizen.to_string(),
            device: o.device.to_string(),
            metric: o.metric,
            value: o.value,
            unit: o.metric.unit().to_owned(),
            aggregated: false,
            flags: o.flags,
        })
        .collect();
    let mut out = Vec::new();
    render(&rows, format, &mut out)?;
    crate::output::print(format_args!("{}", String::from_utf8_lossy(&out)));
    Ok(true)
}

fn read_payload(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut payload = Vec::new();
        std::io::stdin()
            .read_to_end(&mut payload)
            .context("cannot read the payload from stdin")?;
        return Ok(payload);
    }
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}
