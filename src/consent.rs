//! `kenko consent grant|revoke|list` and `kenko audit verify|head`: the consent registry and
//! its audit log in the data directory's `registry.db`.

use std::path::PathBuf;

use crate::output::{out, outln};
use anyhow::Context as _;
use kenko_ingest::consent::{
    audit_head_path, ConsentChange, ConsentRegistry, ErasureSupport, Purpose, HUB,
};
use kenko_ingest::query::parse_time;

#[derive(clap::Args)]
pub struct ConsentArgs {
    #[command(subcommand)]
    command: ConsentCommand,
}

#[derive(clap::Subcommand)]
enum ConsentCommand {
    /// Record a citizen's consent
    Grant(Change),
    /// Record a withdrawal (a new record; nothing is edited)
    Revoke(RevokeArgs),
    /// List consent records, oldest first
    List(ListArgs),
    /// Replace the pseudonym key: from the next hub start on, every citizen's shared-store
    /// pseudonym is new and the old ones cannot be linked to the new
    RotatePseudonyms {
        #[arg(long, default_value = "./kenko-data")]
        data_dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct Change {
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    /// The citizen; repeat for several
    #[arg(long, required = true)]
    citizen: Vec<String>,
    /// collect (the hub may store the data), care (a grantee sees identified data),
    /// research (pseudonymized data goes to the shared store)
    #[arg(long)]
    purpose: String,
    /// Who is granted: a principal id for care; the hub ("kenko") for collect and research
    #[arg(long)]
    grantee: Option<String>,
    /// Data types (metric names, comma-separated); all when absent
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
    /// Valid from (RFC 3339, now, or relative like -1h); from the start when absent
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// Valid until; open-ended when absent
    #[arg(long, allow_hyphen_values = true)]
    until: Option<String>,
    /// Where the consent comes from (form number, app, operator)
    #[arg(long, default_value = "cli")]
    source: String,
}

#[derive(clap::Args)]
struct RevokeArgs {
    #[command(flatten)]
    change: Change,
    /// Also ask for the citizen's data to be erased
    #[arg(long)]
    erase: bool,
}

#[derive(clap::Args)]
struct ListArgs {
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    #[arg(long)]
    citizen: Option<String>,
}

#[derive(clap::Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log and its checkpoint
    Verify {
        #[arg(long, default_value = "./kenko-data")]
        data_dir: PathBuf,
    },
    /// Print the latest checkpoint (sequence number and hash), to keep outside the hub
    Head {
        #[arg(long, default_value = "./kenko-data")]
        data_dir: PathBuf,
    },
}

pub fn run(args: ConsentArgs) -> anyhow::Result<()> {
    match args.command {
        ConsentCommand::Grant(change) => record(change, true, false),
        ConsentCommand::Revoke(revoke) => record(revoke.change, false, revoke.erase),
        ConsentCommand::RotatePseudonyms { data_dir } => {
            kenko_ingest::pseudonym::write_new_key(&data_dir)?;
            let mut registry = ConsentRegistry::open(&data_dir.join("registry.db"))?;
            registry.audit(crate::clock::now_ms(), "pseudonym.rotate", "{}")?;
            outln!(
                "new pseudonym key written to {}; it takes effect when the hub (re)starts",
                data_dir.join("pseudonym.key").display()
            );
            Ok(())
        }
        ConsentCommand::List(list) => {
            let registry = ConsentRegistry::open_read_only(&list.data_dir.join("registry.db"))?;
            outln!("id\trecorded\tcitizen\tgrantee\tpurpose\tchange\ttypes\tfrom\tuntil\tsource");
            let time = |ms: Option<i64>| {
                ms.and_then(|m| jiff::Timestamp::from_millisecond(m).ok())
                    .map_or_else(|| "-".to_owned(), |t| t.to_string())
            };
            for record in registry.list(list.citizen.as_deref())? {
                let c = &record.change;
                let change = match (c.granted, c.erase) {
                    (true, _) => "grant",
                    (false, false) => "revoke",
                    (false, true) => "revoke+erase",
                };
                outln!(
                    "{}\t{}\t{}\t{}\t{}\t{change}\t{}\t{}\t{}\t{}",
                    record.id,
                    time(Some(record.recorded_ms)),
                    c.citizen,
                    c.grantee,
                    c.purpose.as_str(),
                    if c.data_types.is_empty() {
                        "all".to_owned()
                    } else {
                        c.data_types.join(",")
                    },
                    time(c.valid_from_ms),
                    time(c.valid_until_ms),
                    c.source
                );
            }
            Ok(())
        }
    }
}

fn record(change: Change, granted: bool, erase: bool) -> anyhow::Result<()> {
    let purpose: Purpose = change.purpose.parse().map_err(anyhow::Error::msg)?;
    let grantee = match (purpose, change.grantee) {
        (Purpose::Care, None) => anyhow::bail!("--purpose care needs --grantee PRINCIPAL"),
        (Purpose::Care, Some(g)) => g,
        (_, Some(g)) if g != HUB => anyhow::bail!(
            "--purpose {} is granted to the hub itself; leave out --grantee",
            purpose.as_str()
        ),
        (_, _) => HUB.to_owned(),
    };
    let now = crate::clock::now_ms();
    let time = |t: &Option<String>| -> anyhow::Result<Option<i64>> {
        t.as_deref()
            .map(|t| parse_time(t, now).map_err(anyhow::Error::msg))
            .transpose()
    };
    let (from, until) = (time(&change.from)?, time(&change.until)?);
    // Every record is checked before any is stored: a bad one among several citizens leaves
    // nothing half recorded.
    let records = change
        .citizen
        .iter()
        .map(|citizen| {
            let record = ConsentChange {
                citizen: citizen.clone(),
                grantee: grantee.clone(),
                purpose,
                data_types: change.types.clone(),
                valid_from_ms: from,
                valid_until_ms: until,
                source: change.source.clone(),
                granted,
                erase,
            };
            // A misspelt type would be recorded and cover nothing: a withdrawal that
            // withdraws nothing.
            record.check().map(|()| record)
        })
        .collect::<Result<Vec<_>, _>>()?;
    std::fs::create_dir_all(&change.data_dir)
        .with_context(|| format!("cannot create {}", change.data_dir.display()))?;
    let mut registry = ConsentRegistry::open(&change.data_dir.join("registry.db"))?;
    for record in records {
        let citizen = record.citizen.clone();
        let stored = registry.record(record, now)?;
        if erase {
            outln!("erasure requested: the hub deletes the citizen's rows at once if it is running, otherwise when it starts");
            for support in registry.erasure_support()? {
                outln!("{}", erasure_reach(&support));
            }
        }
        outln!(
            "recorded #{}: {} {} {} for {}",
            stored.id,
            citizen,
            if granted { "grants" } else { "withdraws" },
            purpose.as_str(),
            grantee
        );
    }
    Ok(())
}

/// What an erasure does in a sink besides the embedded store, as the hub last found out.
fn erasure_reach(support: &ErasureSupport) -> String {
    let checked = jiff::Timestamp::from_millisecond(support.checked_ms)
        .map_or_else(|_| support.checked_ms.to_string(), |t| t.to_string());
    if support.supported {
        format!(
            "{} at {}: the hub deletes the citizen's points there too (server checked {checked})",
            support.sink, support.server
        )
    } else {
        format!(
            "{} at {} has no delete API ({}; checked {checked}): the citizen's points stored there stay until the server's own retention removes them; the audit log records this as erasure.{} unsupported",
            support.sink, support.server, support.detail, support.sink
        )
    }
}

pub fn audit(args: AuditArgs) -> anyhow::Result<bool> {
    match args.command {
        AuditCommand::Verify { data_dir } => {
            let registry = ConsentRegistry::open_read_only(&data_dir.join("registry.db"))?;
            match registry.verify_audit() {
                Ok(report) => {
                    outln!("audit log verified: {} entries", report.entries);
                    if let Some((seq, hash)) = report.head {
                        outln!("head: {seq} {hash}");
                    }
                    Ok(true)
                }
                Err(e) => {
                    outln!("audit log FAILED verification: {e}");
                    Ok(false)
                }
            }
        }
        AuditCommand::Head { data_dir } => {
            let path = audit_head_path(&data_dir.join("registry.db"));
            let head = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            out!("{head}");
            Ok(true)
        }
    }
}
