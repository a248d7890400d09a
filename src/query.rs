//! `kenko query`: read stored observations, raw or aggregated, as a table, CSV or JSON.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context as _;
use kenko_api::http::{filter_rows, query_access, Access, StoreKind};
use kenko_broker::auth::Directory;
use kenko_devices::Metric;
use kenko_ingest::consent::ConsentRegistry;
use kenko_ingest::query::{parse_duration, parse_time, render, Agg, Format, Query};
use kenko_ingest::store::PersonalStore;

#[derive(clap::Args)]
pub struct QueryArgs {
    /// The hub's data directory
    #[arg(long, default_value = "./kenko-data")]
    data_dir: PathBuf,
    /// Metric name, e.g. heart_rate, spo2, blood_glucose, sleep_time, daily_steps (docs/devices.md lists them all)
    #[arg(long)]
    metric: String,
    /// Which store: personal (identified) or shared (pseudonymized, for research; the citizen
    /// column holds pseudonyms and the device column "-")
    #[arg(long, default_value = "personal", value_parser = ["personal", "shared"])]
    store: String,
    /// Only this citizen (in the shared store: this pseudonym)
    #[arg(long)]
    citizen: Option<String>,
    /// Read as this principal of --config, under the HTTP API's rules: a care service sees
    /// identified data of citizens with care consent to it, a citizen's app its own citizen's,
    /// analysts only the shared store. Without it the reader is a local operator with access
    /// to the files.
    #[arg(long, requires = "config")]
    principal: Option<String>,
    /// The hub's configuration, to find --principal
    #[arg(long)]
    config: Option<PathBuf>,
    /// Only this device
    #[arg(long)]
    device: Option<String>,
    /// Start (inclusive): RFC 3339 (2026-11-25T09:00:00+09:00), `now`, or relative (-15m, -2h, -7d)
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End (exclusive), same forms as --from
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Aggregate into buckets of this width (30s, 1m, 1h, 1d)
    #[arg(long)]
    every: Option<String>,
    /// Aggregate function with --every: mean, min, max, count; with --across also citizens
    /// (how many have readings) and percentiles of the citizens' means (median, p90, p1..p99)
    #[arg(long, default_value = "mean")]
    agg: String,
    /// Output format: table, csv, json
    #[arg(long, default_value = "csv")]
    format: String,
    /// At most this many rows
    #[arg(long)]
    limit: Option<usize>,
    /// With --every: one aggregate per bucket over all citizens (and devices) selected,
    /// not one per citizen and device; citizen and device show as "*"
    #[arg(long, requires = "every", conflicts_with = "principal")]
    across: bool,
}

pub fn run(args: QueryArgs) -> anyhow::Result<()> {
    let metric: Metric = args.metric.parse()?;
    let now_ms = jiff::Timestamp::now().as_millisecond();
    let from_ms = args
        .from
        .as_deref()
        .map(|s| parse_time(s, now_ms))
        .transpose()
        .context("--from")?;
    let to_ms = args
        .to
        .as_deref()
        .map(|s| parse_time(s, now_ms))
        .transpose()
        .context("--to")?;
    let every_ms = args
        .every
        .as_deref()
        .map(parse_duration)
        .transpose()
        .context("--every")?;
    let agg: Agg = args.agg.parse().context("--agg")?;
    let format: Format = args.format.parse().context("--format")?;
    let query = Query {
        citizen: args.citizen,
        device: args.device,
        from_ms,
        to_ms,
        every_ms,
        agg,
        limit: args.limit,
        across: args.across,
        ..Query::new(metric)
    };
    let file = format!("{}.db", args.store);
    let store = PersonalStore::open_read_only(&args.data_dir.join(file))?;
    let mut query = query;
    let rows = match (&args.principal, &args.config) {
        (Some(principal), Some(config)) => {
            let config = kenko_config::Config::from_file(config)?;
            let directory = Directory::from_config(&config)?;
            let who = directory
                .get(principal)
                .with_context(|| format!("unknown principal {principal:?}"))?;
            let registry = ConsentRegistry::open(&args.data_dir.join("registry.db"))?;
            let consents = registry.consents()?;
            let now = jiff::Timestamp::now().as_millisecond();
            let kind = if args.store == "shared" {
                StoreKind::Shared
            } else {
                StoreKind::Personal
            };
            let access = query_access(
                &who,
                kind,
                query.citizen.as_deref(),
                metric.name(),
                &consents,
                now,
            )
            .map_err(anyhow::Error::msg)?;
            if let Access::Citizen(c) | Access::CareCitizen(c) = &access {
                query.citizen = Some(c.clone());
            }
            let mut rows = store.query(&query)?;
            filter_rows(
                &access,
                &who.id,
                metric.name(),
                &mut rows,
                &consents,
                now,
                query.every_ms,
            );
            if kind == StoreKind::Personal {
                let mut citizens: Vec<&str> = rows.iter().map(|r| r.citizen.as_str()).collect();
                citizens.sort_unstable();
                citizens.dedup();
                let body = serde_json::json!({
                    "principal": who.id, "metric": metric.name(), "citizens": citizens,
                    "rows": rows.len(), "via": "cli",
                });
                let mut registry = registry;
                registry.audit(now, "access.identified", &body.to_string())?;
            }
            rows
        }
        _ => store.query(&query)?,
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    render(&rows, format, &mut out)?;
    out.flush()?;
    Ok(())
}
