//! End to end: authentication and ACL enforcement over real connections. The bypass suite
//! tries the known ways around a broker's ACL and counts what leaks (nothing may).

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mqtt311::{until_connack, until_suback};
use common::raw::{self, Conn};
use common::Hub;
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};

/// Rules of the bypass suite, after kenko's built-in ones.
const RULES: &str = r##"
[[rule]]
effect = "allow"
role = "writer"
action = "publish"
topic = "public/#"

[[rule]]
effect = "allow"
role = "writer"
action = "publish"
topic = "secret/#"

[[rule]]
effect = "allow"
role = "watcher"
action = "subscribe"
topic = "public/#"

[[rule]]
effect = "deny"
role = "peeker"
action = "subscribe"
topic = "secret/#"

[[rule]]
effect = "allow"
role = "peeker"
action = "subscribe"
topic = "#"
"##;

fn write_rules(dir: &Path, before: &str, after: &str) -> anyhow::Result<()> {
    let text = format!(
        "{before}\n{}\n{after}",
        include_str!("../config/acl.default.toml")
    );
    // Written whole and renamed, as an editor or config tool would.
    let tmp = dir.join("acl.toml.new");
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, dir.join("acl.toml"))?;
    Ok(())
}

/// A hub with devices bed-001/002 and principals writer, watcher, peeker, st-luke.
fn start(dir: &Path, extra_auth: &str) -> anyhow::Result<Hub> {
    write_rules(dir, "", RULES)?;
    let config = format!(
        "{}{}{}{}[auth]\nacl = \"acl.toml\"\n{extra_auth}\n",
        common::config_with_devices(2),
        common::principal("writer", &["writer"]),
        common::principal("watcher", &["watcher"]),
        common::principal("peeker", &["peeker"]),
    );
    Hub::start(dir, &config)
}

fn login(id: &str) -> (String, String) {
    (id.to_owned(), common::password(id))
}

/// Collects every publish a client receives, with when it arrived.
struct Inbox {
    got: Arc<Mutex<Vec<(String, Instant)>>>,
}

impl Inbox {
    /// Subscribes `client_id` (logged in) to `filter` at `qos` and records what arrives.
    async fn open(hub: &Hub, client_id: &str, filter: &str, qos: QoS) -> anyhow::Result<Inbox> {
        let (client, mut eventloop) = hub.device(client_id);
        client.subscribe(filter, qos).await?;
        let ack = until_suback(&mut eventloop).await?;
        anyhow::ensure!(
            !matches!(ack.return_codes[0], rumqttc::SubscribeReasonCode::Failure),
            "{client_id} may subscribe to {filter}"
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            let _client = client;
            while let Ok(event) = eventloop.poll().await {
                if let Event::Incoming(Incoming::Publish(p)) = event {
                    sink.lock()
                        .expect("inbox lock")
                        .push((p.topic.clone(), Instant::now()));
                }
            }
        });
        Ok(Inbox { got })
    }

    fn topics(&self) -> Vec<String> {
        self.got
            .lock()
            .expect("inbox lock")
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    fn count(&self, topic: &str) -> usize {
        self.got
            .lock()
            .expect("inbox lock")
            .iter()
            .filter(|(t, _)| t == topic)
            .count()
    }

    fn last(&self, topic: &str) -> Option<Instant> {
        self.got
            .lock()
            .expect("inbox lock")
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, at)| *at)
            .max()
    }
}

async fn connected(hub: &Hub, id: &str) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (client, mut eventloop) = hub.device(id);
    until_connack(&mut eventloop).await?;
    Ok((client, eventloop))
}

/// Publishes `topic` from `writer` every 20 ms until `stop`.
fn keep_publishing(
    client: AsyncClient,
    mut eventloop: EventLoop,
    topic: &'static str,
    stop: Arc<AtomicBool>,
) {
    tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            let _ = client.publish(topic, QoS::AtMostOnce, false, "x").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

#[test]
fn hostile_and_wrong_identities_are_refused_with_the_right_codes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let pw = common::password("writer");
    for v5 in [false, true] {
        let (bad_login, not_authorized, bad_id) = if v5 { (0x86, 0x87, 0x85) } else { (4, 5, 2) };
        // Wildcards, separators and NUL in a username: CVE-2017-7650's class.
        for user in ["bed+", "#", "+", "a/b", "nul\0"] {
            let (_, code) = Conn::connect(hub.addr, v5, "c1", Some((user, &pw)), None)?;
            assert_eq!(code, bad_login, "username {user:?} (v5 {v5})");
        }
        // ... and in a client id, for a principal whose password is right.
        for id in ["#", "+", "a/b", "x\0y"] {
            let (_, code) = Conn::connect(hub.addr, v5, id, Some(("writer", &pw)), None)?;
            assert_eq!(code, bad_id, "client id {id:?} (v5 {v5})");
        }
        let (_, code) = Conn::connect(hub.addr, v5, "c1", Some(("writer", "wrong")), None)?;
        assert_eq!(code, bad_login, "wrong password");
        let (_, code) = Conn::connect(hub.addr, v5, "c1", Some(("nobody", "pw-nobody")), None)?;
        assert_eq!(code, bad_login, "unknown principal");
        let (_, code) = Conn::connect(hub.addr, v5, "c1", None, None)?;
        assert_eq!(code, not_authorized, "no credentials, anonymous off");
        let bed = common::password("bed-001");
        let (_, code) = Conn::connect(hub.addr, v5, "bed-002", Some(("bed-001", &bed)), None)?;
        assert_eq!(code, bad_id, "a device must use its own id as client id");
        let (_, code) = Conn::connect(hub.addr, v5, "bed-001", Some(("writer", &pw)), None)?;
        assert_eq!(
            code, bad_id,
            "a device's client id is reserved for the device"
        );
        let (_, code) = Conn::connect(hub.addr, v5, "bed-001", Some(("bed-001", &bed)), None)?;
        assert_eq!(code, 0, "the device itself gets in");
    }
    hub.terminate()
}

#[test]
fn only_the_same_principal_can_take_a_client_id_over() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let (w, wp) = login("writer");
    let (mut first, code) = Conn::connect(hub.addr, false, "shared-1", Some((&w, &wp)), None)?;
    assert_eq!(code, 0);
    let (v, vp) = login("watcher");
    let (_, code) = Conn::connect(hub.addr, false, "shared-1", Some((&v, &vp)), None)?;
    assert_eq!(code, 5, "another principal may not take the session over");
    let (_, code) = Conn::connect(hub.addr, true, "shared-1", Some((&v, &vp)), None)?;
    assert_eq!(code, 0x87, "nor over MQTT 5");
    // The owner's connection was left alone.
    first.send(&raw::packet(0xc0, &[]))?;
    assert_eq!(
        first.read()?.kind(),
        13,
        "PINGRESP on the owner's connection"
    );
    // The owner may take it over.
    let (_, code) = Conn::connect(hub.addr, false, "shared-1", Some((&w, &wp)), None)?;
    assert_eq!(code, 0);
    assert!(
        first.closed_within(Duration::from_secs(5)),
        "old connection closed"
    );
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_shared_and_dollar_subscriptions_leak_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let filters = [
        "#",
        "+/x",
        "+/#",
        "$SYS/#",
        "$share/g/#",
        "secret/#",
        "public/#",
    ];
    let (v, vp) = login("watcher");
    for v5 in [false, true] {
        let fail = if v5 { 0x87 } else { 0x80 };
        let (mut conn, code) = Conn::connect(hub.addr, v5, "watcher-raw", Some((&v, &vp)), None)?;
        assert_eq!(code, 0);
        let codes = conn.subscribe(7, &filters)?;
        assert_eq!(
            codes,
            // A shared subscription is authorized on its filter, like any other.
            vec![fail, fail, fail, fail, fail, fail, 0],
            "v5 {v5}"
        );
    }
    let (p, pp) = login("peeker");
    let (mut conn, _) = Conn::connect(hub.addr, false, "peeker-raw", Some((&p, &pp)), None)?;
    assert_eq!(
        conn.subscribe(1, &["secret/#", "#", "$SYS/#"])?,
        vec![0x80, 0, 0x80]
    );
    drop(conn);

    // Live: the watcher on public/#, the peeker on # at QoS 1 (withheld deliveries must be
    // acknowledged in order, or the router would drop the peeker).
    let watcher = Inbox::open(&hub, "watcher", "public/#", QoS::AtLeastOnce).await?;
    let peeker = Inbox::open(&hub, "peeker", "#", QoS::AtLeastOnce).await?;
    let (writer, mut writer_loop) = connected(&hub, "writer").await?;
    tokio::spawn(async move { while writer_loop.poll().await.is_ok() {} });
    for i in 0..20 {
        writer
            .publish("secret/a", QoS::AtLeastOnce, false, format!("s{i}"))
            .await?;
        writer
            .publish("public/a", QoS::AtLeastOnce, false, format!("p{i}"))
            .await?;
        writer
            .publish("secret/b/c", QoS::ExactlyOnce, false, format!("s{i}"))
            .await?;
        writer
            .publish("public/b", QoS::ExactlyOnce, false, format!("p{i}"))
            .await?;
    }
    common::eventually(Duration::from_secs(20), || {
        Ok((peeker.count("public/a") == 20
            && peeker.count("public/b") == 20
            && watcher.count("public/b") == 20)
            .then_some(()))
    })?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (name, inbox) in [("watcher", &watcher), ("peeker", &peeker)] {
        let leaked: Vec<String> = inbox
            .topics()
            .into_iter()
            .filter(|t| !t.starts_with("public/"))
            .collect();
        assert!(leaked.is_empty(), "{name} received {leaked:?}");
    }
    assert_eq!(watcher.count("public/a"), 20);
    hub.terminate()
}

#[test]
fn a_will_on_a_forbidden_topic_is_refused_at_connect() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let (v, vp) = login("watcher");
    for v5 in [false, true] {
        let (_, code) = Conn::connect(hub.addr, v5, "w1", Some((&v, &vp)), Some("public/will"))?;
        assert_eq!(code, if v5 { 0x87 } else { 5 }, "v5 {v5}");
    }
    let (w, wp) = login("writer");
    let (_, code) = Conn::connect(hub.addr, false, "w2", Some((&w, &wp)), Some("public/will"))?;
    assert_eq!(code, 0, "a will the writer may publish is accepted");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_acl_change_no_will_and_no_retained_message_leaks() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    // A retained message and a will, both allowed now.
    let (writer, mut writer_loop) = connected(&hub, "writer").await?;
    writer
        .publish("public/r", QoS::AtLeastOnce, true, "kept")
        .await?;
    loop {
        if let Event::Incoming(Incoming::PubAck(_)) = writer_loop.poll().await? {
            break;
        }
    }
    let (w, wp) = login("writer");
    let (dying, code) = Conn::connect(
        hub.addr,
        false,
        "dying",
        Some((&w, &wp)),
        Some("public/will"),
    )?;
    assert_eq!(code, 0);
    let before = Inbox::open(&hub, "watcher", "public/#", QoS::AtLeastOnce).await?;
    common::eventually(Duration::from_secs(10), || {
        Ok((before.count("public/r") == 1).then_some(()))
    })?;

    // The operator forbids both; the file is reloaded on change.
    let deny = "[[rule]]\neffect = \"deny\"\nprincipal = \"watcher\"\naction = \"subscribe\"\ntopic = \"public/r\"\n\n[[rule]]\neffect = \"deny\"\nprincipal = \"writer\"\naction = \"publish\"\ntopic = \"public/will\"\n";
    write_rules(dir.path(), deny, RULES)?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let peeker = Inbox::open(&hub, "peeker", "public/#", QoS::AtLeastOnce).await?;
    let after = Inbox::open(&hub, "watcher", "public/#", QoS::AtLeastOnce).await?;
    drop(dying); // dropped without DISCONNECT: the will would be due
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        after.count("public/r"),
        0,
        "retained message withheld after the change"
    );
    assert_eq!(
        peeker.count("public/r"),
        1,
        "still delivered where the rules allow it"
    );
    assert_eq!(
        peeker.count("public/will"),
        0,
        "will not published after the change"
    );
    assert_eq!(after.count("public/will"), 0);
    hub.terminate()
}

#[test]
fn a_topic_alias_never_stands_for_an_unchecked_topic() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    // Topic alias (property 0x23) 1, defined and then used with an empty topic.
    let alias = [0x23, 0, 1];
    let ack = |conn: &mut Conn| -> anyhow::Result<u8> {
        let ack = conn.read_kind(4)?;
        Ok(ack.body.get(2).copied().unwrap_or(0))
    };
    let (w, wp) = login("writer");
    let (mut writer, _) = Conn::connect(hub.addr, true, "aliaser", Some((&w, &wp)), None)?;
    writer.send(&raw::publish_qos1(true, "public/a", 1, &alias, b"x"))?;
    assert_eq!(ack(&mut writer)?, 0, "allowed, alias defined");
    writer.send(&raw::publish_qos1(true, "", 2, &alias, b"y"))?;
    assert_eq!(
        ack(&mut writer)?,
        0,
        "the alias stands for public/a, which is allowed"
    );
    // The same alias, for a client that may not publish there: refused both ways, because
    // the ACL sees the topic the alias stands for.
    let (v, vp) = login("watcher");
    let (mut watcher, _) = Conn::connect(hub.addr, true, "aliaser2", Some((&v, &vp)), None)?;
    watcher.send(&raw::publish_qos1(true, "public/a", 1, &alias, b"x"))?;
    assert_eq!(ack(&mut watcher)?, 0x87);
    watcher.send(&raw::publish_qos1(true, "", 2, &alias, b"y"))?;
    assert_eq!(ack(&mut watcher)?, 0x87, "checked as public/a");
    hub.terminate()
}

#[test]
fn denied_publishes_get_0x87_in_v5_and_close_a_v311_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let (v, vp) = login("watcher");
    let (mut conn, _) = Conn::connect(hub.addr, true, "p5", Some((&v, &vp)), None)?;
    conn.send(&raw::publish_qos1(true, "public/a", 9, &[], b"x"))?;
    let ack = conn.read_kind(4)?;
    assert_eq!(&ack.body[..3], &[0, 9, 0x87], "PUBACK 0x87 not authorized");
    // A device publishing another device's telemetry is refused the same way.
    let bed = common::password("bed-001");
    let (mut dev, _) = Conn::connect(hub.addr, true, "bed-001", Some(("bed-001", &bed)), None)?;
    dev.send(&raw::publish_qos1(
        true,
        "devices/bed-002/telemetry",
        3,
        &[],
        b"{}",
    ))?;
    assert_eq!(&dev.read_kind(4)?.body[..3], &[0, 3, 0x87]);

    let (mut conn, _) = Conn::connect(hub.addr, false, "p4", Some((&v, &vp)), None)?;
    conn.send(&raw::publish_qos1(false, "public/a", 9, &[], b"x"))?;
    assert!(
        conn.closed_within(Duration::from_secs(5)),
        "3.1.1 has no negative PUBACK: the connection is closed"
    );
    hub.terminate()
}

#[test]
fn a_deny_rule_on_test_nosubscribe_fails_subscribe_in_both_versions() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start_with(dir.path(), &common::interop_config())?;
    for (v5, fail) in [(false, 0x80), (true, 0x87)] {
        let (mut conn, code) = Conn::connect(hub.addr, v5, "interop", None, None)?;
        assert_eq!(code, 0, "anonymous clients may connect");
        assert_eq!(
            conn.subscribe(1, &["test/nosubscribe"])?,
            vec![fail],
            "v5 {v5}"
        );
        assert_eq!(
            conn.subscribe(2, &["test/a", "test/nosubscribe", "test/#"])?,
            vec![0, fail, 0],
            "denied filters keep their place among allowed ones (v5 {v5})"
        );
    }
    hub.terminate()
}

/// Measures how long deliveries go on after the rules stop allowing them.
async fn stop_delay(
    hub: &Hub,
    dir: &Path,
    trigger: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<Duration> {
    let peeker = Inbox::open(hub, "peeker", "#", QoS::AtMostOnce).await?;
    let (writer, writer_loop) = connected(hub, "writer").await?;
    let stop = Arc::new(AtomicBool::new(false));
    keep_publishing(writer, writer_loop, "public/live", stop.clone());
    common::eventually(Duration::from_secs(10), || {
        Ok((peeker.count("public/live") > 10).then_some(()))
    })?;

    // A broken file is refused and the rules in force stay: deliveries go on.
    std::fs::write(
        dir.join("acl.toml"),
        "[[rule]]\neffect = \"allow\"\ntopic = \"a/#/b\"\n",
    )?;
    let count = peeker.count("public/live");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        peeker.count("public/live") > count + 20,
        "deliveries go on under the old rules after a broken file"
    );

    let deny = "[[rule]]\neffect = \"deny\"\nrole = \"peeker\"\naction = \"subscribe\"\ntopic = \"public/#\"\n";
    write_rules(dir, deny, RULES)?;
    let changed = Instant::now();
    trigger()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let last = peeker
        .last("public/live")
        .expect("deliveries before the change");
    Ok(last.saturating_duration_since(changed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_change_under_a_live_wildcard_subscription_stops_deliveries_within_a_second(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let delay = stop_delay(&hub, dir.path(), || Ok(())).await?;
    println!(
        "deliveries stopped {} ms after the file changed",
        delay.as_millis()
    );
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    hub.terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_rules_at_once() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // File watching practically off: only SIGHUP can make the change take force in time.
    let hub = start(dir.path(), "acl_reload_ms = 600000")?;
    let delay = stop_delay(&hub, dir.path(), || hub.signal("HUP")).await?;
    println!("deliveries stopped {} ms after SIGHUP", delay.as_millis());
    assert!(delay < Duration::from_secs(1), "took {delay:?}");
    hub.terminate()
}

#[test]
fn a_persistent_session_left_by_one_principal_is_not_resumed_by_another() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let (p, pp) = login("peeker");
    // Peeker leaves a persistent session with a subscription.
    let mut conn = Conn::open(hub.addr, false)?;
    let mut connect = raw::connect(false, "keep-1", Some((&p, &pp)), None);
    connect[9] &= !0x02; // clean session off
    conn.send(&connect)?;
    assert_eq!(conn.read_kind(2)?.body, vec![0, 0]);
    assert_eq!(conn.subscribe(1, &["public/#"])?, vec![0]);
    drop(conn);
    std::thread::sleep(Duration::from_millis(300));
    // Another principal with the same client id and clean session off gets no session.
    let (w, wp) = login("writer");
    let mut other = Conn::open(hub.addr, false)?;
    let mut connect = raw::connect(false, "keep-1", Some((&w, &wp)), None);
    connect[9] &= !0x02;
    other.send(&connect)?;
    assert_eq!(
        other.read_kind(2)?.body,
        vec![0, 0],
        "session present 0 for another principal"
    );
    drop(other);
    std::thread::sleep(Duration::from_millis(300));
    // The owner's session is still there.
    let mut again = Conn::open(hub.addr, false)?;
    let mut connect = raw::connect(false, "keep-1", Some((&p, &pp)), None);
    connect[9] &= !0x02;
    again.send(&connect)?;
    assert_eq!(
        again.read_kind(2)?.body,
        vec![1, 0],
        "session present 1 for its owner"
    );
    hub.terminate()
}

#[test]
fn a_will_on_a_telemetry_topic_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = start(dir.path(), "")?;
    let bed = common::password("bed-001");
    let (_, code) = Conn::connect(
        hub.addr,
        true,
        "bed-001",
        Some(("bed-001", &bed)),
        Some("devices/bed-001/telemetry"),
    )?;
    assert_eq!(code, 0x90, "topic name invalid");
    hub.terminate()
}
