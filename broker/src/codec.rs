//! Framing and the two protocol versions. "Is a whole packet buffered?" is answered here from
//! the fixed header; parsing and encoding are rumqttd's v4 (MQTT 3.1.1) and v5 codecs.

use bytes::BytesMut;
use rumqttd::protocol::{self, v4::V4, v5::V5, Packet, Protocol};

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
}

impl Codec {
    pub(crate) fn new(version: Version, max_packet_size: usize) -> Codec {
        Codec {
            version,
            max_packet_size,
        }
    }

    pub(crate) fn version(&self) -> Version {
        self.version
    }

    /// The next whole packet in `buf`, or `None` if more bytes are needed.
    pub(crate) fn read(&self, buf: &mut BytesMut) -> Result<Option<Packet>, protocol::Error> {
        if buf.is_empty() {
            return Ok(None);
        }
        let result = match self.version {
            Version::V311 => V4.read_mut(buf, self.max_packet_size),
            Version::V5 => V5.read_mut(buf, self.max_packet_size),
        };
        match result {
            Ok(packet) => Ok(Some(packet)),
            Err(protocol::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends the encoded packet to `out`.
    pub(crate) fn write(&self, packet: Packet, out: &mut BytesMut) -> Result<(), protocol::Error> {
        match self.version {
            Version::V311 => V4.write(without_properties(packet), out)?,
            Version::V5 => V5.write(packet, out)?,
        };
        Ok(())
    }
}

/// MQTT 3.1.1 has no properties; rumqttd's v4 encoder refuses packets that carry any (a v5
/// publisher's message forwarded to a 3.1.1 subscriber does), so they are dropped here.
fn without_properties(packet: Packet) -> Packet {
    match packet {
        Packet::Publish(p, _) => Packet::Publish(p, None),
        Packet::PubAck(p, _) => Packet::PubAck(p, None),
        Packet::PubRec(p, _) => Packet::PubRec(p, None),
        Packet::PubRel(p, _) => Packet::PubRel(p, None),
        Packet::PubComp(p, _) => Packet::PubComp(p, None),
        Packet::SubAck(p, _) => Packet::SubAck(p, None),
        Packet::UnsubAck(p, _) => Packet::UnsubAck(p, None),
        Packet::ConnAck(p, _) => Packet::ConnAck(p, None),
        Packet::Disconnect(p, _) => Packet::Disconnect(p, None),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
