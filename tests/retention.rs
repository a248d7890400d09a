//! The hub's retention job: raw observations past `[retention] raw_days` are folded into
//! rollups, which then answer bucketed queries over the time raw data no longer covers, and
//! past hours of raw data are sealed into chunks that answer as the rows did.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, now_ms, Hub};
use kenko_devices::Metric;
use kenko_ingest::observation::Observation;
use kenko_ingest::store::PersonalStore;

const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// Two days of one reading a minute of citizen-001's heart rate, ending now.
fn history(now: i64) -> Vec<Observation> {
    (0..2 * 1440)
        .map(|m| {
            let time_ms = now - 2 * DAY_MS + m * MINUTE_MS;
            Observation {
                citizen: Arc::from("citizen-001"),
                device: Arc::from("bed-001"),
                metric: Metric::HeartRate,
                value: 60.0 + (m % 20) as f64,
                time_ms,
                received_ms: time_ms,
                seq: 0,
                flags: 0,
            }
        })
        .collect()
}

fn sum_of(rows: &[serde_json::Value]) -> f64 {
    rows.iter().filter_map(|r| r["value"].as_f64()).sum()
}

#[test]
fn the_hub_folds_raw_data_past_raw_days_into_rollups_that_answer_queries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let now = now_ms();
    PersonalStore::open(&data.join("personal.db"))?.write_batch(&history(now))?;
    let config = format!(
        "{}\n[http]\nlisten = \"127.0.0.1:0\"\n\n[retention]\nraw_days = 1\nrollup_1m_days = 3\n",
        common::config_with_devices(1).replace("[ingest]\n", "[ingest]\nlate_horizon_s = 3600\n")
    );
    // 1-minute rollups are kept 3 days: with 2, the bucket of the first reading (now less two
    // days) expires as soon as the job runs in the next minute.
    let hub = Hub::start(dir.path(), &config)?;
    // The job folds whole hours, six at a time: until it is done, the oldest raw reading is
    // more than an hour older than its cut-off (now less a day, down to the hour).
    let cutoff = (now - DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let raw_args = ["--metric", "heart_rate", "--from", "-3d"];
    let raw = eventually(Duration::from_secs(30), || {
        let rows = hub.query(&raw_args)?;
        let oldest = rows
            .iter()
            .filter_map(|r| r["time"].as_str()?.parse::<jiff::Timestamp>().ok())
            .map(|t| t.as_millisecond())
            .min()
            .unwrap_or(i64::MAX);
        Ok((oldest >= cutoff).then_some(rows))
    })?;
    assert!(
        raw.len() <= 1440 + 60,
        "{} raw readings left of the last day and its partial hour",
        raw.len()
    );
    for every in ["1h", "1m", "1d"] {
        let counts = hub.query(&[
            "--metric",
            "heart_rate",
            "--from",
            "-3d",
            "--every",
            every,
            "--agg",
            "count",
        ])?;
        assert_eq!(
            sum_of(&counts),
            2.0 * 1440.0,
            "every reading counts once at --every {every}: {counts:?}"
        );
    }
    let means = hub.query(&["--metric", "heart_rate", "--from", "-3d", "--every", "1h"])?;
    // Across citizens (one here): the same buckets under "*".
    let across = hub.query(&[
        "--metric",
        "heart_rate",
        "--from",
        "-3d",
        "--every",
        "1d",
        "--agg",
        "count",
        "--across",
    ])?;
    assert_eq!(sum_of(&across), 2.0 * 1440.0, "{across:?}");
    assert!(across.iter().all(|r| r["citizen"] == "*"), "{across:?}");
    // Percentiles across citizens read the rollups too: with one citizen, the median of the
    // citizens' daily means is that citizen's daily mean.
    let daily = ["--metric", "heart_rate", "--from", "-3d", "--every", "1d"];
    let values = |rows: &[serde_json::Value]| -> Vec<(String, i64)> {
        rows.iter()
            .map(|r| {
                let v = r["value"].as_f64().unwrap_or(f64::NAN);
                (r["time"].to_string(), (v * 1e6).round() as i64)
            })
            .collect()
    };
    let median = hub.query(&[&daily[..], &["--agg", "median", "--across"]].concat())?;
    let mean = hub.query(&daily)?;
    assert!(median.len() >= 2, "{median:?}");
    assert_eq!(values(&median), values(&mean));
    let citizens = hub.query(&[&daily[..], &["--agg", "citizens", "--across"]].concat())?;
    assert!(citizens.iter().all(|r| r["value"] == 1.0), "{citizens:?}");
    assert!(means.len() >= 48, "{} hourly means", means.len());
    assert!(
        means.iter().all(|r| r["value"]
            .as_f64()
            .is_some_and(|v| (60.0..80.0).contains(&v))),
        "{means:?}"
    );
    let api = hub.http_addr.expect("HTTP API");
    let (_, body) = common::http_text(api, "GET", "/metrics", Some("operator-1"), None)?;
    let folded = common::metric(&body, "kenko_retention_folded_total");
    assert_eq!(folded as usize, 2 * 1440 - raw.len(), "{body}");
    // The raw day's hours that ended two hours ago or more are sealed into chunks in the
    // same pass, and still answer raw reads reading for reading.
    let sealed = eventually(Duration::from_secs(30), || {
        let (_, body) = common::http_text(api, "GET", "/metrics", Some("operator-1"), None)?;
        let sealed = common::metric(&body, "kenko_store_sealed_total") as usize;
        Ok((sealed >= raw.len() - 3 * 60).then_some(sealed))
    })?;
    assert!(sealed <= raw.len(), "{sealed} sealed of {}", raw.len());
    assert_eq!(hub.query(&raw_args)?, raw, "raw reads from rows and chunks");
    hub.terminate()
}

/// `kenko store verify` checks every sealed chunk and names a damaged one by citizen,
/// device, metric and hour, failing; it passes over a sound store.
#[test]
fn store_verify_names_a_damaged_chunk() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let path = data.join("personal.db");
    let now = now_ms();
    PersonalStore::open(&path)?.write_batch(&history(now))?;
    let policy = kenko_ingest::retention::Policy::from_config(&Default::default(), 3_600)?;
    let sealed = kenko_ingest::retention::Retention::open(&path, policy)?
        .pass(now, &mut |_| true)?
        .sealed;
    assert!(sealed > 2 * 1440 - 4 * 60, "{sealed} sealed");
    let verify = || -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(common::KENKO)
            .args(["store", "verify", "--data-dir"])
            .arg(&data)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    };
    let (ok, text) = verify()?;
    assert!(ok, "{text}");
    assert!(
        text.contains(&format!("({sealed} readings) checked")) && text.contains("none damaged"),
        "{text}"
    );
    let conn = rusqlite::Connection::open(&path)?;
    let start: i64 = conn.query_row(
        "SELECT start_ms FROM chunks ORDER BY start_ms LIMIT 1 OFFSET 3",
        [],
        |r| r.get(0),
    )?;
    conn.execute(
        "UPDATE chunks SET data = CAST(substr(data, 1, 60) || x'00' || substr(data, 62) AS BLOB)
         WHERE start_ms = ?1",
        [start],
    )?;
    let (ok, text) = verify()?;
    let hour = jiff::Timestamp::from_millisecond(start)?.to_string();
    assert!(!ok, "damage fails the check: {text}");
    assert!(
        text.contains("1 damaged")
            && text.contains(&format!(
                "citizen-001 bed-001 heart_rate hour from {hour}: chunk checksum"
            )),
        "{text}"
    );
    Ok(())
}
