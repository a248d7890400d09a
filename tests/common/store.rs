//! What a store file holds, read the way kenko reads it: rows and sealed chunks alike (a
//! test that read the `observations` table would miss the hours the retention job sealed).

use std::path::Path;

use kenko_devices::Metric;
use kenko_ingest::query::{Query, Row};
use kenko_ingest::store::PersonalStore;

/// Every stored reading of `metric` in the store file at `path`, in time order.
pub fn stored(path: &Path, metric: Metric) -> anyhow::Result<Vec<Row>> {
    Ok(PersonalStore::open_read_only(path)?.query(&Query::new(metric))?)
}
