//! The handshake's first step: any bytes after a CONNECT's protocol name and level, read as
//! a CONNECT by the codec of MQTT 3.1.1 and of MQTT 5, then through the pure function that
//! decides the CONNACK refusal code. It must never panic, never answer with Success, give a
//! code 3.1.1 has (rumqttd's v4 encoder panics on any other), and let through only what the
//! later steps may take: a client id that is empty (with a clean session) or of the allowed
//! shape, a will on a valid, non-`$`, non-telemetry topic. The refusal's CONNACK must encode
//! in both versions.
#![no_main]

use bytes::BytesMut;
use kenko_broker::fuzzing::{self as broker, Codec, ConnectReturnCode, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for level in [4u8, 5] {
        kenko_fuzz::bounded(data.len(), || refusal(level, data));
    }
});

fn refusal(level: u8, rest: &[u8]) {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level];
    body.extend_from_slice(rest);
    let mut frame = vec![0x10];
    let mut len = body.len();
    loop {
        let byte = (len % 128) as u8;
        len /= 128;
        frame.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            break;
        }
    }
    frame.extend_from_slice(&body);
    let v5 = level == 5;
    let codec = Codec::new(v5, kenko_fuzz::mqtt::MAX_PACKET_SIZE);
    let mut buf = BytesMut::from(&frame[..]);
    let Ok(Some(Packet::Connect(connect, props, will, _, _))) = codec.read(&mut buf) else {
        return;
    };
    let clean = connect.clean_session;
    let Some((code, v311, why)) =
        broker::connect_refusal(&connect.client_id, clean, props.as_ref(), will.as_ref())
    else {
        accepted(&connect.client_id, clean, will.as_ref());
        return;
    };
    assert_ne!(code, ConnectReturnCode::Success, "refused with Success: {why}");
    assert!(
        matches!(
            v311,
            ConnectReturnCode::RefusedProtocolVersion
                | ConnectReturnCode::ClientIdentifierNotValid
                | ConnectReturnCode::ServiceUnavailable
                | ConnectReturnCode::BadUserNamePassword
                | ConnectReturnCode::NotAuthorized
        ),
        "{code:?} has no 3.1.1 return code: {v311:?}"
    );
    assert!(!why.is_empty(), "{code:?} without a reason");
    for (v5, code) in [(true, code), (false, v311)] {
        let props = v5.then(|| broker::ConnAckProperties {
            reason_string: Some(why.clone()),
            ..Default::default()
        });
        let ack = broker::ConnAck {
            session_present: false,
            code,
        };
        let mut out = BytesMut::new();
        Codec::new(v5, kenko_fuzz::mqtt::MAX_PACKET_SIZE)
            .write(Packet::ConnAck(ack, props), &mut out)
            .expect("a refusal's CONNACK encodes");
    }
}

/// What a CONNECT the check lets through must be.
fn accepted(client_id: &str, clean: bool, will: Option<&broker::LastWill>) {
    if client_id.is_empty() {
        assert!(clean, "an empty client id for a persistent session went through");
    } else {
        assert_eq!(
            kenko_config::check_client_id(client_id),
            Ok(()),
            "{client_id:?}"
        );
    }
    if let Some(will) = will {
        let topic = broker::check_topic_name(&will.topic).expect("a will on a valid topic");
        assert!(!topic.starts_with('$'), "a will on {topic:?}");
        assert!(broker::telemetry_device(topic).is_none(), "a will on {topic:?}");
    }
}
