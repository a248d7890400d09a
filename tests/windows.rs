//! Windowed outputs end to end: a bed sensor's night and a wearable's steps, published to a
//! real `kenko serve`, come back as a stored sleep summary and a daily step total; late data
//! computes the window again and replaces the value.

mod common;

use std::time::Duration;

use common::{now_ms, Hub};
use jiff::tz::TimeZone;
use kenko_proto::telemetry::{Reading, Sample, Telemetry};
use prost::Message;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};

const MIN: i64 = 60_000;

fn config() -> String {
    let mut text = String::from("[ingest]\nbatch_linger_ms = 2\n\n[windows]\ngrace_min = 0\n\n");
    for (id, kind, citizen) in [
        ("bed-001", "bed", "citizen-001"),
        ("wearable-001", "wearable", "citizen-001"),
    ] {
        text.push_str(&format!(
            "[[devices]]\nid = \"{id}\"\nkind = \"{kind}\"\ncitizen = \"{citizen}\"\npassword_hash = \"{}\"\n\n",
            common::password_hash(id)
        ));
    }
    text
}

/// Publishes at QoS 1 and waits for every acknowledgement.
async fn publish_all(
    client: AsyncClient,
    mut eventloop: EventLoop,
    messages: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<()> {
    let n = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await?;
        }
        anyhow::Ok(client)
    });
    let mut acked = 0;
    while acked < n {
        let event = tokio::time::timeout(Duration::from_secs(30), eventloop.poll()).await??;
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            acked += 1;
        }
    }
    sender.await??;
    Ok(())
}

fn jst() -> TimeZone {
    TimeZone::get("Asia/Tokyo").expect("tz")
}

/// 18:00 JST two days ago: the start of a sleep day that has closed.
fn sleep_day_start() -> i64 {
    let two_days_ago = jiff::Timestamp::from_millisecond(now_ms() - 2 * 24 * 60 * MIN)
        .expect("time")
        .to_zoned(jst());
    two_days_ago
        .date()
        .at(18, 0, 0, 0)
        .to_zoned(jst())
        .expect("local time")
        .timestamp()
        .as_millisecond()
}

/// The night: from 23:00, 15 min awake in bed, 165 asleep, 5 out of bed, 5 awake in bed,
/// 260 asleep, 10 awake, then out of bed. Odd minutes go as protobuf on the /pb topic.
fn night(start: i64) -> Vec<(String, Vec<u8>)> {
    let mut marks = String::new();
    marks.push_str(&"a".repeat(15));
    marks.push_str(&"l".repeat(165));
    marks.push_str(&".".repeat(5));
    marks.push_str(&"a".repeat(5));
    marks.push_str(&"dr".repeat(130));
    marks.push_str(&"a".repeat(10));
    marks.push('.');
    let first = start + 5 * 60 * MIN;
    marks
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let time_ms = first + i as i64 * MIN;
            let stage = match c {
                'a' => Some("awake"),
                'l' => Some("light"),
                'd' => Some("deep"),
                'r' => Some("rem"),
                _ => None,
            };
            let occupied = c != '.';
            if i % 2 == 1 {
                let mut readings = vec![Reading {
                    metric: "bed_occupancy".into(),
                    value: f64::from(u8::from(occupied)),
                }];
                if let Some(stage) = stage {
                    let code = kenko_devices::SleepStage::from_name(stage).expect("stage");
                    readings.push(Reading {
                        metric: "sleep_stage".into(),
                        value: code.code(),
                    });
                }
                let payload = Telemetry {
                    seq: i as u64,
                    samples: vec![Sample { time_ms, readings }],
                }
                .encode_to_vec();
                ("devices/bed-001/telemetry/pb".to_owned(), payload)
            } else {
                let mut json = serde_json::json!({"ts": time_ms, "seq": i, "occ": occupied});
                if let Some(stage) = stage {
                    json["stage"] = stage.into();
                    json["hr"] = 58.into();
                }
                (
                    "devices/bed-001/telemetry".to_owned(),
                    json.to_string().into_bytes(),
                )
            }
        })
        .collect()
}

fn steps(at: i64, seq: u64, steps: u32) -> (String, Vec<u8>) {
    (
        "devices/wearable-001/telemetry".to_owned(),
        serde_json::json!({"ts": at, "seq": seq, "hr": 70, "spo2": 0.97, "steps": steps})
            .to_string()
            .into_bytes(),
    )
}

/// 1,000 steps on the local day starting at `day` (10 × 100 from 09:00), and 250 in the
/// last half hour of the day before.
fn two_days_of_steps(day: i64) -> Vec<(String, Vec<u8>)> {
    let mut messages: Vec<_> = (0..10)
        .map(|i| steps(day + (9 * 60 + i * 10) * MIN, i as u64, 100))
        .collect();
    messages.push(steps(day - 30 * MIN, 99, 250));
    messages
}

/// The wearable's stored daily step totals, oldest first.
fn daily_steps(hub: &Hub) -> anyhow::Result<Vec<f64>> {
    let rows = hub.query(&[
        "--metric",
        "daily_steps",
        "--device",
        "wearable-001",
        "--from",
        "-30d",
    ])?;
    Ok(rows.iter().filter_map(|r| r["value"].as_f64()).collect())
}

fn one(hub: &Hub, metric: &str, device: &str) -> anyhow::Result<Option<(i64, f64)>> {
    let rows = hub.query(&["--metric", metric, "--device", device, "--from", "-30d"])?;
    anyhow::ensure!(rows.len() <= 1, "one value per window: {rows:?}");
    Ok(rows.first().map(|r| {
        let time = r["time"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_millisecond());
        (time, r["value"].as_f64().unwrap_or(f64::NAN))
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_night_and_a_day_of_steps_become_stored_summaries() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &config())?;
    let start = sleep_day_start();

    let (client, eventloop) = hub.device("bed-001");
    publish_all(client, eventloop, night(start)).await?;

    // Steps on the local calendar day after the sleep day's start: 10 × 100, plus 250 in the
    // last hour of the day before, which is a window of its own.
    let day = start + 6 * 60 * MIN; // local midnight
    let (client, eventloop) = hub.device("wearable-001");
    publish_all(client, eventloop, two_days_of_steps(day)).await?;

    let sleep = common::eventually(Duration::from_secs(30), || {
        one(&hub, "sleep_efficiency", "bed-001")
    })
    .map_err(|e| anyhow::anyhow!("{e}; hub said:\n{}", hub.stderr_lines().join("\n")))?;
    let in_bed = one(&hub, "sleep_time_in_bed", "bed-001")?.expect("time in bed");
    let asleep = one(&hub, "sleep_time", "bed-001")?.expect("sleep time");
    let awakenings = one(&hub, "sleep_awakenings", "bed-001")?.expect("awakenings");
    assert_eq!(sleep.0, start, "stored at the sleep day's start");
    assert_eq!(in_bed.1, 15.0 + 165.0 + 5.0 + 260.0 + 10.0);
    assert_eq!(asleep.1, 165.0 + 260.0);
    assert_eq!(awakenings.1, 1.0, "the trip out of bed at 02:00");
    assert!(
        (sleep.1 - 100.0 * 425.0 / 455.0).abs() < 1e-6,
        "{}",
        sleep.1
    );

    let daily = common::eventually(Duration::from_secs(30), || {
        let values = daily_steps(&hub)?;
        Ok((values.len() == 2).then_some(values))
    })?;
    assert_eq!(daily, vec![250.0, 1000.0]);

    // Late steps for the first day (within the horizon): the total is computed again.
    let (client, eventloop) = hub.device("wearable-001");
    publish_all(
        client,
        eventloop,
        vec![steps(day + 20 * 60 * MIN, 100, 500)],
    )
    .await?;
    common::eventually(Duration::from_secs(30), || {
        let values = daily_steps(&hub)?;
        Ok((values == vec![250.0, 1500.0]).then_some(()))
    })?;
    hub.terminate()
}

/// Windows of the personal store whose inputs changed and that are not yet decided.
fn windows_pending(data_dir: &std::path::Path) -> anyhow::Result<u64> {
    let conn = rusqlite::Connection::open_with_flags(
        data_dir.join("personal.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(conn.query_row("SELECT count(*) FROM window_dirty", [], |r| r.get(0))?)
}

/// Two days of steps (250 in the last hour of the first, 1000 in the second) at a hub that
/// summarizes windows from (or before) the second day's start; what it stores once every
/// window is decided.
async fn steps_summarized(setting: &str) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let day = sleep_day_start() + 6 * 60 * MIN; // local midnight
    let at = jiff::Timestamp::from_millisecond(day)?;
    let config = config().replace("[windows]\n", &format!("[windows]\n{setting} = \"{at}\"\n"));
    let hub = Hub::start(dir.path(), &config)?;
    let (client, eventloop) = hub.device("wearable-001");
    publish_all(client, eventloop, two_days_of_steps(day)).await?;
    let data_dir = dir.path().join("data");
    common::eventually(Duration::from_secs(30), || {
        Ok((!daily_steps(&hub)?.is_empty() && windows_pending(&data_dir)? == 0).then_some(()))
    })?;
    let stored = daily_steps(&hub)?;
    hub.terminate()?;
    Ok(stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_are_summarized_only_on_the_side_of_a_hand_over_this_hub_has() -> anyhow::Result<()>
{
    assert_eq!(steps_summarized("summarize_from").await?, vec![1000.0]);
    assert_eq!(steps_summarized("summarize_before").await?, vec![250.0]);
    Ok(())
}
