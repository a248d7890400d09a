//! The simulator's devices against a real `kenko serve`, checked against what the simulator
//! knows: a replayed night of ten bed sensors must come back as sleep summaries that agree
//! with the simulator's minute-by-minute ground truth, and a fleet of every kind with injected
//! faults must leave exactly its faults in the dead letters and exactly its good readings in
//! the store.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use common::{Hub, KENKO};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use kenko_config::DeviceKind;
use kenko_devices::Metric;
use kenko_sim::{self as sim, BedModel, FaultReason, SimDevice, SleepTruth};
use rusqlite::{Connection, OpenFlags};

/// The seed of the simulated persons: `kenko simulate --seed`'s default, passed explicitly so
/// that the ground truth below is built from the very persons the simulator ran.
const SEED: u64 = 1;

/// The four metrics a sleep day is stored as.
const SLEEP_METRICS: [&str; 4] = [
    "sleep_time_in_bed",
    "sleep_time",
    "sleep_efficiency",
    "sleep_awakenings",
];

/// A `[[devices]]` entry for a simulated device, as it really is: its kind, its citizen, the
/// profile it speaks and the test password.
fn device_entry(device: &SimDevice) -> String {
    format!(
        "[[devices]]\nid = \"{}\"\nkind = \"{}\"\ncitizen = \"{}\"\nprofile = \"{}\"\npassword_hash = \"{}\"\n\n",
        device.id,
        device.kind.as_str(),
        device.citizen,
        device.profile,
        common::password_hash(&device.id)
    )
}

/// "DEVICE-ID PASSWORD" lines for `devices`, as `kenko simulate --passwords` reads them.
fn passwords_file(dir: &Path, devices: &[SimDevice]) -> anyhow::Result<PathBuf> {
    let path = dir.join("passwords.txt");
    let text: String = devices
        .iter()
        .map(|d| format!("{} {}\n", d.id, common::password(&d.id)))
        .collect();
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Runs `kenko simulate` against `hub` with `args`; its stdout.
fn simulate(hub: &Hub, passwords: &Path, args: &[&str]) -> anyhow::Result<String> {
    let started = Instant::now();
    let output = Command::new(KENKO)
        .args(["simulate", "--broker", &hub.addr.to_string()])
        .arg("--passwords")
        .arg(passwords)
        .args(["--seed", &SEED.to_string()])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "kenko simulate failed:\n{stdout}\n{stderr}"
    );
    println!(
        "kenko simulate {} took {:.1} s",
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    Ok(stdout)
}

/// One device's account at the end of `kenko simulate`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Account {
    profile: String,
    good_messages: u64,
    samples: u64,
    readings: u64,
    duplicates: u64,
    faults: u64,
    dropped: u64,
}

/// Parses the report lines `device ID PROFILE: N good messages, N samples, N readings,
/// N duplicates, N faults[, N samples dropped]`, by device id.
fn accounts(stdout: &str) -> anyhow::Result<BTreeMap<String, Account>> {
    let mut out = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("device ") else {
            continue;
        };
        let (head, counts) = rest.split_once(": ").context(line.to_owned())?;
        let (id, profile) = head.split_once(' ').context(line.to_owned())?;
        let mut numbers = BTreeMap::new();
        for part in counts.split(", ") {
            let (n, what) = part.split_once(' ').context(line.to_owned())?;
            numbers.insert(what.to_owned(), n.parse::<u64>().context(line.to_owned())?);
        }
        let get = |what: &str| {
            numbers
                .get(what)
                .copied()
                .with_context(|| format!("no {what:?} in {line:?}"))
        };
        let account = Account {
            profile: profile.to_owned(),
            good_messages: get("good messages")?,
            samples: get("samples")?,
            readings: get("readings")?,
            duplicates: get("duplicates")?,
            faults: get("faults")?,
            dropped: numbers.get("samples dropped").copied().unwrap_or(0),
        };
        out.insert(id.to_owned(), account);
    }
    Ok(out)
}

fn open_read_only(path: &Path) -> anyhow::Result<Connection> {
    Ok(Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?)
}

/// Stored device readings (derived metrics left out) per device: rows of `personal.db`,
/// one per (device, metric, event time).
fn stored_readings(data_dir: &Path) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for &metric in Metric::ALL.iter().filter(|m| !m.is_derived()) {
        for row in common::store::stored(&data_dir.join("personal.db"), metric)? {
            *out.entry(row.device).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// Windows before `before` whose inputs changed since they were last computed (notes of
/// `window_dirty` starting before it): none once every summary before it is final. A note
/// may stay for a window still open — a device whose clock runs ahead sends its last
/// minute's sample after `before` — and then starts at that window.
fn windows_pending(data_dir: &Path, before: Timestamp) -> anyhow::Result<u64> {
    let conn = open_read_only(&data_dir.join("personal.db"))?;
    Ok(conn.query_row(
        "SELECT count(*) FROM window_dirty WHERE from_ms < ?1",
        [before.as_millisecond()],
        |r| r.get(0),
    )?)
}

/// Every dead letter as (device, reason code), sorted.
fn dead_letters(data_dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let path = data_dir.join("deadletter.db");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let conn = open_read_only(&path)?;
    let mut statement = conn.prepare("SELECT device, reason_code FROM dead_letters")?;
    let rows = statement.query_map([], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?
                .unwrap_or_else(|| "(none)".into()),
            r.get::<_, String>(1)?,
        ))
    })?;
    let mut out = rows.collect::<Result<Vec<_>, _>>()?;
    out.sort();
    Ok(out)
}

/// Reads until the value equals `expected` or `limit` passes; the last value read, for the
/// caller to assert on (so that a mismatch shows as a diff, not as a timeout).
fn settle<T: PartialEq>(
    limit: Duration,
    expected: &T,
    mut read: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let value = read()?;
        if &value == expected || Instant::now() > deadline {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn jst() -> TimeZone {
    TimeZone::get("Asia/Tokyo").expect("tz")
}

/// 18:00 JST of the local date `days` days before now.
fn six_pm_jst(days: i64) -> anyhow::Result<Timestamp> {
    let then = (Timestamp::now() - SignedDuration::from_hours(24 * days)).to_zoned(jst());
    Ok(then.date().at(18, 0, 0, 0).to_zoned(jst())?.timestamp())
}

fn row_time(row: &serde_json::Value) -> anyhow::Result<Timestamp> {
    row["time"]
        .as_str()
        .with_context(|| format!("no time in {row}"))?
        .parse::<Timestamp>()
        .with_context(|| format!("time of {row}"))
}

/// Stored values of `metric` by device: (time, value) rows.
fn by_device(hub: &Hub, metric: &str) -> anyhow::Result<BTreeMap<String, Vec<(Timestamp, f64)>>> {
    let mut out: BTreeMap<String, Vec<(Timestamp, f64)>> = BTreeMap::new();
    for row in hub.query(&["--metric", metric, "--from", "-30d"])? {
        let device = row["device"]
            .as_str()
            .with_context(|| format!("no device in {row}"))?
            .to_owned();
        let value = row["value"]
            .as_f64()
            .with_context(|| format!("no value in {row}"))?;
        out.entry(device)
            .or_default()
            .push((row_time(&row)?, value));
    }
    Ok(out)
}

/// A sleep day of ten simulated bed sensors (with seed 1 all five of the simulator's
/// chronotypes, both JSON profiles and protobuf, offline periods and batches) replayed minute by minute through `kenko simulate`
/// into a hub, whose sleep summaries must agree with the simulator's ground truth
/// ([`BedModel::sleep_truth`], minute by minute from the model's own timeline) within:
///
/// - time in bed and sleep time: ±10 minutes (a device's clock skew, up to ±90 s, moves its
///   samples across the window's edges, and the hub weighs each sample by the time to the
///   next one rather than by whole minutes);
/// - sleep efficiency: ±2 percentage points;
/// - awakenings: ±2.
///
/// Each summary is stored once, at the sleep day's start (18:00 JST).
#[test]
fn a_simulated_night_of_ten_bed_sensors_matches_the_simulators_truth() -> anyhow::Result<()> {
    const TOLERANCE_MIN: f64 = 10.0;
    const TOLERANCE_EFFICIENCY_PCT: f64 = 2.0;
    const TOLERANCE_AWAKENINGS: f64 = 2.0;
    let dir = tempfile::tempdir()?;
    let beds = sim::fleet(&[DeviceKind::Bed], 10);
    for (n, bed) in (1..).zip(&beds) {
        assert_eq!(bed.id, format!("bed-{n:03}"));
        assert_eq!(bed.profile, sim::profile_for(DeviceKind::Bed, n));
    }
    let mut config = String::from("[ingest]\nbatch_linger_ms = 2\n\n[windows]\ngrace_min = 0\n\n");
    config.extend(beds.iter().map(device_entry));
    let hub = Hub::start(dir.path(), &config)?;
    let passwords = passwords_file(dir.path(), &beds)?;

    // A sleep day that closed: 18:00 JST two days ago to 18:00 JST yesterday.
    let (start, end) = (six_pm_jst(2)?, six_pm_jst(1)?);
    assert_eq!(end.duration_since(start), SignedDuration::from_hours(24));
    let stdout = simulate(
        &hub,
        &passwords,
        &[
            "--kinds",
            "bed",
            "--devices",
            "10",
            "--from",
            &start.to_string(),
            "--until",
            &end.to_string(),
            "--step",
            "60",
        ],
    )?;
    let sent = accounts(&stdout)?;
    let ids: Vec<&str> = sent.keys().map(String::as_str).collect();
    let expected_ids: Vec<&str> = beds.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids, expected_ids, "{stdout}");
    for (id, account) in &sent {
        assert_eq!(
            account.samples,
            24 * 60,
            "{id}: a sample a minute: {account:?}"
        );
        assert_eq!(
            (account.faults, account.dropped),
            (0, 0),
            "{id}: {account:?}"
        );
    }

    // Everything the simulator sent is stored (so the windows see the whole night) ...
    let expected: BTreeMap<String, u64> = sent
        .iter()
        .map(|(id, a)| (id.clone(), a.readings))
        .collect();
    let stored = settle(Duration::from_secs(30), &expected, || {
        stored_readings(&hub.data_dir)
    })?;
    assert_eq!(stored, expected, "stored readings per device vs sent");

    // ... and the truth says which summaries there must be: efficiency only with time in bed.
    let truths: Vec<(SimDevice, BedModel, SleepTruth)> = beds
        .iter()
        .map(|bed| {
            let model = BedModel::for_device(SEED, bed.n);
            let truth = model.sleep_truth(start, end);
            (bed.clone(), model, truth)
        })
        .collect();
    assert!(
        truths.iter().any(|(.., t)| t.sleep_min > 5 * 60),
        "a night with hours of sleep among ten persons: {truths:?}"
    );

    // Every window is final once no input change awaits it and all summaries are there.
    let in_day = |t: Timestamp| (start..end).contains(&t);
    let mut last_state = String::from("nothing read");
    let summaries = common::eventually(Duration::from_secs(60), || {
        let pending = windows_pending(&hub.data_dir, end)?;
        let mut summaries = BTreeMap::new();
        for metric in SLEEP_METRICS {
            summaries.insert(metric, by_device(&hub, metric)?);
        }
        let missing: Vec<String> = truths
            .iter()
            .flat_map(|(bed, _, truth)| {
                SLEEP_METRICS
                    .iter()
                    .filter(|m| {
                        let expected = **m != "sleep_efficiency" || truth.efficiency_pct.is_some();
                        let stored = summaries[*m]
                            .get(&bed.id)
                            .is_some_and(|rows| rows.iter().any(|(t, _)| in_day(*t)));
                        expected && !stored
                    })
                    .map(|m| format!("{} {m}", bed.id))
            })
            .collect();
        last_state = format!("{pending} windows pending; missing: {missing:?}");
        if pending == 0 && missing.is_empty() {
            return Ok(Some(summaries));
        }
        std::thread::sleep(Duration::from_millis(200));
        Ok(None)
    })
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}: {last_state}; hub said:\n{}",
            hub.stderr_lines().join("\n")
        )
    })?;

    let one = |metric: &str, id: &str| -> anyhow::Result<Option<f64>> {
        let rows: Vec<(Timestamp, f64)> = summaries[metric]
            .get(id)
            .map(|rows| rows.iter().copied().filter(|(t, _)| in_day(*t)).collect())
            .unwrap_or_default();
        match rows.as_slice() {
            [] => Ok(None),
            [(time, value)] => {
                ensure!(
                    *time == start,
                    "{id} {metric} stored at {time}, not at the sleep day's start {start}"
                );
                Ok(Some(*value))
            }
            _ => bail!("{id} {metric}: one value per sleep day, found {rows:?}"),
        }
    };
    println!("sleep day {start} .. {end} (18:00 JST), seed {SEED}: truth vs hub");
    println!(
        "{:<8} {:<12} {:<11} | {:>13} | {:>13} | {:>13} | {:>9}",
        "device",
        "profile",
        "chronotype",
        "in bed (min)",
        "asleep (min)",
        "efficiency %",
        "awakenings"
    );
    let mut failures = Vec::new();
    for (bed, model, truth) in &truths {
        let id = bed.id.as_str();
        let in_bed = one("sleep_time_in_bed", id)?.context("time in bed")?;
        let asleep = one("sleep_time", id)?.context("sleep time")?;
        let efficiency = one("sleep_efficiency", id)?;
        let awakenings = one("sleep_awakenings", id)?.context("awakenings")?;
        let fmt_pct = |p: Option<f64>| p.map_or("-".to_owned(), |p| format!("{p:.1}"));
        println!(
            "{:<8} {:<12} {:<11} | {:>5} {:>7.1} | {:>5} {:>7.1} | {:>5} {:>7} | {:>3} {:>5}",
            id,
            bed.profile,
            format!("{:?}", model.chronotype()),
            truth.time_in_bed_min,
            in_bed,
            truth.sleep_min,
            asleep,
            fmt_pct(truth.efficiency_pct),
            fmt_pct(efficiency),
            truth.awakenings,
            awakenings
        );
        let off = |what: &str, truth: f64, hub: f64, tolerance: f64| {
            ((hub - truth).abs() > tolerance).then(|| {
                format!("{id} {what}: hub {hub:.2}, truth {truth:.2} (tolerance ±{tolerance})")
            })
        };
        failures.extend(off(
            "time in bed",
            f64::from(truth.time_in_bed_min),
            in_bed,
            TOLERANCE_MIN,
        ));
        failures.extend(off(
            "sleep time",
            f64::from(truth.sleep_min),
            asleep,
            TOLERANCE_MIN,
        ));
        failures.extend(off(
            "awakenings",
            f64::from(truth.awakenings),
            awakenings,
            TOLERANCE_AWAKENINGS,
        ));
        match (truth.efficiency_pct, efficiency) {
            (Some(t), Some(h)) => {
                failures.extend(off("efficiency", t, h, TOLERANCE_EFFICIENCY_PCT));
            }
            (None, None) => {}
            (t, h) => failures.push(format!("{id} efficiency: hub {h:?}, truth {t:?}")),
        }
    }
    // A device's clock skew (at most sim::MAX_SKEW, 90 s) moves a sample or two across the
    // sleep day's edges: a clock running behind stamps its first samples (18:00 true time)
    // before 18:00, in the day before; one running ahead its last (17:59) after 18:00, in the
    // day after, summarized once that day has closed too. Such a sliver is summarized at its
    // own day's start with no more time in bed than the skew (or the one minute a last
    // sample stands for). Nothing else lies outside the sleep day.
    let day_before = start - SignedDuration::from_hours(24);
    let max_sliver_min = sim::MAX_SKEW.as_secs_f64() / 60.0;
    for metric in SLEEP_METRICS {
        for (id, rows) in &summaries[metric] {
            for &(time, value) in rows.iter().filter(|(t, _)| !in_day(*t)) {
                let side = if time < start { "before" } else { "after" };
                if metric == "sleep_time_in_bed" {
                    println!(
                        "{id}: a sliver of the day {side} from clock skew, {value:.2} min in bed, at {time}"
                    );
                }
                if time != day_before && time != end {
                    failures.push(format!("{id} {metric} {value} stored at {time}, neither in the sleep day nor at the start of the day before ({day_before}) or after ({end})"));
                }
                if metric == "sleep_time_in_bed" && value > max_sliver_min {
                    failures.push(format!("{id}: {value} min in bed in the day {side}, more than clock skew explains ({max_sliver_min} min)"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    hub.terminate()
}

/// Every kind of simulated device, two of each, for three hours with 5 % of the messages
/// replaced by faults the hub must refuse (`plausibility = "reject"`): the dead letters are
/// exactly the faults the simulator logged, as a multiset of (device, reason) (some profiles
/// carry no sequence number, and an unreadable payload shows none); each of the four reasons
/// was injected; and the store holds exactly the good readings each device reports it sent,
/// one row per (device, metric, event time), duplicates and faults not counted.
#[test]
fn faults_are_dead_lettered_with_their_reason_and_good_readings_stored() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let devices = sim::fleet(&DeviceKind::ALL, 2);
    assert_eq!(devices.len(), 14);
    let mut config = String::from("[ingest]\nbatch_linger_ms = 2\nplausibility = \"reject\"\n\n");
    config.extend(devices.iter().map(device_entry));
    let hub = Hub::start(dir.path(), &config)?;
    let passwords = passwords_file(dir.path(), &devices)?;
    let faults_log = dir.path().join("faults.log");

    let now = Timestamp::from_second(Timestamp::now().as_second())?;
    let from = now - SignedDuration::from_hours(3);
    let until = now - SignedDuration::from_mins(1);
    let kinds: Vec<&str> = DeviceKind::ALL.iter().map(|k| k.as_str()).collect();
    let kinds = kinds.join(",");
    assert_eq!(kinds, "bed,wearable,bp,scale,thermo,oximeter,glucose");
    let mut args = vec!["--kinds", &kinds, "--devices", "2", "--faults", "0.05"];
    let log = faults_log.to_str().context("path")?;
    let (from_text, until_text) = (from.to_string(), until.to_string());
    args.extend([
        "--faults-log",
        log,
        "--from",
        &from_text,
        "--until",
        &until_text,
        "--step",
        "60",
    ]);
    let stdout = simulate(&hub, &passwords, &args)?;
    let sent = accounts(&stdout)?;
    let ids: Vec<&str> = sent.keys().map(String::as_str).collect();
    let mut expected_ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    expected_ids.sort_unstable();
    assert_eq!(ids, expected_ids, "{stdout}");
    for device in &devices {
        let account = &sent[&device.id];
        assert_eq!(account.profile, device.profile, "{}", device.id);
        assert_eq!(account.dropped, 0, "{}: {account:?}", device.id);
    }

    // The faults log: DEVICE SEQ REASON.
    let text = std::fs::read_to_string(&faults_log)?;
    let mut injected = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let [device, seq, reason] = words[..] else {
            bail!("faults log line {line:?} is not \"DEVICE SEQ REASON\"");
        };
        seq.parse::<u64>()
            .with_context(|| format!("sequence number in {line:?}"))?;
        ensure!(
            FaultReason::ALL.iter().any(|r| r.code() == reason),
            "unknown reason in {line:?}"
        );
        injected.push((device.to_owned(), reason.to_owned()));
    }
    injected.sort();
    for (id, account) in &sent {
        let logged = injected.iter().filter(|(d, _)| d == id).count() as u64;
        assert_eq!(logged, account.faults, "{id}: faults logged vs reported");
    }
    let mut per_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, reason) in &injected {
        *per_reason.entry(reason.as_str()).or_default() += 1;
    }
    println!("faults injected: {per_reason:?}");
    for reason in FaultReason::ALL {
        assert!(
            per_reason.contains_key(reason.code()),
            "no {reason} fault injected: {per_reason:?}"
        );
    }

    // Every fault, and nothing else, is dead-lettered with its reason.
    let letters = settle(Duration::from_secs(30), &injected, || {
        dead_letters(&hub.data_dir)
    })?;
    assert_eq!(
        letters, injected,
        "dead letters (device, reason) vs faults log"
    );

    // Every good reading is stored once, and nothing more.
    let expected: BTreeMap<String, u64> = sent
        .iter()
        .filter(|(_, a)| a.readings > 0)
        .map(|(id, a)| (id.clone(), a.readings))
        .collect();
    let stored = settle(Duration::from_secs(30), &expected, || {
        stored_readings(&hub.data_dir)
    })?;
    println!("stored readings per device: {stored:?}");
    assert_eq!(stored, expected, "stored readings per device vs sent");
    let total: u64 = expected.values().sum();
    assert!(
        expected.keys().any(|id| id.starts_with("bed-"))
            && expected.keys().any(|id| id.starts_with("wearable-"))
            && total > 1_000,
        "three hours of continuous devices: {expected:?}"
    );
    hub.terminate()
}
