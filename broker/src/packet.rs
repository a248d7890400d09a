//! Small facts about packets that rumqttd's types keep to themselves.
//!
//! rumqttd's `Publish` keeps its QoS and packet id crate-private; its MQTT-independent
//! serialization (`serialize` / `deserialize`) is public and carries both, so kenko reads and
//! sets them through it, on a copy without topic or payload.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttd::protocol::{Publish, QoS};

/// QoS and packet id of a publish.
pub(crate) fn qos_and_pkid(publish: &Publish) -> (QoS, u16) {
    let mut head = publish.clone();
    head.topic = Bytes::new();
    head.payload = Bytes::new();
    let bytes = head.serialize();
    let qos = match (bytes[0] >> 1) & 0b11 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    (qos, u16::from_be_bytes([bytes[1], bytes[2]]))
}

/// A publish with the given QoS and packet id.
pub(crate) fn publish(topic: Bytes, payload: Bytes, qos: QoS, pkid: u16, retain: bool) -> Publish {
    publish_again(topic, payload, qos, pkid, retain, false)
}

/// A publish with the given QoS and packet id, marked DUP if `dup` (a delivery sent again).
pub(crate) fn publish_again(
    topic: Bytes,
    payload: Bytes,
    qos: QoS,
    pkid: u16,
    retain: bool,
    dup: bool,
) -> Publish {
    let mut head = BytesMut::with_capacity(5);
    head.put_u8(0b0011_0000 | u8::from(dup) << 3 | (qos as u8) << 1 | u8::from(retain));
    head.put_u16(pkid);
    head.put_u16(0);
    let mut publish = Publish::deserialize(head.freeze());
    publish.topic = topic;
    publish.payload = payload;
    publish
}

/// Why a topic name in a PUBLISH is not acceptable, if it is not.
pub(crate) fn check_topic_name(topic: &[u8]) -> Result<&str, &'static str> {
    let topic = std::str::from_utf8(topic).map_err(|_| "topic is not valid UTF-8")?;
    if topic.is_empty() {
        return Err("topic is empty");
    }
    if topic.contains(['+', '#']) {
        return Err("topic contains a wildcard; wildcards are for subscriptions only");
    }
    if topic.contains('\0') {
        return Err("topic contains a NUL character");
    }
    Ok(topic)
}

/// Why a topic filter in a SUBSCRIBE or UNSUBSCRIBE is not well formed, if it is not: it is
/// empty, holds a NUL (MQTT-1.5.4-2), has `#` anywhere but as the whole last level
/// (MQTT-4.7.1-2) or `+` sharing a level with anything else (MQTT-4.7.1-3).
pub(crate) fn check_topic_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("topic filter is empty");
    }
    if filter.contains('\0') {
        return Err("topic filter contains a NUL character");
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be a whole level and the last one of a topic filter");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level of a topic filter");
        }
    }
    Ok(())
}

/// The `{device_id}` of a telemetry topic `devices/{device_id}/telemetry`, or of
/// `devices/{device_id}/telemetry/pb` (protobuf payloads).
pub fn telemetry_device(topic: &str) -> Option<&str> {
    let rest = topic.strip_prefix("devices/")?;
    let rest = rest.strip_suffix("/pb").unwrap_or(rest);
    let device = rest.strip_suffix("/telemetry")?;
    (!device.is_empty() && !device.contains('/')).then_some(device)
}

/// MQTT 5 content type of kenko's protobuf telemetry.
pub(crate) const PROTOBUF_CONTENT_TYPE: &str = "application/x-protobuf";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qos_and_pkid_round_trip() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for pkid in [0u16, 1, 513, u16::MAX] {
                let p = publish(
                    Bytes::from_static(b"a/b"),
                    Bytes::from_static(b"x"),
                    qos,
                    pkid,
                    true,
                );
                assert_eq!(qos_and_pkid(&p), (qos, pkid));
                assert!(p.retain);
                assert_eq!(&p.topic[..], b"a/b");
                assert_eq!(&p.payload[..], b"x");
            }
        }
    }

    #[test]
    fn any_utf8_first_character_is_accepted() {
        assert_eq!(check_topic_name("é/x".as_bytes()), Ok("é/x"));
        assert_eq!(check_topic_name("健康/x".as_bytes()), Ok("健康/x"));
        assert!(check_topic_filter("é/#").is_ok());
        assert!(check_topic_filter("健康/+").is_ok());
        assert_eq!(check_topic_name("x/健康".as_bytes()), Ok("x/健康"));
        assert!(check_topic_filter("x/健康/+").is_ok());
    }

    #[test]
    fn telemetry_topics() {
        assert_eq!(telemetry_device("devices/bed-1/telemetry"), Some("bed-1"));
        assert_eq!(telemetry_device("devices//telemetry"), None);
        assert_eq!(telemetry_device("devices/a/b/telemetry"), None);
        assert_eq!(telemetry_device("devices/a/errors"), None);
        assert_eq!(telemetry_device("devices/a/telemetry/pb"), Some("a"));
        assert_eq!(telemetry_device("devices/a/pb"), None);
        assert_eq!(telemetry_device("devices/a/telemetry/pb/pb"), None);
    }

    #[test]
    fn topic_names() {
        assert!(check_topic_name(b"a/b").is_ok());
        assert!(check_topic_name(b"").is_err());
        assert!(check_topic_name(b"a/+").is_err());
        assert!(check_topic_name(b"a/#").is_err());
        assert!(check_topic_name(b"a\0b").is_err());
        assert!(check_topic_name(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn topic_filters() {
        for good in [
            "a",
            "#",
            "+",
            "a/#",
            "+/+/#",
            "a//b",
            "/",
            "$share/g/a/+",
            "a/+/b",
        ] {
            assert_eq!(check_topic_filter(good), Ok(()), "{good}");
        }
        for bad in [
            "", "a/#/b", "#/a", "a#", "a/b#", "a/#b", "a+", "a/+b", "+a/b", "a\0b", "##",
        ] {
            assert!(check_topic_filter(bad).is_err(), "{bad:?}");
        }
        let deep = format!("d{}", "/".repeat(64_999));
        assert_eq!(check_topic_filter(&deep), Ok(()));
    }
}
