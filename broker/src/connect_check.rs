//! What a CONNECT packet alone decides: whether it is refused, with which CONNACK reason code
//! and why. Pure (no I/O, no shared state), so that any decoded CONNECT can be fuzzed through
//! it; what needs the hub (the login, the device registry, the ACL, the sessions) is decided
//! by the handshake's later steps.

use rumqttd::protocol::{ConnectProperties, ConnectReturnCode, LastWill};

use crate::packet::{check_topic_name, telemetry_device};

/// A CONNECT refused, with the MQTT 5 reason code (the handshake maps it to the 3.1.1 return
/// code with [`v311_code`]) and the reason string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: ConnectReturnCode,
    pub(crate) why: String,
}

impl Refusal {
    fn new(code: ConnectReturnCode, why: impl Into<String>) -> Refusal {
        Refusal {
            code,
            why: why.into(),
        }
    }
}

/// The refusal a decoded CONNECT earns by itself, if any: `props` are its MQTT 5 properties
/// (none in 3.1.1), `clean` its Clean Session / Clean Start flag.
pub(crate) fn connect_refusal(
    client_id: &str,
    clean: bool,
    props: Option<&ConnectProperties>,
    will: Option<&LastWill>,
) -> Option<Refusal> {
    props
        .and_then(property_refusal)
        .or_else(|| client_id_refusal(client_id, clean))
        .or_else(|| will.and_then(will_refusal))
}

/// MQTT 5 CONNECT properties kenko cannot accept.
fn property_refusal(props: &ConnectProperties) -> Option<Refusal> {
    let protocol_error = |why: &str| Some(Refusal::new(ConnectReturnCode::ProtocolError, why));
    // MQTT-4.12.0-1: enhanced authentication (AUTH) is not offered, so a CONNECT that asks
    // for a method gets 0x8C and the connection is closed.
    if let Some(method) = &props.authentication_method {
        let why = format!(
            "authentication method {method:?} is not supported; log in with a user name and password or a client certificate"
        );
        return Some(Refusal::new(
            ConnectReturnCode::BadAuthenticationMethod,
            why,
        ));
    }
    if props.receive_maximum == Some(0) {
        return protocol_error("Receive Maximum 0 is a protocol error (3.1.2.11.3)");
    }
    if props.max_packet_size == Some(0) {
        return protocol_error("Maximum Packet Size 0 is a protocol error (3.1.2.11.4)");
    }
    if props.authentication_data.is_some() {
        return protocol_error(
            "Authentication Data without an Authentication Method is a protocol error (3.1.2.11.10)",
        );
    }
    if props.request_response_info.is_some_and(|v| v > 1) {
        return protocol_error("Request Response Information must be 0 or 1 (3.1.2.11.6)");
    }
    if props.request_problem_info.is_some_and(|v| v > 1) {
        return protocol_error("Request Problem Information must be 0 or 1 (3.1.2.11.7)");
    }
    None
}

/// The shape of the client id (MQTT-3.1.3-8, MQTT-3.1.3-9). Whose it may be (a device's
/// id is its own) is for the handshake to decide once it knows who connects.
fn client_id_refusal(client_id: &str, clean: bool) -> Option<Refusal> {
    let invalid = ConnectReturnCode::ClientIdentifierNotValid;
    if client_id.is_empty() {
        // An empty id is given one by the hub, but a session that outlives the connection
        // could never be found again under it.
        return (!clean).then(|| Refusal::new(invalid, "a persistent session needs a client id"));
    }
    kenko_config::check_client_id(client_id)
        .err()
        .map(|why| Refusal::new(invalid, format!("client id {why}")))
}

/// Why a will cannot be accepted, if it cannot: 0x90 Topic Name invalid (3.1.1: 0x05).
fn will_refusal(will: &LastWill) -> Option<Refusal> {
    let why = match check_topic_name(&will.topic) {
        Err(why) => format!("will {why}"),
        Ok(topic) if topic.starts_with('$') => "a will may not be published on a $ topic".into(),
        // Telemetry goes to the stream processor, which a will never reaches.
        Ok(topic) if telemetry_device(topic).is_some() => {
            "a will may not be published on a telemetry topic".into()
        }
        Ok(_) => return None,
    };
    Some(Refusal::new(ConnectReturnCode::TopicNameInvalid, why))
}

/// The MQTT 3.1.1 return code (3.2.2.3) nearest to an MQTT 5 reason code.
pub(crate) fn v311_code(code: ConnectReturnCode) -> ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success
        | C::RefusedProtocolVersion
        | C::ClientIdentifierNotValid
        | C::ServiceUnavailable
        | C::BadUserNamePassword
        | C::NotAuthorized => code,
        C::UnsupportedProtocolVersion => C::RefusedProtocolVersion,
        C::BadAuthenticationMethod => C::BadUserNamePassword,
        C::Banned | C::TopicNameInvalid | C::ConnectionRateExceeded => C::NotAuthorized,
        _ => C::ServiceUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttd::protocol::QoS;
    use ConnectReturnCode as C;

    fn will(topic: &str) -> LastWill {
        LastWill {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            message: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }
    }

    fn code(client_id: &str, clean: bool, props: Option<&ConnectProperties>) -> Option<C> {
        connect_refusal(client_id, clean, props, None).map(|r| r.code)
    }

    #[test]
    fn client_ids_with_spaces_pass_wildcards_separators_and_controls_do_not() {
        for ok in ["clean retained", "app-7", "$x", "kenko-hub-2"] {
            assert_eq!(code(ok, true, None), None, "{ok:?}");
        }
        assert_eq!(code(&"c".repeat(65_535), false, None), None);
        for bad in ["a+b", "a#", "a/b", "a\0b", "a\u{1f}b", "a\nb"] {
            let refusal = connect_refusal(bad, true, None, None).expect(bad);
            assert_eq!(refusal.code, C::ClientIdentifierNotValid, "{bad:?}");
            assert!(refusal.why.starts_with("client id contains"), "{refusal:?}");
        }
        // Empty: given an id with a clean session, refused with one that would outlive it.
        assert_eq!(code("", true, None), None);
        assert_eq!(code("", false, None), Some(C::ClientIdentifierNotValid));
    }

    #[test]
    fn properties_a_client_may_not_send_are_protocol_errors() {
        let with = |f: fn(&mut ConnectProperties)| {
            let mut props = ConnectProperties {
                session_expiry_interval: None,
                receive_maximum: None,
                max_packet_size: None,
                topic_alias_max: None,
                request_response_info: None,
                request_problem_info: None,
                user_properties: Vec::new(),
                authentication_method: None,
                authentication_data: None,
            };
            f(&mut props);
            code("c", true, Some(&props))
        };
        assert_eq!(with(|_| {}), None);
        assert_eq!(with(|p| p.receive_maximum = Some(1)), None);
        assert_eq!(with(|p| p.max_packet_size = Some(1)), None);
        assert_eq!(with(|p| p.request_problem_info = Some(0)), None);
        assert_eq!(with(|p| p.request_response_info = Some(1)), None);
        for bad in [
            (|p: &mut ConnectProperties| p.receive_maximum = Some(0)) as fn(&mut _),
            |p| p.max_packet_size = Some(0),
            |p| p.request_problem_info = Some(2),
            |p| p.request_response_info = Some(255),
            |p| p.authentication_data = Some(Bytes::from_static(b"x")),
        ] {
            assert_eq!(with(bad), Some(C::ProtocolError));
        }
        let method = with(|p| {
            p.authentication_method = Some("SCRAM-SHA-1".into());
            p.receive_maximum = Some(0);
        });
        assert_eq!(method, Some(C::BadAuthenticationMethod), "asked first");
    }

    #[test]
    fn wills_on_invalid_dollar_or_telemetry_topics_are_refused() {
        let refused = |topic: &str| {
            connect_refusal("c", true, None, Some(&will(topic))).map(|r| (r.code, r.why))
        };
        assert_eq!(refused("status/app-7"), None);
        for (topic, says) in [
            ("a/+", "will "),
            ("", "will "),
            ("$SYS/x", "$ topic"),
            ("devices/bed-001/telemetry", "telemetry topic"),
        ] {
            let (code, why) = refused(topic).expect(topic);
            assert_eq!(code, C::TopicNameInvalid, "{topic}");
            assert!(why.contains(says), "{topic}: {why}");
        }
        // The client id is looked at before the will.
        let both = connect_refusal("a/b", true, None, Some(&will("a/+"))).map(|r| r.code);
        assert_eq!(both, Some(C::ClientIdentifierNotValid));
    }

    #[test]
    fn every_refusal_has_a_3_1_1_return_code() {
        for code in [
            C::BadAuthenticationMethod,
            C::ProtocolError,
            C::ClientIdentifierNotValid,
            C::TopicNameInvalid,
        ] {
            assert!(matches!(
                v311_code(code),
                C::ClientIdentifierNotValid
                    | C::BadUserNamePassword
                    | C::NotAuthorized
                    | C::ServiceUnavailable
            ));
        }
        assert_eq!(v311_code(C::TopicNameInvalid), C::NotAuthorized);
        assert_eq!(
            v311_code(C::ClientIdentifierNotValid),
            C::ClientIdentifierNotValid
        );
    }
}
