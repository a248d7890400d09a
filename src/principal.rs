//! `kenko principal add|list|passwd|remove`: people and services (a citizen's app, a care
//! service, an analyst, an operator) kept in the data directory's `registry.db`, beside the
//! `[[principals]]` of the config file. A running hub lets them in, or no longer, within a
//! second, over MQTT and HTTP alike; every change is written to the audit log.

use std::path::PathBuf;

use crate::device::{data_dir, Place};
use crate::output::{out, outln, table};
use anyhow::{bail, Context as _};
use kenko_api::principals as admin;
use kenko_broker::auth::{hash_password, new_token, Cost};
use kenko_config::Config;
use kenko_devices::registry::{NewPrincipal, PrincipalError, PrincipalStore, Registry};

/// Who made a change, in the audit log.
const BY: &str = "cli";

#[derive(clap::Args)]
pub struct PrincipalArgs {
    #[command(subcommand)]
    command: PrincipalCommand,
}

#[derive(clap::Subcommand)]
enum PrincipalCommand {
    /// Add a principal to registry.db (a running hub lets it in within a second)
    Add(AddArgs),
    /// List the principals of the config file and of registry.db
    List(ListArgs),
    /// Change the password of a principal of registry.db (its connections made with the old
    /// one are cut off)
    Passwd(PasswdArgs),
    /// Remove a principal added with `kenko principal add`
    Remove(RemoveArgs),
}

#[derive(clap::Args)]
struct Password {
    /// Read the password from the first line of stdin
    #[arg(
        long,
        conflicts_with = "generate_password",
        required_unless_present = "generate_password"
    )]
    password_stdin: bool,
    /// Make a random password and print it once (only its hash is stored)
    #[arg(long)]
    generate_password: bool,
}

#[derive(clap::Args)]
struct AddArgs {
    /// The hub's configuration: its principals and devices keep their ids
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    place: Place,
    /// Principal id: its MQTT username and HTTP login
    #[arg(long)]
    id: String,
    /// Roles the ACL rules and the HTTP API select (citizen, care, analyst, operator, ...),
    /// comma-separated or repeated
    #[arg(long = "role", value_delimiter = ',', required = true)]
    roles: Vec<String>,
    /// For a citizen's app (role citizen): the citizen it acts for
    #[arg(long)]
    citizen: Option<String>,
    #[command(flatten)]
    password: Password,
}

#[derive(clap::Args)]
struct ListArgs {
    /// The hub's configuration, to list its `[[principals]]` too
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
}

#[derive(clap::Args)]
struct PasswdArgs {
    /// The hub's configuration (for its data directory)
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
    #[arg(long)]
    id: String,
    #[command(flatten)]
    password: Password,
}

#[derive(clap::Args)]
struct RemoveArgs {
    /// The hub's configuration (to tell its own principals apart)
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    place: Place,
    #[arg(long)]
    id: String,
}

pub fn run(args: PrincipalArgs) -> anyhow::Result<()> {
    match args.command {
        PrincipalCommand::Add(args) => add(args),
        PrincipalCommand::List(args) => list(args),
        PrincipalCommand::Passwd(args) => passwd(args),
        PrincipalCommand::Remove(args) => remove(args),
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    })
}

/// The hash of the password asked for, and the password itself when it was generated (to
/// print once).
fn new_password(password: &Password, command: &str) -> anyhow::Result<(String, Option<String>)> {
    if password.generate_password {
        // 128 random bits: the cheap hash parameters are enough.
        let token = new_token();
        return Ok((hash_password(&token, Cost::Token), Some(token)));
    }
    let hash = crate::acl::hash_stdin_password(Cost::Password, command)?;
    Ok((hash, None))
}

fn add(args: AddArgs) -> anyhow::Result<()> {
    let config = Config::from_file(&args.config)?;
    let data_dir = data_dir(args.place.data_dir.as_deref(), &config);
    let mut new = NewPrincipal {
        id: args.id,
        roles: args.roles,
        citizen: args.citizen,
        password_hash: String::new(),
    };
    // Checked before a password is asked for or hashed (with a stand-in hash).
    NewPrincipal {
        password_hash: "$argon2id$".to_owned(),
        ..new.clone()
    }
    .check(&config, 0)?;
    let command = format!("kenko principal add --id {} ... --password-stdin", new.id);
    let (hash, generated) = new_password(&args.password, &command)?;
    new.password_hash = hash;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("registry.db");
    let principal = admin::add(&path, &config, new, BY)?;
    outln!(
        "added principal {} (roles {}{}) to {}; a running hub lets it in within a second",
        principal.id,
        principal.roles.join(", "),
        principal
            .citizen
            .as_deref()
            .map_or_else(String::new, |c| format!(", for citizen {c}")),
        path.display()
    );
    if let Some(token) = generated {
        outln!("password (shown only now; only its argon2id hash is stored): {token}");
    }
    Ok(())
}

fn list(args: ListArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_ref())?;
    let path = data_dir(args.place.data_dir.as_deref(), &config).join("registry.db");
    // Merged as the hub merges them (a row shadowed by the config is left out, with a warning).
    let registry = Registry::new(&config);
    registry.load_stored(&path)?;
    let mut rows: Vec<[String; 5]> = config
        .principals
        .iter()
        .map(|p| {
            [
                p.id.clone(),
                p.roles.join(","),
                p.citizen.clone().unwrap_or_else(|| "-".to_owned()),
                "config".to_owned(),
                "-".to_owned(),
            ]
        })
        .collect();
    for p in registry.principals().values() {
        let added = jiff::Timestamp::from_millisecond(p.added_ms)
            .map_or_else(|_| p.added_ms.to_string(), |t| t.to_string());
        rows.push([
            p.id.clone(),
            p.roles.join(","),
            p.citizen.clone().unwrap_or_else(|| "-".to_owned()),
            "registry".to_owned(),
            added,
        ]);
    }
    rows.sort();
    out!(
        "{}",
        table(["id", "roles", "citizen", "source", "added"], &rows)
    );
    Ok(())
}

/// Refuses a principal of the config file's `[[principals]]`: those change by editing it, as
/// `what_to_do` says.
fn not_in_config(config: &Config, id: &str, what_to_do: &str) -> anyhow::Result<()> {
    if config.principals.iter().any(|p| p.id == id) {
        bail!("principal {id} is a [[principals]] entry of the config file; {what_to_do}");
    }
    Ok(())
}

fn passwd(args: PasswdArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_ref())?;
    not_in_config(
        &config,
        &args.id,
        "change its password_hash there (`kenko hash-password`)",
    )?;
    let path = data_dir(args.place.data_dir.as_deref(), &config).join("registry.db");
    if !path.exists() {
        bail!(
            "{} does not exist; no principal was ever added there",
            path.display()
        );
    }
    // Known before a password is asked for.
    if PrincipalStore::open(&path)?.get(&args.id)?.is_none() {
        return Err(PrincipalError::NotFound(args.id).into());
    }
    let command = format!("kenko principal passwd --id {} --password-stdin", args.id);
    let (hash, generated) = new_password(&args.password, &command)?;
    let principal = admin::set_password(&path, &args.id, &hash, BY)?;
    outln!(
        "changed the password of principal {}; a running hub refuses the old one, and cuts off connections made with it, within a second",
        principal.id
    );
    if let Some(token) = generated {
        outln!("password (shown only now; only its argon2id hash is stored): {token}");
    }
    Ok(())
}

fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_ref())?;
    not_in_config(
        &config,
        &args.id,
        "remove it by editing that file (`kenko principal remove` removes only principals added with `kenko principal add`)",
    )?;
    let path = data_dir(args.place.data_dir.as_deref(), &config).join("registry.db");
    if !path.exists() {
        bail!("principal {} is not in {}", args.id, path.display());
    }
    let principal = admin::remove(&path, &args.id, BY)?;
    outln!(
        "removed principal {} from {}; a running hub refuses it, and nothing more reaches its connections, within a second",
        principal.id,
        path.display()
    );
    Ok(())
}
