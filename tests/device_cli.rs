//! End to end: `kenko device add|list|remove` against a running hub. An added device logs in
//! and its telemetry is stored without a restart; a removed one is refused at CONNECT, and its
//! open connection is allowed nothing more.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::cli::{connect, kenko, path, text};
use common::Hub;
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, Incoming, QoS};
use tokio::sync::mpsc;

const PASSWORD: &str = "correct horse battery staple";

/// `kenko device SUBCOMMAND --config C --data-dir D ARGS…`
fn device(hub: &Hub, sub: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let (config, data) = (path(&hub.config), path(&hub.data_dir));
    kenko(
        &[
            &["device", sub, "--config", &config, "--data-dir", &data][..],
            args,
        ]
        .concat(),
        stdin,
    )
}

/// Publishes a bed-json-v1 reading (time: now) at QoS 1 and waits for its PUBACK.
async fn publish(
    client: &AsyncClient,
    events: &mut mpsc::UnboundedReceiver<Event>,
    id: &str,
    seq: u64,
    hr: u32,
) -> anyhow::Result<()> {
    let body = format!(r#"{{"ts":{},"seq":{seq},"hr":{hr}}}"#, common::now_ms());
    publish_body(client, events, id, body).await
}

async fn publish_body(
    client: &AsyncClient,
    events: &mut mpsc::UnboundedReceiver<Event>,
    id: &str,
    body: String,
) -> anyhow::Result<()> {
    client
        .publish(
            format!("devices/{id}/telemetry"),
            QoS::AtLeastOnce,
            false,
            body,
        )
        .await?;
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed before the PUBACK"))?;
        if let Event::Incoming(Incoming::PubAck(_)) = event {
            return Ok(());
        }
    }
}

/// bed-042's stored heart rates, once there are `n` (the store sink follows the log).
fn stored(hub: &Hub, n: usize) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut last = Vec::new();
    let found = common::eventually(Duration::from_secs(10), || {
        last = hub.query(&["--metric", "heart_rate", "--device", "bed-042"])?;
        Ok((last.len() >= n).then(|| last.clone()))
    });
    let rows = found.map_err(|e| anyhow::anyhow!("{e}: {n} rows expected, found {last:?}"))?;
    assert_eq!(rows.len(), n, "{rows:?}");
    Ok(rows)
}

/// `kenko deadletter list --reason unknown_device` as JSON.
fn dead_letters(hub: &Hub) -> anyhow::Result<Vec<serde_json::Value>> {
    let out = kenko(
        &[
            "deadletter",
            "list",
            "--data-dir",
            &path(&hub.data_dir),
            "--reason",
            "unknown_device",
            "--format",
            "json",
        ],
        None,
    )?;
    anyhow::ensure!(out.status.success(), "{}", text(&out));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The rows of `kenko device list` (after the header), split on whitespace.
fn list(hub: &Hub, filter: &[&str]) -> anyhow::Result<Vec<Vec<String>>> {
    let out = device(hub, "list", filter, None)?;
    anyhow::ensure!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout)?;
    let mut lines = stdout.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["id", "kind", "citizen", "profile", "timezone", "gateway", "source", "password"]
    );
    Ok(lines
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_device_publishes_and_a_removed_one_is_refused_without_a_restart(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path(), &common::config_with_devices(1))?;
    common::consent(&hub.data_dir, "grant", &["citizen-042"], "collect")?;

    // Not registered yet: refused like any unknown username.
    match connect(&hub, "bed-042", PASSWORD).await? {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)) => {}
        other => panic!(
            "an unregistered device must be refused, got {:?}",
            other.err()
        ),
    }

    let out = device(
        &hub,
        "add",
        &[
            "--id",
            "bed-042",
            "--kind",
            "bed",
            "--citizen",
            "citizen-042",
            "--timezone",
            "Europe/Berlin",
            "--password-stdin",
        ],
        Some(&format!("{PASSWORD}\n")),
    )?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("added device bed-042 (bed, citizen citizen-042, profile bed-json-v1"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(PASSWORD), "the password is not echoed");
    let hash: String = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?.query_row(
        "SELECT password_hash FROM devices WHERE id = 'bed-042'",
        [],
        |r| r.get(0),
    )?;
    assert!(hash.starts_with("$argon2id$"), "{hash}");

    // The hub rereads registry.db about twice a second.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (client, mut events) = loop {
        match connect(&hub, "bed-042", PASSWORD).await? {
            Ok(connected) => break connected,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => anyhow::bail!("the added device was not let in within 10 s: {e}"),
        }
    };
    publish(&client, &mut events, "bed-042", 1, 60).await?;
    let rows = stored(&hub, 1)?;
    assert_eq!(rows[0]["citizen"], "citizen-042");
    assert_eq!(rows[0]["value"], 60.0);

    // A timestamp without an offset is the device's own local time (Europe/Berlin, a zone no
    // device of the config names), not the hub's default (Asia/Tokyo).
    let at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() - 60)?;
    let local = at
        .to_zoned(jiff::tz::TimeZone::get("Europe/Berlin")?)
        .datetime();
    let body = format!(r#"{{"ts":"{local}","seq":2,"hr":62}}"#);
    publish_body(&client, &mut events, "bed-042", body).await?;
    let rows = stored(&hub, 2)?;
    let row = rows.iter().find(|r| r["value"] == 62.0).expect("stored");
    let time: jiff::Timestamp = row["time"].as_str().unwrap_or_default().parse()?;
    assert_eq!(time, at, "{local} in Europe/Berlin");

    // Listed beside the config's device, with its source.
    let all = list(&hub, &[])?;
    assert_eq!(
        all,
        [
            vec![
                "bed-001",
                "bed",
                "citizen-001",
                "bed-json-v1",
                "-",
                "-",
                "config",
                "yes"
            ],
            vec![
                "bed-042",
                "bed",
                "citizen-042",
                "bed-json-v1",
                "Europe/Berlin",
                "-",
                "registry",
                "yes"
            ],
        ]
    );
    assert_eq!(list(&hub, &["--citizen", "citizen-042"])?.len(), 1);
    assert_eq!(list(&hub, &["--kind", "wearable"])?.len(), 0);
    assert_eq!(list(&hub, &["--kind", "bed"])?.len(), 2);

    // Removed: once the hub has reread registry.db, its open connection is allowed nothing
    // more (a publish closes an MQTT 3.1.1 connection, unacknowledged), and from then on a
    // new CONNECT is refused.
    let out = device(&hub, "remove", &["--id", "bed-042"], None)?;
    assert!(out.status.success(), "{}", text(&out));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seq = 2;
    loop {
        seq += 1;
        if publish(&client, &mut events, "bed-042", seq, 60 + seq as u32)
            .await
            .is_err()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the removal did not take force within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Refused at the door; only a message already past it when the removal took force may
    // have reached the pipeline, which refuses it as from an unknown device.
    let letters = dead_letters(&hub)?;
    assert!(
        letters.iter().all(|l| l["device"] == "bed-042"),
        "{letters:?}"
    );
    match connect(&hub, "bed-042", PASSWORD).await? {
        Err(ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword)) => {}
        other => panic!("a removed device must be refused, got {:?}", other.err()),
    }
    let rows = stored(&hub, seq as usize - 1 - letters.len())?;
    assert!(
        rows.iter()
            .all(|r| r["value"] != f64::from(60 + seq as u32)),
        "the refused reading is not stored: {rows:?}"
    );
    assert_eq!(list(&hub, &[])?.len(), 1);

    // Audited, like consent changes.
    let out = kenko(
        &["audit", "verify", "--data-dir", &path(&hub.data_dir)],
        None,
    )?;
    assert!(out.status.success(), "{}", text(&out));
    let kinds: Vec<String> = rusqlite::Connection::open(hub.data_dir.join("registry.db"))?
        .prepare("SELECT kind FROM audit WHERE kind LIKE 'device.%' ORDER BY seq")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(kinds, ["device.add", "device.remove"]);
    hub.terminate()
}

#[test]
fn mistakes_are_refused_with_what_to_do() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("kenko.toml");
    std::fs::write(&config, common::config_with_devices(1))?;
    let data = dir.path().join("data");
    let (config, data) = (path(&config), path(&data));
    let run = |sub: &str, args: &[&str], stdin: Option<&str>| {
        kenko(
            &[
                &["device", sub, "--config", &config, "--data-dir", &data][..],
                args,
            ]
            .concat(),
            stdin,
        )
    };
    let add = |id: &str, extra: &[&str]| {
        run(
            "add",
            &[
                &["--id", id, "--kind", "bed", "--citizen", "citizen-9"][..],
                extra,
            ]
            .concat(),
            None,
        )
    };

    let out = add("bed-9", &["--generate-password"])?;
    assert!(out.status.success(), "{}", text(&out));
    let token = text(&out)
        .lines()
        .find_map(|l| {
            l.strip_prefix("password (shown only now; only its argon2id hash is stored): ")
        })
        .map(str::to_owned)
        .expect("the generated password is printed");
    assert_eq!(token.len(), 32, "{token}");
    let hash: String = rusqlite::Connection::open(Path::new(&data).join("registry.db"))?
        .query_row(
            "SELECT password_hash FROM devices WHERE id = 'bed-9'",
            [],
            |r| r.get(0),
        )?;
    assert!(
        !hash.contains(&token) && hash.starts_with("$argon2id$"),
        "{hash}"
    );

    for (args, says) in [
        (add("bed-9", &[])?, "device bed-9 is already registered in registry.db; remove it first with `kenko device remove --id bed-9`"),
        (add("bed-001", &[])?, "device bed-001 is a [[devices]] entry of the config file"),
        (add("operator-1", &[])?, "operator-1 is a principal of the config file"),
        (add("bed/9", &[])?, "device id \"bed/9\" contains '/'"),
        (
            run("add", &["--id", "x-1", "--kind", "toaster", "--citizen", "c"], None)?,
            "unknown device kind \"toaster\"; known kinds: bed, wearable, bp, scale, thermo, oximeter, glucose",
        ),
        (
            add("x-2", &["--profile", "bed-json-v9"])?,
            "unknown payload profile \"bed-json-v9\"; known profiles: bed-json-v1, bed-json-v2,",
        ),
        (add("x-3", &["--timezone", "Asia/Atlantis"])?, "unknown time zone \"Asia/Atlantis\""),
        (
            add("x-5", &["--gateway", "hub-404"])?,
            "gateway \"hub-404\" of device x-5 is not a registered device; add the gateway first",
        ),
        (
            run("add", &["--id", "x-4", "--kind", "bed", "--citizen", "c", "--password-stdin"], Some("\n"))?,
            "no password on stdin",
        ),
        (
            run("remove", &["--id", "bed-001"], None)?,
            "device bed-001 is a [[devices]] entry of",
        ),
        (run("remove", &["--id", "bed-404"], None)?, "device bed-404 is not registered in"),
        (run("list", &["--kind", "toaster"], None)?, "known kinds: bed, wearable"),
    ] {
        assert!(!args.status.success(), "{says}: {}", text(&args));
        assert!(text(&args).contains(says), "expected {says:?} in: {}", text(&args));
    }
    let out = run("remove", &["--id", "bed-001"], None)?;
    assert!(text(&out).contains("editing that file"), "{}", text(&out));
    // Nothing refused was stored.
    let ids: Vec<String> = rusqlite::Connection::open(Path::new(&data).join("registry.db"))?
        .prepare("SELECT id FROM devices ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    assert_eq!(ids, ["bed-9"]);
    Ok(())
}
