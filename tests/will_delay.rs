//! MQTT 5 Will Delay Interval (3.1.3.2.2), handled by kenko's layer: a will waits for its
//! delay or the end of the session, whichever comes first, and is not sent if the client
//! connects again within it (MQTT-3.1.3-9).

mod common;

use std::time::{Duration, Instant};

use common::raw::{self, prop, Conn, Props, Will};
use common::Hub;

fn config() -> String {
    let acl = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/interop-acl.toml");
    format!(
        "[auth]\nanonymous = true\nacl = {:?}\n",
        acl.display().to_string()
    )
}

/// Connects `client_id` with a will on `will/{client_id}` delayed `delay` s, in a session
/// that expires `expiry` s after the connection ends.
fn connect_with_will(hub: &Hub, client_id: &str, delay: u32, expiry: u32) -> anyhow::Result<Conn> {
    let topic = format!("will/{client_id}");
    let will = Will {
        topic: &topic,
        payload: b"gone",
        qos: 0,
        retain: false,
        props: Props::new().u32(prop::WILL_DELAY_INTERVAL, delay),
    };
    let props = Props::new().u32(prop::SESSION_EXPIRY_INTERVAL, expiry);
    let mut conn = Conn::open(hub.addr, true)?;
    conn.send(&raw::connect_with(
        true,
        client_id,
        true,
        30,
        &props,
        Some(&will),
        0,
    ))?;
    let ack = conn.read()?;
    anyhow::ensure!(ack.kind() == 2 && ack.body[1] == 0, "refused: {ack:?}");
    Ok(conn)
}

/// Waits up to `limit` for a PUBLISH on the watcher; when it came, if it did.
fn will_within(watcher: &mut Conn, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    watcher.stream.set_read_timeout(Some(limit)).ok()?;
    loop {
        match watcher.read() {
            Ok(p) if p.kind() == 3 => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[test]
fn mqtt_3_1_3_9_a_delayed_will_waits_and_a_reconnect_cancels_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_without_consent(dir.path(), &config())?;
    let (mut watcher, _) = Conn::connect(hub.addr, true, "watcher", None, None)?;
    assert_eq!(watcher.subscribe(1, &["will/#"])?, vec![0]);

    // Dropped without DISCONNECT: the will comes after its 2 s delay, not before.
    let conn = connect_with_will(&hub, "late", 2, 60)?;
    drop(conn);
    assert_eq!(
        will_within(&mut watcher, Duration::from_millis(1200)),
        None,
        "not before the delay"
    );
    let came = will_within(&mut watcher, Duration::from_secs(5));
    assert!(came.is_some(), "the delayed will arrives");

    // Back within the delay: no will at all.
    let conn = connect_with_will(&hub, "back", 2, 60)?;
    drop(conn);
    std::thread::sleep(Duration::from_millis(500));
    let again = connect_with_will(&hub, "back", 0, 0)?;
    assert_eq!(
        will_within(&mut watcher, Duration::from_secs(4)),
        None,
        "cancelled by the reconnect"
    );
    drop(again);

    // A session that ends with the connection (expiry 0) ends the wait at once.
    let conn = connect_with_will(&hub, "brief", 30, 0)?;
    drop(conn);
    assert!(
        will_within(&mut watcher, Duration::from_secs(3)).is_some(),
        "published when the session ends, not 30 s later"
    );
    hub.terminate()
}
