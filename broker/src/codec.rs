//! Framing and the two protocol versions. "Is a whole packet buffered?" is answered here from
//! the fixed header; parsing and encoding are rumqttd's v4 (MQTT 3.1.1) and v5 codecs, with
//! the checks on what a client sends that rumqttd's decoders leave out.

use bytes::{Buf, BytesMut};
use rumqttd::protocol::{
    self, v4::V4, v5::V5, ConnAck, ConnectReturnCode, DisconnectReasonCode, Packet, Protocol,
    SubAck, UnsubAck,
};

use crate::packet::check_topic_filter;
use crate::problem_info::{with_short_reason, without_problem_info};

/// Why [`Codec::write`] wrote nothing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// rumqttd's encoder refused the packet.
    #[error("cannot encode the packet: {0}")]
    Encode(#[from] protocol::Error),
    /// Larger than the client's Maximum Packet Size even without reason string and user
    /// properties (MQTT-3.1.2-24): not sent. A delivery is then discarded as if it had been
    /// sent (MQTT-3.1.2-25), which is for the caller to do.
    #[error(
        "the packet ({size} bytes) is larger than the client's Maximum Packet Size ({max} bytes)"
    )]
    TooLarge { size: usize, max: usize },
}

/// Which protocol a connection speaks, learned from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Version {
    V311,
    V5,
}

/// What the first buffered bytes of a connection say.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniff {
    /// Not a whole packet yet.
    NeedMore,
    /// The first packet is not a CONNECT (MQTT-3.1.0-1): close without a word.
    NotConnect,
    /// A CONNECT for a protocol level kenko does not speak (3 is MQTT 3.1).
    Unsupported(u8),
    Version(Version),
    Malformed,
    TooLarge(usize),
}

/// Looks at a buffered CONNECT's protocol name and level without consuming it.
pub(crate) fn sniff(buf: &[u8], max_packet_size: usize) -> Sniff {
    let header = match protocol::v4::check(buf.iter(), max_packet_size) {
        Ok(header) => header,
        Err(protocol::Error::InsufficientBytes(_)) => return Sniff::NeedMore,
        Err(protocol::Error::PayloadSizeLimitExceeded(n)) => return Sniff::TooLarge(n),
        Err(_) => return Sniff::Malformed,
    };
    if header.byte1 >> 4 != 1 {
        return Sniff::NotConnect;
    }
    let body = &buf[header.fixed_header_len..header.frame_length()];
    let (Some(&hi), Some(&lo)) = (body.first(), body.get(1)) else {
        return Sniff::Malformed;
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let (Some(name), Some(&level)) = (body.get(2..2 + name_len), body.get(2 + name_len)) else {
        return Sniff::Malformed;
    };
    match (name, level) {
        (b"MQTT", 4) => Sniff::Version(Version::V311),
        (b"MQTT", 5) => Sniff::Version(Version::V5),
        (b"MQTT" | b"MQIsdp", level) => Sniff::Unsupported(level),
        _ => Sniff::Malformed,
    }
}

/// A connection's codec.
pub(crate) struct Codec {
    version: Version,
    max_packet_size: usize,
    /// Whether the client takes reason strings and user properties on acknowledgements
    /// (MQTT 5 Request Problem Information; 0 turns them off, MQTT-3.1.2-29).
    problem_info: bool,
    /// The largest packet the client accepts (MQTT 5 Maximum Packet Size), if it said.
    client_max_packet_size: Option<usize>,
}

impl Codec {
    pub(crate) fn new(version: Version, max_packet_size: usize) -> Codec {
        Codec {
            version,
            max_packet_size,
            problem_info: true,
            client_max_packet_size: None,
        }
    }

    /// The client's Maximum Packet Size (MQTT 5), which [`Codec::write`] keeps to.
    pub(crate) fn set_client_max_packet_size(&mut self, max: Option<usize>) {
        self.client_max_packet_size = max;
    }

    /// Whether acknowledgements may carry reason strings and user properties (the CONNECT's
    /// Request Problem Information; CONNACK and DISCONNECT keep theirs, which the spec allows).
    pub(crate) fn set_problem_info(&mut self, on: bool) {
        self.problem_info = on;
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The next whole packet in `buf`, or `None` if more bytes are needed. An error means the
    /// connection must end; [`disconnect_reason`] says with which reason code.
    pub(crate) fn read(&self, buf: &mut BytesMut) -> Result<Option<Packet>, protocol::Error> {
        // Framing is the same in both versions.
        let header = match protocol::v4::check(buf.iter(), self.max_packet_size) {
            Ok(header) => header,
            Err(protocol::Error::InsufficientBytes(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let frame = header.frame_length();
        if let Err(e) = check_flags(header.byte1, &buf[header.fixed_header_len..frame]) {
            buf.advance(frame);
            return Err(e);
        }
        if self.version == Version::V5
            && header.byte1 == 0xE0
            && frame == header.fixed_header_len + 1
        {
            // A DISCONNECT with a reason code and no property length (3.14.2.2.1 allows it):
            // rumqttd's decoder wants the property length, so it is given an empty one.
            let reason = buf[header.fixed_header_len];
            buf.advance(frame);
            let mut full = BytesMut::from(&[0xE0, 0x02, reason, 0x00][..]);
            return V5.read_mut(&mut full, self.max_packet_size).map(Some);
        }
        if self.version == Version::V5 {
            let body = &buf[header.fixed_header_len..frame];
            let checked =
                check_properties(header.byte1, body).map(|()| server_only(header.byte1 >> 4));
            match checked {
                Ok(None) => {}
                Ok(Some(packet)) => {
                    buf.advance(frame);
                    return Ok(Some(packet));
                }
                Err(e) => {
                    buf.advance(frame);
                    return Err(e);
                }
            }
        }
        let result = match self.version {
            Version::V311 => V4.read_mut(buf, self.max_packet_size),
            Version::V5 => V5.read_mut(buf, self.max_packet_size),
        };
        match result {
            Ok(packet) => check_packet(&packet).map(|()| Some(packet)),
            // The whole packet is there (checked above): a decoder running out of bytes inside
            // it means it is malformed, not that more should be awaited. (rumqttd has already
            // taken the packet off `buf`.)
            Err(protocol::Error::InsufficientBytes(_)) => Err(protocol::Error::MalformedPacket),
            Err(e) => Err(e),
        }
    }

    /// Appends the encoded packet to `out`, as the client may get it: a reason string of at
    /// most 256 bytes; without reason string and user properties if the packet would
    /// otherwise be larger than the client's Maximum Packet Size; nothing at all, and
    /// [`WriteError::TooLarge`], if it is larger even so.
    pub(crate) fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), WriteError> {
        let packet = with_short_reason(packet);
        let Some(max) = self.client_max_packet_size else {
            return Ok(self.encode(packet, out)?);
        };
        let start = out.len();
        // Only a packet that has them is copied without them, in case it is too large.
        let smaller = without_problem_info(&packet);
        self.encode(packet, out)?;
        let mut size = out.len() - start;
        if size > max {
            out.truncate(start);
            if let Some(smaller) = smaller {
                self.encode(smaller, out)?;
                size = out.len() - start;
            }
        }
        if size > max {
            out.truncate(start);
            return Err(WriteError::TooLarge { size, max });
        }
        Ok(())
    }

    fn encode(&self, packet: Packet, out: &mut BytesMut) -> Result<(), protocol::Error> {
        match (self.version, packet) {
            (Version::V311, packet) => V4.write(without_properties(packet), out)?,
            // rumqttd writes a DISCONNECT with a reason code and no properties as
            // E0 01 <code> 00: the property length it appends is not counted in the remaining
            // length (and with an empty property list it writes E0 00, losing the code).
            // The bytes are right but for the remaining length, which is set here.
            (Version::V5, Packet::Disconnect(d, None)) => {
                let start = out.len();
                V5.write(Packet::Disconnect(d, None), out)?;
                if out[start..].len() == 4 && out[start + 1] == 0x01 {
                    out[start + 1] = 0x02;
                }
                out.len() - start
            }
            (Version::V5, packet) if !self.problem_info => {
                V5.write(without_ack_properties(packet), out)?
            }
            (Version::V5, packet) => V5.write(packet, out)?,
        };
        Ok(())
    }
}

/// The fixed header's flag bits, which rumqttd's decoders do not look at: PUBREL, SUBSCRIBE
/// and UNSUBSCRIBE must have 0010, every other packet but PUBLISH 0000 (MQTT-2.2.2-1; invalid
/// flags close the connection, MQTT-2.2.2-2), and a CONNECT's reserved flag must be 0
/// (MQTT-3.1.2-3). `body` is the packet after its fixed header.
fn check_flags(byte1: u8, body: &[u8]) -> Result<(), protocol::Error> {
    let flags = byte1 & 0x0F;
    let expected = match byte1 >> 4 {
        3 => return Ok(()),
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != expected {
        return Err(protocol::Error::MalformedPacket);
    }
    if byte1 >> 4 == 1 {
        // Protocol name (length-prefixed), level, then the connect flags.
        let name_len = match body {
            [a, b, ..] => usize::from(u16::from_be_bytes([*a, *b])),
            _ => return Ok(()),
        };
        if body.get(2 + name_len + 1).is_some_and(|f| f & 0x01 != 0) {
            return Err(protocol::Error::MalformedPacket);
        }
    }
    Ok(())
}

/// Topic filters one SUBSCRIBE or UNSUBSCRIBE may carry. A packet of the largest size could
/// otherwise name tens of thousands, each a subscription (or a round trip) in the router.
pub(crate) const MAX_FILTERS: usize = 1000;

/// How kenko's checks report a SUBSCRIBE or UNSUBSCRIBE with more than [`MAX_FILTERS`]
/// filters (MQTT 5: DISCONNECT 0x97 Quota exceeded). rumqttd uses this error only when it
/// writes a packet, never when it reads one.
const TOO_MANY_FILTERS: protocol::Error = protocol::Error::PayloadTooLong;

/// How kenko's checks report an MQTT 5 Protocol Error (0x82): a packet that decodes but breaks
/// a rule, such as a property given twice. rumqttd itself uses this error only for a CONNECT
/// with another protocol name (which [`sniff`] refuses first) and a 3.1.1 DISCONNECT with a
/// body (3.1.1 has no reason codes).
const PROTOCOL_ERROR: protocol::Error = protocol::Error::InvalidProtocol;

/// The reason code of the DISCONNECT that ends a connection whose packet [`Codec::read`]
/// refused: 0x95 too large, 0x82 a protocol error, 0x81 anything else (malformed).
pub(crate) fn disconnect_reason(e: &protocol::Error) -> DisconnectReasonCode {
    match e {
        protocol::Error::PayloadSizeLimitExceeded(_) => DisconnectReasonCode::PacketTooLarge,
        protocol::Error::PayloadTooLong => DisconnectReasonCode::QuotaExceeded,
        // "A SUBSCRIBE packet with no Payload is a Protocol Error" (MQTT 5 3.8.3).
        protocol::Error::InvalidProtocol | protocol::Error::EmptySubscription => {
            DisconnectReasonCode::ProtocolError
        }
        _ => DisconnectReasonCode::MalformedPacket,
    }
}

/// The same for a refused CONNECT, which MQTT 5 answers with a CONNACK.
pub(crate) fn connack_reason(e: &protocol::Error) -> ConnectReturnCode {
    match disconnect_reason(e) {
        DisconnectReasonCode::PacketTooLarge => ConnectReturnCode::PacketTooLarge,
        DisconnectReasonCode::ProtocolError => ConnectReturnCode::ProtocolError,
        _ => ConnectReturnCode::MalformedPacket,
    }
}

/// The protocol version a CONNECT announces, read from its first bytes before the whole packet
/// is buffered (to answer one that is too large in its own version).
pub(crate) fn peek_version(buf: &[u8]) -> Option<Version> {
    let length_bytes = buf.get(1..)?.iter().take(4).position(|b| b & 0x80 == 0)? + 1;
    let body = buf.get(1 + length_bytes..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    match (body.get(2..2 + name_len)?, body.get(2 + name_len)?) {
        (b"MQTT", 4) => Some(Version::V311),
        (b"MQTT", 5) => Some(Version::V5),
        _ => None,
    }
}

/// A packet only a server sends, as the session needs to see it to refuse it (a Protocol
/// Error). rumqttd's v5 decoder has no arm for a CONNACK or UNSUBACK with a body and panics
/// (`unreachable!`), which would end the connection's task without its orderly end, so these
/// never reach it; SUBACK goes the same way so that all three get the same answer, whatever
/// their bodies. Only the kind matters; nothing is decoded.
fn server_only(kind: u8) -> Option<Packet> {
    match kind {
        2 => Some(Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
            },
            None,
        )),
        9 => Some(Packet::SubAck(
            SubAck {
                pkid: 0,
                return_codes: Vec::new(),
            },
            None,
        )),
        11 => Some(Packet::UnsubAck(
            UnsubAck {
                pkid: 0,
                reasons: Vec::new(),
            },
            None,
        )),
        _ => None,
    }
}

/// What rumqttd's decoders accept but MQTT does not, in a decoded packet: topic names that
/// are not UTF-8 or hold a NUL (MQTT-1.5.4-1, MQTT-1.5.4-2: malformed), an empty topic name
/// without a topic alias (MQTT-4.7.3-1; MQTT 5 3.3.2.1: a protocol error), and topic filters
/// that are not well formed (MQTT-4.7.1-2, MQTT-4.7.1-3). Wildcards in a topic name are left
/// to the session, which answers them with 0x90 Topic Name invalid.
fn check_packet(packet: &Packet) -> Result<(), protocol::Error> {
    match packet {
        Packet::Publish(publish, props) => {
            let topic =
                std::str::from_utf8(&publish.topic).map_err(|_| protocol::Error::TopicNotUtf8)?;
            if topic.contains('\0') {
                return Err(protocol::Error::MalformedPacket);
            }
            let alias = props.as_ref().and_then(|p| p.topic_alias).is_some();
            if topic.is_empty() && !alias {
                return Err(PROTOCOL_ERROR);
            }
            Ok(())
        }
        Packet::Subscribe(subscribe, _) if subscribe.filters.len() > MAX_FILTERS => {
            Err(TOO_MANY_FILTERS)
        }
        Packet::Subscribe(subscribe, _) => subscribe
            .filters
            .iter()
            .try_for_each(|f| check_topic_filter(&f.path))
            .map_err(|_| protocol::Error::MalformedPacket),
        // MQTT-3.10.3-2; MQTT 5 3.10.3: a protocol error (rumqttd's decoders let it through).
        Packet::Unsubscribe(unsubscribe, _) if unsubscribe.filters.is_empty() => {
            Err(protocol::Error::EmptySubscription)
        }
        Packet::Unsubscribe(unsubscribe, _) if unsubscribe.filters.len() > MAX_FILTERS => {
            Err(TOO_MANY_FILTERS)
        }
        Packet::Unsubscribe(unsubscribe, _) => unsubscribe
            .filters
            .iter()
            .try_for_each(|f| check_topic_filter(f))
            .map_err(|_| protocol::Error::MalformedPacket),
        _ => Ok(()),
    }
}

/// MQTT 5 properties that appear twice, which rumqttd's decoders accept (keeping the last):
/// "It is a Protocol Error to include [a property] more than once", for every property but
/// User Property. A client's PUBLISH may not carry a Subscription Identifier at all
/// (MQTT-3.3.4-6). `body` is the packet after its fixed header.
fn check_properties(byte1: u8, body: &[u8]) -> Result<(), protocol::Error> {
    let kind = byte1 >> 4;
    let short = protocol::Error::MalformedPacket;
    let string_end = |at: usize| -> Result<usize, protocol::Error> {
        let len = body.get(at..at + 2).ok_or(short)?;
        Ok(at + 2 + usize::from(u16::from_be_bytes([len[0], len[1]])))
    };
    match kind {
        // CONNECT: protocol name, level, flags, keep-alive, properties; then the client id
        // and, with a will, the will's properties.
        1 => {
            let at = string_end(0)?;
            let flags = *body.get(at + 1).ok_or(short)?;
            let after = property_block(body, at + 4, kind)?;
            if flags & 0x04 != 0 {
                property_block(body, string_end(after)?, kind)?;
            }
            Ok(())
        }
        // PUBLISH: topic, packet id above QoS 0, properties.
        3 => {
            let qos = (byte1 >> 1) & 0b11;
            let at = string_end(0)? + if qos > 0 { 2 } else { 0 };
            property_block(body, at, kind).map(|_| ())
        }
        // PUBACK, PUBREC, PUBREL, PUBCOMP: packet id, then reason code and properties if any.
        4..=7 if body.len() > 3 => property_block(body, 3, kind).map(|_| ()),
        // SUBSCRIBE, UNSUBSCRIBE: packet id, properties.
        8 | 10 => property_block(body, 2, kind).map(|_| ()),
        // DISCONNECT: reason code, then properties if any.
        14 if body.len() > 1 => property_block(body, 1, kind).map(|_| ()),
        _ => Ok(()),
    }
}

/// Checks the property block at `at` (its length first); returns where it ends.
fn property_block(body: &[u8], at: usize, kind: u8) -> Result<usize, protocol::Error> {
    let short = protocol::Error::MalformedPacket;
    let (len, used) = varint(body.get(at..).ok_or(short)?).ok_or(short)?;
    let start = at + used;
    let end = start.checked_add(len).ok_or(short)?;
    let mut props = body.get(start..end).ok_or(short)?;
    let mut seen = 0u64;
    while let Some((&id, rest)) = props.split_first() {
        let size = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => 1,
            0x13 | 0x21 | 0x22 | 0x23 => 2,
            0x02 | 0x11 | 0x18 | 0x27 => 4,
            0x0b => varint(rest).ok_or(short)?.1,
            0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1a | 0x1c | 0x1f => {
                let len = rest.get(..2).ok_or(short)?;
                2 + usize::from(u16::from_be_bytes([len[0], len[1]]))
            }
            0x26 => {
                let key = rest.get(..2).ok_or(short)?;
                let key = 2 + usize::from(u16::from_be_bytes([key[0], key[1]]));
                let value = rest.get(key..key + 2).ok_or(short)?;
                key + 2 + usize::from(u16::from_be_bytes([value[0], value[1]]))
            }
            other => return Err(protocol::Error::InvalidPropertyType(other)),
        };
        if id != 0x26 && seen & (1 << id) != 0 {
            return Err(PROTOCOL_ERROR);
        }
        if kind == 3 && id == 0x0b {
            return Err(PROTOCOL_ERROR);
        }
        seen |= 1 << id;
        props = rest.get(size..).ok_or(short)?;
    }
    Ok(end)
}

/// A Variable Byte Integer (at most four bytes) and the bytes it takes.
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in bytes.iter().take(4).enumerate() {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// MQTT 3.1.1 has no properties; rumqttd's v4 encoder refuses packets that carry any (a v5
/// publisher's message forwarded to a 3.1.1 subscriber does), so they are dropped here.
fn without_properties(packet: Packet) -> Packet {
    match without_ack_properties(packet) {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other => other,
    }
}

/// An acknowledgement without its reason string and user properties (all its properties).
fn without_ack_properties(packet: Packet) -> Packet {
    match packet {
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{
        ConnAckProperties, Disconnect, PubAck, PubAckProperties, PubAckReason,
    };

    fn connect(name: &[u8], level: u8) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0x02, 0, 60, 0, 1, b'c']);
        let mut frame = vec![0x10, body.len() as u8];
        frame.extend(body);
        frame
    }

    #[test]
    fn sniffs_versions() {
        assert_eq!(
            sniff(&connect(b"MQTT", 4), 1024),
            Sniff::Version(Version::V311)
        );
        assert_eq!(
            sniff(&connect(b"MQTT", 5), 1024),
            Sniff::Version(Version::V5)
        );
        assert_eq!(sniff(&connect(b"MQIsdp", 3), 1024), Sniff::Unsupported(3));
        assert_eq!(sniff(&connect(b"XXXX", 4), 1024), Sniff::Malformed);
        let full = connect(b"MQTT", 4);
        assert_eq!(sniff(&full[..5], 1024), Sniff::NeedMore);
        assert_eq!(sniff(&[0x30, 0x00], 1024), Sniff::NotConnect);
        assert_eq!(sniff(&[0x10, 0x01, 0x00], 1024), Sniff::Malformed);
        assert_eq!(
            sniff(&[0x10, 0xff, 0xff, 0x7f], 1024),
            Sniff::TooLarge(2_097_151)
        );
    }

    fn frame(header: u8, body: &[u8]) -> BytesMut {
        assert!(body.len() < 128);
        let mut out = BytesMut::from(&[header, body.len() as u8][..]);
        out.extend_from_slice(body);
        out
    }

    /// A v5 PUBLISH QoS 1 (packet id 1) on `topic` with `props`.
    fn publish_v5(topic: &[u8], props: &[u8]) -> BytesMut {
        let mut body = vec![0, topic.len() as u8];
        body.extend_from_slice(topic);
        body.extend_from_slice(&[0, 1, props.len() as u8]);
        body.extend_from_slice(props);
        body.extend_from_slice(b"payload");
        frame(0x32, &body)
    }

    fn read(version: Version, mut buf: BytesMut) -> Result<Option<Packet>, protocol::Error> {
        Codec::new(version, 1024).read(&mut buf)
    }

    /// The error a packet that must be refused gets.
    fn refused(version: Version, buf: BytesMut) -> protocol::Error {
        match read(version, buf) {
            Err(e) => e,
            Ok(packet) => panic!("accepted: {packet:?}"),
        }
    }

    #[test]
    fn mqtt5_disconnect_round_trips_in_its_short_and_long_forms() {
        let codec = Codec::new(Version::V5, 1024);
        let mut out = BytesMut::new();
        let d = Disconnect {
            reason_code: DisconnectReasonCode::MalformedPacket,
        };
        codec
            .write(Packet::Disconnect(d, None), &mut out)
            .expect("write");
        assert_eq!(
            &out[..],
            &[0xE0, 0x02, 0x81, 0x00],
            "remaining length matches"
        );
        for bytes in [
            &[0xE0, 0x01, 0x00][..],
            &[0xE0, 0x00],
            &[0xE0, 0x02, 0x00, 0x00],
        ] {
            let packet = read(Version::V5, BytesMut::from(bytes)).expect("a valid DISCONNECT");
            assert!(
                matches!(packet, Some(Packet::Disconnect(d, _)) if d.reason_code == DisconnectReasonCode::NormalDisconnection),
                "{bytes:?}"
            );
        }
        let packet = read(Version::V5, BytesMut::from(&[0xE0, 0x01, 0x04][..])).expect("0x04");
        assert!(
            matches!(packet, Some(Packet::Disconnect(d, _)) if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage)
        );
    }

    #[test]
    fn fixed_header_flags_and_the_connect_reserved_flag_are_checked() {
        for version in [Version::V311, Version::V5] {
            // PUBREL 6x, SUBSCRIBE 8x, UNSUBSCRIBE Ax: flags 0010 and nothing else.
            let pubrel = [0, 1];
            assert!(read(version, frame(0x62, &pubrel)).is_ok());
            for flags in [0x60, 0x63, 0x6A] {
                let e = refused(version, frame(flags, &pubrel));
                assert_eq!(disconnect_reason(&e), DisconnectReasonCode::MalformedPacket);
            }
            let subscribe: &[u8] = match version {
                Version::V311 => &[0, 1, 0, 1, b'a', 1],
                Version::V5 => &[0, 1, 0, 0, 1, b'a', 1],
            };
            assert!(read(version, frame(0x82, subscribe)).is_ok());
            refused(version, frame(0x80, subscribe));
            let unsubscribe: &[u8] = match version {
                Version::V311 => &[0, 1, 0, 1, b'a'],
                Version::V5 => &[0, 1, 0, 0, 1, b'a'],
            };
            assert!(read(version, frame(0xA2, unsubscribe)).is_ok());
            refused(version, frame(0xA0, unsubscribe));
            // PINGREQ C0 and PUBACK 40 have no flags.
            assert!(read(version, frame(0xC0, &[])).is_ok());
            refused(version, frame(0xC1, &[]));
            refused(version, frame(0x48, &[0, 1]));
            // PUBLISH flags are DUP, QoS and RETAIN: all of them allowed here.
            let publish: &[u8] = match version {
                Version::V311 => &[0, 1, b'a', 0, 1, b'x'],
                Version::V5 => &[0, 1, b'a', 0, 1, 0, b'x'],
            };
            assert!(read(version, frame(0x3B, publish)).is_ok());
        }
        // CONNECT: the reserved connect flag (bit 0) set is malformed.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 30, 0, 1, b'c'];
        assert!(read(Version::V311, frame(0x10, &body)).is_ok());
        body[7] = 0x03;
        refused(Version::V311, frame(0x10, &body));
        refused(Version::V311, frame(0x11, &body));
    }

    #[test]
    fn unsubscribe_needs_filters_and_both_take_at_most_max_filters() {
        for version in [Version::V311, Version::V5] {
            let head: &[u8] = match version {
                Version::V311 => &[0, 1],
                Version::V5 => &[0, 1, 0],
            };
            let e = refused(version, frame(0xA2, head));
            assert_eq!(disconnect_reason(&e), DisconnectReasonCode::ProtocolError);
            for (kind, per_filter) in [(0x82u8, &[0, 1, b'f', 0][..]), (0xA2, &[0, 1, b'f'][..])] {
                for (count, ok) in [(MAX_FILTERS, true), (MAX_FILTERS + 1, false)] {
                    let mut body = head.to_vec();
                    for _ in 0..count {
                        body.extend_from_slice(per_filter);
                    }
                    let mut buf = BytesMut::new();
                    // A remaining length of up to three bytes.
                    let len = body.len();
                    buf.extend_from_slice(&[
                        kind,
                        (len as u8) | 0x80,
                        ((len >> 7) as u8) | 0x80,
                        (len >> 14) as u8,
                    ]);
                    buf.extend_from_slice(&body);
                    let got = Codec::new(version, 1 << 20).read(&mut buf);
                    if ok {
                        assert!(matches!(got, Ok(Some(_))), "{kind:#x} {count}: {got:?}");
                    } else {
                        let e = got.expect_err("too many filters");
                        assert_eq!(disconnect_reason(&e), DisconnectReasonCode::QuotaExceeded);
                    }
                }
            }
        }
    }

    #[test]
    fn request_problem_information_0_strips_acknowledgements_only() {
        let mut codec = Codec::new(Version::V5, 1024);
        let ack = |why: &str| {
            Packet::PubAck(
                PubAck {
                    pkid: 1,
                    reason: PubAckReason::NotAuthorized,
                },
                Some(PubAckProperties {
                    reason_string: Some(why.to_owned()),
                    user_properties: vec![("k".into(), "v".into())],
                }),
            )
        };
        let mut with = BytesMut::new();
        codec.write(ack("not consented"), &mut with).expect("write");
        assert!(with.windows(13).any(|w| w == b"not consented"));
        codec.set_problem_info(false);
        let mut without = BytesMut::new();
        codec
            .write(ack("not consented"), &mut without)
            .expect("write");
        // PUBACK, length 4: packet id, reason code 0x87, property length 0.
        assert_eq!(&without[..], &[0x40, 0x04, 0, 1, 0x87, 0x00]);
        // A CONNACK keeps its reason string (MQTT-3.1.2-29 allows it).
        let refused = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
            },
            Some(ConnAckProperties {
                reason_string: Some("go away".into()),
                ..Default::default()
            }),
        );
        let mut out = BytesMut::new();
        codec.write(refused, &mut out).expect("write");
        assert!(out.windows(7).any(|w| w == b"go away"));
    }

    fn puback(why: &str) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid: 7,
                reason: PubAckReason::PayloadFormatInvalid,
            },
            Some(PubAckProperties {
                reason_string: Some(why.to_owned()),
                user_properties: vec![("k".into(), "v".into())],
            }),
        )
    }

    #[test]
    fn a_reason_string_is_at_most_256_bytes_and_reads_back() {
        let codec = Codec::new(Version::V5, 1 << 20);
        let mut out = BytesMut::new();
        codec
            .write(puback(&"é".repeat(50_000)), &mut out)
            .expect("write");
        // The client's view: one whole PUBACK, its reason string cut on a char boundary.
        let Ok(Packet::PubAck(ack, Some(props))) = V5.read_mut(&mut out, 1 << 20) else {
            panic!("not one PUBACK");
        };
        assert!(out.is_empty(), "nothing after it");
        assert_eq!(ack.pkid, 7);
        let reason = props.reason_string.expect("a reason string");
        assert!(reason.len() <= 256, "{}", reason.len());
        assert!(
            reason.starts_with("éé") && reason.ends_with('…'),
            "{reason}"
        );
        assert_eq!(props.user_properties, vec![("k".into(), "v".into())]);
    }

    #[test]
    fn beyond_the_clients_maximum_packet_size_problem_information_is_left_out() {
        let mut codec = Codec::new(Version::V5, 1 << 20);
        codec.set_client_max_packet_size(Some(64));
        let mut out = BytesMut::new();
        codec.write(puback("short"), &mut out).expect("write");
        assert!(out.windows(5).any(|w| w == b"short"), "it fits: kept");
        let mut out = BytesMut::new();
        codec
            .write(puback(&"x".repeat(300)), &mut out)
            .expect("write");
        // PUBACK, length 4: packet id, reason code 0x99, property length 0.
        assert_eq!(&out[..], &[0x40, 0x04, 0, 7, 0x99, 0x00]);
        // A CONNACK keeps its other properties.
        let connack = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
            },
            Some(ConnAckProperties {
                assigned_client_identifier: Some("kenko-auto-1".into()),
                reason_string: Some("y".repeat(200)),
                ..Default::default()
            }),
        );
        let mut out = BytesMut::new();
        codec.write(connack, &mut out).expect("write");
        assert!(out.len() <= 64, "{}", out.len());
        assert!(out.windows(12).any(|w| w == b"kenko-auto-1"));
        assert!(!out.windows(3).any(|w| w == b"yyy"));
        // A delivery larger than that is not written at all; what was buffered stays.
        let publish = Packet::Publish(
            rumqttd::protocol::Publish::new(&b"a/b"[..], &[0u8; 100][..], false),
            None,
        );
        let mut out = BytesMut::from(&b"before"[..]);
        let e = codec.write(publish, &mut out).expect_err("too large");
        assert!(
            matches!(e, WriteError::TooLarge { max: 64, size } if size > 100),
            "{e}"
        );
        assert_eq!(&out[..], b"before");
        // MQTT 3.1.1 has no Maximum Packet Size and no reason strings.
        let mut codec = Codec::new(Version::V311, 1 << 20);
        codec.set_client_max_packet_size(None);
        let mut out = BytesMut::new();
        codec
            .write(puback(&"x".repeat(300)), &mut out)
            .expect("write");
        assert_eq!(&out[..], &[0x40, 0x02, 0, 7]);
    }

    #[test]
    fn repeated_properties_are_a_protocol_error() {
        let pfi = [0x01, 1];
        let twice = [0x01, 1, 0x01, 0];
        assert!(matches!(
            read(Version::V5, publish_v5(b"a/b", &pfi)),
            Ok(Some(Packet::Publish(..)))
        ));
        let e = refused(Version::V5, publish_v5(b"a/b", &twice));
        assert_eq!(disconnect_reason(&e), DisconnectReasonCode::ProtocolError);
        // User properties may repeat.
        let users = [0x26, 0, 1, b'k', 0, 1, b'v', 0x26, 0, 1, b'k', 0, 1, b'w'];
        assert!(read(Version::V5, publish_v5(b"a/b", &users)).is_ok());
        // A client's PUBLISH carries no subscription identifier.
        let e = refused(Version::V5, publish_v5(b"a/b", &[0x0b, 5]));
        assert_eq!(disconnect_reason(&e), DisconnectReasonCode::ProtocolError);
        // Two session expiry intervals in a CONNECT.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 30, 10];
        body.extend_from_slice(&[0x11, 0, 0, 0, 5, 0x11, 0, 0, 0, 6]);
        body.extend_from_slice(&[0, 1, b'c']);
        let e = refused(Version::V5, frame(0x10, &body));
        assert_eq!(connack_reason(&e), ConnectReturnCode::ProtocolError);
        // Two payload format indicators in a will's properties.
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0x06, 0, 30, 0, 0, 1, b'c'];
        body.extend_from_slice(&[4, 0x01, 1, 0x01, 1, 0, 1, b'w', 0, 1, b'x']);
        let e = refused(Version::V5, frame(0x10, &body));
        assert_eq!(connack_reason(&e), ConnectReturnCode::ProtocolError);
        // A property block longer than the packet.
        let e = refused(Version::V5, frame(0x82, &[0, 1, 9, 0x0b, 1]));
        assert_eq!(disconnect_reason(&e), DisconnectReasonCode::MalformedPacket);
    }

    #[test]
    fn packets_only_a_server_sends_are_read_as_such_not_decoded() {
        let connack = read(Version::V5, frame(0x20, &[0, 0, 0]));
        assert!(matches!(connack, Ok(Some(Packet::ConnAck(..)))));
        let suback = read(Version::V5, frame(0x90, &[0, 1, 0, 0]));
        assert!(matches!(suback, Ok(Some(Packet::SubAck(..)))));
        let unsuback = read(Version::V5, frame(0xb0, &[0, 1, 0, 0]));
        assert!(matches!(unsuback, Ok(Some(Packet::UnsubAck(..)))));
        let connack = read(Version::V311, frame(0x20, &[0, 0]));
        assert!(matches!(connack, Ok(Some(Packet::ConnAck(..)))));
    }

    #[test]
    fn a_packet_cut_short_inside_is_malformed_not_awaited() {
        // PUBLISH QoS 1 with topic and packet id but no property length: a whole packet.
        let mut buf = frame(0x32, &[0, 1, b'a', 0, 1]);
        buf.extend_from_slice(&[0xc0, 0]); // PINGREQ behind it
        let codec = Codec::new(Version::V5, 1024);
        assert_eq!(codec.read(&mut buf), Err(protocol::Error::MalformedPacket));
    }

    #[test]
    fn remaining_length_of_five_bytes_is_malformed() {
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01][..]);
        for version in [Version::V311, Version::V5] {
            let e = Codec::new(version, 1024).read(&mut buf);
            assert!(
                matches!(e, Err(protocol::Error::MalformedRemainingLength)),
                "{e:?}"
            );
        }
        let mut buf = BytesMut::from(&[0x30, 0xff, 0xff, 0x7f][..]);
        let e = Codec::new(Version::V5, 1024).read(&mut buf);
        assert!(
            matches!(e, Err(protocol::Error::PayloadSizeLimitExceeded(_))),
            "{e:?}"
        );
    }

    #[test]
    fn topics_and_filters_are_checked() {
        for version in [Version::V311, Version::V5] {
            let publish = |topic: &[u8]| {
                let mut body = vec![0, topic.len() as u8];
                body.extend_from_slice(topic);
                if version == Version::V5 {
                    body.push(0);
                }
                read(version, frame(0x30, &body))
            };
            assert!(matches!(publish(b"a/b"), Ok(Some(Packet::Publish(..)))));
            assert_eq!(publish(&[b'a', 0xff]), Err(protocol::Error::TopicNotUtf8));
            assert_eq!(publish(&[0xc0, 0xaf]), Err(protocol::Error::TopicNotUtf8));
            assert_eq!(publish(b"a\0b"), Err(protocol::Error::MalformedPacket));
            assert_eq!(publish(b""), Err(PROTOCOL_ERROR));
            // Wildcards in a topic name are the session's to refuse (0x90).
            assert!(publish(b"a/+").is_ok());
            let subscribe = |filter: &[u8]| {
                let mut body = vec![0, 1];
                if version == Version::V5 {
                    body.push(0);
                }
                body.extend_from_slice(&[0, filter.len() as u8]);
                body.extend_from_slice(filter);
                body.push(0);
                read(version, frame(0x82, &body))
            };
            assert!(matches!(subscribe(b"a/#"), Ok(Some(Packet::Subscribe(..)))));
            for bad in [&b"a/#/b"[..], b"a/b#", b"a+", b"a\0", b""] {
                let e = subscribe(bad);
                assert_eq!(e, Err(protocol::Error::MalformedPacket), "{bad:?}");
            }
            assert!(subscribe(&[0xff]).is_err());
        }
        // A v5 PUBLISH with a topic alias and no topic goes through (the session refuses the
        // alias with 0x94).
        assert!(read(Version::V5, publish_v5(b"", &[0x23, 0, 1])).is_ok());
    }

    #[test]
    fn the_version_of_a_connect_is_seen_before_it_is_whole() {
        let full = connect(b"MQTT", 5);
        assert_eq!(peek_version(&full[..9]), Some(Version::V5));
        assert_eq!(peek_version(&full[..8]), None);
        let mut big = vec![0x10, 0x80, 0x80, 0x04, 0, 4];
        big.extend_from_slice(b"MQTT");
        big.push(4);
        assert_eq!(peek_version(&big), Some(Version::V311));
        assert_eq!(peek_version(&connect(b"MQIsdp", 3)), None);
    }
}
