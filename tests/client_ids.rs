//! Client identifiers, end to end against `kenko serve`: any UTF-8 id of 1 to 65,535 bytes,
//! spaces included, connects in MQTT 3.1.1 and 5, and fills an ACL `%c` level; ids holding
//! `+`, `#`, `/` or a control character are refused (they would turn `%c` into a wildcard or
//! more levels). Each test is named after the normative statement it checks.

mod common;

use common::raw::{self, find_prop, prop, Conn, Prop, Props};
use common::{Hub, SOON};

/// Anonymous clients may use their own subtree `clients/%c/#`, and nothing else.
const OWN_SUBTREE: &str = r#"
[[rule]]
effect = "allow"
role = "anonymous"
action = "all"
topic = "clients/%c/#"
"#;

fn own_subtree_hub() -> anyhow::Result<(tempfile::TempDir, Hub)> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("acl.toml"), OWN_SUBTREE)?;
    let config = "[auth]\nanonymous = true\nacl = \"acl.toml\"\n";
    let hub = Hub::start_without_consent(dir.path(), config)?;
    Ok((dir, hub))
}

/// A raw CONNECT with a clean session and no properties.
fn connect(v5: bool, client_id: &str) -> Vec<u8> {
    raw::connect_with(v5, client_id, true, 30, &Props::new(), None, 0)
}

/// The code of the PUBACK for packet id `pkid` (3.1.1: always 0).
fn puback_code(conn: &mut Conn, pkid: u16) -> anyhow::Result<u8> {
    let ack = conn.read_kind(4)?;
    anyhow::ensure!(ack.body[..2] == pkid.to_be_bytes(), "PUBACK for {pkid}");
    Ok(ack.body.get(2).copied().unwrap_or(0))
}

#[test]
fn mqtt_3_1_3_5_a_client_id_with_spaces_connects_and_fills_its_acl_percent_c_level(
) -> anyhow::Result<()> {
    let (_dir, hub) = own_subtree_hub()?;
    for v5 in [false, true] {
        let id = if v5 {
            "clean retained 5"
        } else {
            "clean retained"
        };
        let (mut conn, ack) = Conn::handshake(hub.addr, v5, &connect(v5, id))?;
        let (_, code, _) = ack.connack(v5);
        assert_eq!(code, 0, "{id:?} accepted");
        // Its own subtree, whose level holds the space, is allowed; another's is not.
        let own = format!("clients/{id}/#");
        let other = "clients/clean/#";
        let refused = if v5 { 0x87 } else { 0x80 };
        assert_eq!(
            conn.subscribe(1, &[&own, other])?,
            vec![0, refused],
            "{id:?}"
        );
        let topic = format!("clients/{id}/status");
        let props = Props::new();
        conn.send(&raw::publish_with(
            v5, &topic, 0, false, false, 0, &props, b"up",
        ))?;
        let delivery = conn
            .read_kind_within(3, SOON)
            .map(|p| p.publish(v5))
            .ok_or_else(|| anyhow::anyhow!("{id:?}: no delivery on {topic}"))?;
        assert_eq!(
            (delivery.topic.as_str(), &delivery.payload[..]),
            (topic.as_str(), &b"up"[..])
        );
        if v5 {
            // A publish outside its subtree is refused (0x87).
            conn.send(&raw::publish_qos1(
                true,
                "clients/clean/status",
                3,
                &[],
                b"x",
            ))?;
            assert_eq!(puback_code(&mut conn, 3)?, 0x87);
        }
    }
    hub.terminate()
}

/// Ids whose characters the `%c` placeholder could not fill a level with.
const BAD_IDS: [&str; 6] = ["a+b", "#", "a/b", "nul\0id", "tab\tid", "del\u{7f}"];

#[test]
fn mqtt_3_1_3_9_client_ids_with_wildcards_separators_or_controls_get_0x02() -> anyhow::Result<()> {
    let (_dir, hub) = own_subtree_hub()?;
    for id in BAD_IDS {
        let mut conn = Conn::open(hub.addr, false)?;
        conn.send(&connect(false, id))?;
        let answer = conn.read_to_close(SOON)?;
        assert_eq!(answer, [0x20, 2, 0, 0x02], "{id:?}: identifier rejected");
    }
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_8_client_ids_with_wildcards_separators_or_controls_get_0x85() -> anyhow::Result<()> {
    let (_dir, hub) = own_subtree_hub()?;
    for id in BAD_IDS {
        let (mut conn, ack) = Conn::handshake(hub.addr, true, &connect(true, id))?;
        let (present, code, props) = ack.connack(true);
        assert_eq!((present, code), (false, 0x85), "{id:?}");
        let Some(Prop::Str(why)) = find_prop(&props, prop::REASON_STRING) else {
            panic!("{id:?}: no reason string in {props:?}");
        };
        assert!(why.starts_with("client id contains"), "{id:?}: {why}");
        assert!(conn.read_to_close(SOON)?.is_empty(), "then closed");
    }
    hub.terminate()
}

#[test]
fn mqtt_3_1_3_5_a_client_id_of_65535_bytes_is_accepted() -> anyhow::Result<()> {
    let (_dir, hub) = own_subtree_hub()?;
    for v5 in [false, true] {
        let id = if v5 { "5" } else { "4" }.repeat(65_535);
        let (mut conn, ack) = Conn::handshake(hub.addr, v5, &connect(v5, &id))?;
        assert_eq!(ack.connack(v5).1, 0, "v5 {v5}: accepted");
        // Served (a topic holding it would be longer than MQTT allows, so %c is not tried).
        conn.ping()?;
    }
    hub.terminate()
}
