//! `kenko acl explain|test` and `kenko hash-password`: the operators' tools for ACL rules and
//! credentials.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::output::{out, outln};
use anyhow::{bail, Context as _};
use kenko_broker::acl::{Acl, Request};
use kenko_broker::auth::{hash_password, Cost, Directory, Identity};
use kenko_config::acl::Effect;
use kenko_config::Config;
use kenko_devices::Registry;

#[derive(clap::Args)]
pub struct AclArgs {
    #[command(subcommand)]
    command: AclCommand,
}

#[derive(clap::Subcommand)]
enum AclCommand {
    /// Show the decision on one request, the rule that made it and how its placeholders expanded
    Explain(ExplainArgs),
    /// Check operator-written expectation cases against the rules (unit tests for ACLs)
    Test(TestArgs),
    /// Write the rules, expanded for every principal, as a Mosquitto acl_file or an EMQX
    /// acl.conf, for brokers that cannot call kenko's MQTT hooks
    Export(crate::acl_export::ExportArgs),
}

#[derive(clap::Args)]
pub(crate) struct Source {
    /// Configuration file with the principals, devices and `auth.acl`; without it only the
    /// built-in rules and no principals are known
    #[arg(long)]
    config: Option<PathBuf>,
    /// Rule file to use instead of the config's `auth.acl` (try a change before it goes live)
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Data directory whose registry.db devices are known too [default: the config's
    /// `data_dir`, else ./kenko-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ExplainArgs {
    #[command(flatten)]
    source: Source,
    /// The principal asking: a device id or principal id from the config, or "anonymous"
    #[arg(long)]
    principal: String,
    /// Client id of the connection; default: the principal id
    #[arg(long)]
    client_id: Option<String>,
    /// Ask about publishing on TOPIC
    #[arg(
        long,
        value_name = "TOPIC",
        conflicts_with = "subscribe",
        required_unless_present = "subscribe"
    )]
    publish: Option<String>,
    /// Ask about subscribing to FILTER
    #[arg(long, value_name = "FILTER")]
    subscribe: Option<String>,
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// A retained publish
    #[arg(long)]
    retain: bool,
    /// For rules that need consent: the time of the observation delivered (RFC 3339, now, or
    /// relative like -1h); the consent in force now decides whether it covers that time
    #[arg(long, allow_hyphen_values = true, default_value = "now")]
    at: String,
}

#[derive(clap::Args)]
struct TestArgs {
    #[command(flatten)]
    source: Source,
    /// The expectation cases (TOML: [[case]] principal, publish|subscribe, qos, retain, expect)
    cases: PathBuf,
}

#[derive(clap::Args)]
pub struct HashPasswordArgs {
    /// Cheap parameters for random machine tokens of 128 bits or more (not for passwords people choose)
    #[arg(long)]
    token: bool,
}

pub fn run(args: AclArgs) -> anyhow::Result<bool> {
    match args.command {
        AclCommand::Explain(args) => explain(args).map(|()| true),
        AclCommand::Test(args) => test(args),
        AclCommand::Export(args) => crate::acl_export::export(args).map(|()| true),
    }
}

/// Reads a password from the first line of stdin and prints its argon2id hash.
pub fn hash(args: HashPasswordArgs) -> anyhow::Result<()> {
    let cost = if args.token {
        Cost::Token
    } else {
        Cost::Password
    };
    outln!("{}", hash_stdin_password(cost, "kenko hash-password")?);
    Ok(())
}

/// The argon2id hash of the password on the first line of stdin (`kenko hash-password`,
/// `kenko device add --password-stdin`); `command` is named in the error for an empty line.
pub fn hash_stdin_password(cost: Cost, command: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("no password on stdin; try: printf '%s' \"$PASSWORD\" | {command}");
    }
    Ok(hash_password(password, cost))
}

/// The directory and rules named by `source`, and its data directory; the devices of the
/// data directory's `registry.db` (`kenko device add`) are known too.
pub(crate) fn load(source: &Source) -> anyhow::Result<(Directory, Acl, PathBuf)> {
    let config = match &source.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    let devices = Registry::new(&config);
    let data_dir = crate::device::data_dir(source.data_dir.as_deref(), &config);
    devices.load_stored(&data_dir.join("registry.db"))?;
    let directory = Directory::with_devices(&config, devices)?;
    let rules = match &source.rules {
        Some(path) => kenko_config::acl::read_rules(path)?,
        None => config.acl_rules()?,
    };
    Ok((directory, Acl::new(rules), data_dir))
}

fn identity(
    directory: &Directory,
    id: &str,
    config: Option<&Path>,
) -> anyhow::Result<Arc<Identity>> {
    directory.get(id).with_context(|| {
        let place = config.map_or_else(
            || "no --config was given".to_owned(),
            |c| format!("it is not in {}", c.display()),
        );
        if id == kenko_config::ANONYMOUS {
            format!("principal {id:?} exists only with auth.anonymous = true; {place}")
        } else {
            format!("unknown principal {id:?}: {place} as a [[principals]] or [[devices]] entry, nor a device of registry.db (`kenko device list`)")
        }
    })
}

fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.qos <= 2, "--qos must be 0, 1 or 2");
    let (directory, acl, data_dir) = load(&args.source)?;
    let who = identity(&directory, &args.principal, args.source.config.as_deref())?;
    let client_id = args.client_id.as_deref().unwrap_or(&who.id);
    let principal = who.principal(client_id, Some(&who.id));
    let request = match (&args.publish, &args.subscribe) {
        (Some(topic), _) => Request::Publish {
            topic,
            qos: args.qos,
            retain: args.retain,
        },
        (None, Some(filter)) => Request::Subscribe {
            filter,
            qos: args.qos,
        },
        (None, None) => bail!("give --publish TOPIC or --subscribe FILTER"),
    };
    let now = jiff::Timestamp::now().as_millisecond();
    let at = kenko_ingest::query::parse_time(&args.at, now).map_err(anyhow::Error::msg)?;
    let registry = data_dir.join("registry.db");
    let (_, text) = kenko_api::explain::explain(&acl, &principal, &request, &registry, at, now)?;
    out!("{text}");
    Ok(())
}

/// Runs the cases; `Ok(false)` if any failed.
fn test(args: TestArgs) -> anyhow::Result<bool> {
    let (directory, acl, _) = load(&args.source)?;
    let cases = kenko_config::acl::read_cases(&args.cases)?;
    if cases.is_empty() {
        bail!("{} has no [[case]] entries", args.cases.display());
    }
    let mut failed = 0;
    for case in &cases {
        let who = identity(&directory, &case.principal, args.source.config.as_deref())
            .with_context(|| format!("case at {}", case.source))?;
        let principal = who.principal(&who.id, Some(&who.id));
        let request = if case.publish {
            Request::Publish {
                topic: &case.topic,
                qos: case.qos,
                retain: case.retain,
            }
        } else {
            Request::Subscribe {
                filter: &case.topic,
                qos: case.qos,
            }
        };
        let decision = acl.decide(&principal, &request);
        let expected = case.expect == Effect::Allow;
        if decision.allowed == expected {
            continue;
        }
        failed += 1;
        outln!(
            "FAIL {}: expected {}, got:",
            case.source,
            if expected { "ALLOW" } else { "DENY" }
        );
        for line in kenko_api::explain::render(&acl, &principal, &request, &decision).lines() {
            outln!("  {line}");
        }
    }
    outln!(
        "{} cases, {} passed, {failed} failed",
        cases.len(),
        cases.len() - failed
    );
    Ok(failed == 0)
}
