//! `kenko kpi --month YYYY-MM`: the city's figures for one month, never over fewer than k
//! citizens (docs/kpi.md). Participation comes from the consent registry.

use std::path::PathBuf;

use anyhow::Context as _;
use kenko_ingest::consent::ConsentRegistry;
use kenko_ingest::kpi::participation::{Participation, Row};
use kenko_ingest::kpi::{Month, DEFAULT_K};

use crate::device::{data_dir, load};
use crate::output::{out, table};

#[derive(clap::Args)]
pub struct KpiArgs {
    /// The month, YYYY-MM, in the config's `ingest.default_timezone`
    #[arg(long)]
    month: String,
    /// The hub's configuration, for its data directory and time zone
    #[arg(long)]
    config: Option<PathBuf>,
    /// The hub's data directory [default: the config's, else ./kenko-data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The smallest number of citizens a figure may count (fewer are suppressed)
    #[arg(long, default_value_t = DEFAULT_K, value_parser = clap::value_parser!(u64).range(2..))]
    k: u64,
    /// Output format: table, csv, json
    #[arg(long, default_value = "table")]
    format: String,
}

pub fn run(args: KpiArgs) -> anyhow::Result<()> {
    let config = load(args.config.as_deref())?;
    let zone = jiff::tz::TimeZone::get(&config.ingest.default_timezone)
        .context("ingest.default_timezone")?;
    let month = Month::parse(&args.month, &zone).map_err(anyhow::Error::msg)?;
    let path = data_dir(args.data_dir.as_deref(), &config).join("registry.db");
    anyhow::ensure!(
        path.exists(),
        "{} does not exist: give the hub's --data-dir (or --config)",
        path.display()
    );
    let records = ConsentRegistry::open_read_only(&path)?.list(None)?;
    let rows = Participation::of(&records, &month, args.k).rows(&month);
    out!("{}", render(&rows, &args.format)?);
    Ok(())
}

fn render(rows: &[Row], format: &str) -> anyhow::Result<String> {
    Ok(match format {
        "table" => {
            let cells: Vec<[String; 3]> = rows
                .iter()
                .map(|r| [r.kpi.to_owned(), r.month.clone(), r.shown.clone()])
                .collect();
            table(["kpi", "month", "value"], &cells)
        }
        "csv" => {
            let mut text = String::from("kpi,month,value,suppressed\n");
            for r in rows {
                let value = r.value.map(|v| v.to_string()).unwrap_or_default();
                text.push_str(&format!(
                    "{},{},{value},{}\n",
                    r.kpi,
                    r.month,
                    r.value.is_none()
                ));
            }
            text
        }
        "json" => format!("{}\n", serde_json::to_string_pretty(rows)?),
        other => anyhow::bail!("--format {other:?}: use table, csv or json"),
    })
}
