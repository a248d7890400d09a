//! A client's MQTT bytes, read the way kenko reads them: packet by packet through the codec
//! of the connection's protocol level (rumqttd's decoders behind kenko's own checks), each
//! packet then looked at as the handshake and the session look at it.
//!
//! Besides "no panic, bounded memory", three things are checked of every packet the codec
//! accepts: it keeps the codec's promises (topics and filters as MQTT allows them, no
//! Subscription Identifier in a PUBLISH); written back in the same version it reads back the
//! same, so the codec's own property checks accept what they accepted once; and a publish the
//! router would forward reads back from its encoding for a 3.1.1 and for an MQTT 5
//! subscriber as it was sent.

use std::sync::OnceLock;

use bytes::BytesMut;
use kenko_broker::acl::{Acl, Request};
use kenko_broker::fuzzing::{self as broker, Codec, Packet};

use crate::principals;

/// kenko's default `mqtt.max_packet_size`.
pub const MAX_PACKET_SIZE: usize = 256 * 1024;

/// The built-in rules, parsed once.
fn acl() -> &'static Acl {
    static ACL: OnceLock<Acl> = OnceLock::new();
    ACL.get_or_init(|| {
        Acl::new(kenko_config::acl::default_rules().expect("the built-in rules parse"))
    })
}

/// A connection's whole input as the listener reads it: a CONNECT sniffed for the protocol
/// level, then packets until the bytes run out or one is refused.
pub fn connection(bytes: &[u8]) {
    let Some(level) = broker::sniff(bytes, MAX_PACKET_SIZE) else {
        return;
    };
    packets(level == 5, bytes, true);
}

/// Packets of a connection whose CONNECT said MQTT 5 (`v5`) or 3.1.1; `connect_first`: the
/// first one must be a CONNECT, as in the handshake.
pub fn packets(v5: bool, bytes: &[u8], connect_first: bool) {
    let codec = Codec::new(v5, MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(bytes);
    let mut first = connect_first;
    // The session ends the connection at the first packet the codec refuses.
    while let Ok(Some(packet)) = codec.read(&mut buf) {
        if std::mem::take(&mut first) && !matches!(packet, Packet::Connect(..)) {
            return;
        }
        promises(&packet);
        reads_back(&packet, v5);
        inspect(v5, packet);
    }
}

/// What `Codec::read` promises of a packet it returns.
fn promises(packet: &Packet) {
    match packet {
        Packet::Publish(publish, props) => {
            let topic = std::str::from_utf8(&publish.topic).expect("a topic name is UTF-8");
            assert!(!topic.contains('\0'), "a topic name with NUL: {topic:?}");
            let alias = props.as_ref().and_then(|p| p.topic_alias);
            assert!(!topic.is_empty() || alias.is_some(), "an empty topic name");
            assert!(
                props
                    .as_ref()
                    .is_none_or(|p| p.subscription_identifiers.is_empty()),
                "a client's PUBLISH with a Subscription Identifier"
            );
        }
        Packet::Subscribe(subscribe, _) => {
            assert!(!subscribe.filters.is_empty(), "a SUBSCRIBE without filters");
            for f in &subscribe.filters {
                assert_eq!(broker::check_topic_filter(&f.path), Ok(()), "{:?}", f.path);
            }
        }
        Packet::Unsubscribe(unsubscribe, _) => {
            assert!(
                !unsubscribe.filters.is_empty(),
                "an UNSUBSCRIBE without filters"
            );
            for f in &unsubscribe.filters {
                assert_eq!(broker::check_topic_filter(f), Ok(()), "{f:?}");
            }
        }
        _ => {}
    }
}

/// A packet written by rumqttd's encoder holds each property once and nothing the decoder
/// skipped; the codec must read it back, and the same.
fn reads_back(packet: &Packet, v5: bool) {
    let codec = Codec::new(v5, 2 * MAX_PACKET_SIZE);
    let mut out = BytesMut::new();
    if codec.write(packet.clone(), &mut out).is_err() {
        return; // rumqttd cannot encode it; kenko never writes a client's packet but a publish
    }
    match codec.read(&mut out) {
        Ok(Some(back)) => assert_eq!(
            &normalized(back),
            &normalized(packet.clone()),
            "MQTT {}: a packet reads back differently from its encoding",
            level(v5)
        ),
        other => panic!(
            "MQTT {}: the codec accepted {packet:?} but refuses its encoding: {other:?}",
            level(v5)
        ),
    }
    assert!(out.is_empty(), "the encoding holds more than one packet");
}

/// rumqttd's decoders give no properties rather than empty ones, but the session empties a
/// publish's properties when it takes the topic alias out; they are written as none.
fn normalized(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, props) => {
            Packet::Publish(p, props.filter(|props| *props != Default::default()))
        }
        other => other,
    }
}

/// What the handshake and the session look at in a packet, as they look at it.
fn inspect(v5: bool, packet: Packet) {
    match packet {
        Packet::Connect(connect, _, will, _, login) => {
            let _ = kenko_config::check_client_id(&connect.client_id);
            if let Some(login) = &login {
                let _ = kenko_config::check_identifier(&login.username);
            }
            if let Some(will) = &will {
                if let Ok(topic) = broker::check_topic_name(&will.topic) {
                    let _ = broker::telemetry_device(topic);
                }
            }
        }
        Packet::Publish(publish, mut props) => {
            let (qos, _pkid) = broker::qos_and_pkid(&publish);
            assert!(qos <= 2, "a decoded publish has QoS {qos}");
            // The session resolves a topic alias and takes it out before anything else.
            if let Some(p) = props.as_mut() {
                p.topic_alias = None;
            }
            let Ok(topic) = broker::check_topic_name(&publish.topic) else {
                return;
            };
            if topic.starts_with('$') || broker::telemetry_device(topic).is_some() {
                return; // refused, or handed to the ingest pipeline: never forwarded
            }
            forward(Packet::Publish(publish, props), v5);
        }
        Packet::Subscribe(subscribe, _) => {
            let acl = acl();
            for filter in &subscribe.filters {
                if filter.path.starts_with("$share/") {
                    continue;
                }
                let request = Request::Subscribe {
                    filter: &filter.path,
                    qos: filter.qos as u8,
                };
                for w in principals() {
                    let _ = acl.decide(&w.principal(), &request);
                }
            }
        }
        _ => {}
    }
}

/// A publish the router forwards reaches subscribers of both levels: kenko encodes it with
/// the subscriber's codec (dropping properties for 3.1.1). What a subscriber reads back must
/// be what the publisher sent.
fn forward(packet: Packet, from_v5: bool) {
    for to_v5 in [false, true] {
        let codec = Codec::new(to_v5, 2 * MAX_PACKET_SIZE);
        let mut out = BytesMut::new();
        if codec.write(packet.clone(), &mut out).is_err() {
            continue; // the session logs it and drops the delivery
        }
        let expected = match (&packet, to_v5) {
            (Packet::Publish(p, _), false) => Packet::Publish(p.clone(), None),
            _ => normalized(packet.clone()),
        };
        match codec.read(&mut out) {
            Ok(Some(back)) => assert_eq!(
                normalized(back),
                expected,
                "a publish from an MQTT {} client reads back differently from its MQTT {} encoding",
                level(from_v5),
                level(to_v5)
            ),
            other => panic!(
                "a publish from an MQTT {} client does not read back from its MQTT {} encoding: {other:?}",
                level(from_v5),
                level(to_v5)
            ),
        }
        assert!(out.is_empty(), "the encoding holds more than one packet");
    }
}

fn level(v5: bool) -> &'static str {
    if v5 {
        "5"
    } else {
        "3.1.1"
    }
}
