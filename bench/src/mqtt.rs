//! The few MQTT 3.1.1 packets the harness needs, encoded and decoded by hand, and a
//! connection that buffers what it reads until a whole packet is there.
//!
//! Hand-written on purpose: a client library would put its own queues and timers between
//! the load and the broker, and the figures would partly measure it.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A packet from the broker, reduced to what the harness looks at.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet {
    ConnAck {
        code: u8,
    },
    Publish {
        qos: u8,
        id: Option<u16>,
    },
    PubAck {
        id: u16,
    },
    SubAck {
        id: u16,
        codes: Vec<u8>,
    },
    /// Anything else (PINGRESP, ...): counted as read, otherwise ignored.
    Other {
        kind: u8,
    },
}

/// Who a client says it is in CONNECT.
pub struct Login<'a> {
    pub client_id: &'a str,
    pub user: Option<(&'a str, &'a str)>,
    pub keep_alive_s: u16,
}

/// Appends a CONNECT with clean session.
pub fn connect(out: &mut Vec<u8>, login: &Login<'_>) {
    let mut body = Vec::with_capacity(64);
    put_str(&mut body, "MQTT");
    body.push(4); // protocol level: 3.1.1
    let mut flags = 0x02; // clean session
    if login.user.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&login.keep_alive_s.to_be_bytes());
    put_str(&mut body, login.client_id);
    if let Some((user, password)) = login.user {
        put_str(&mut body, user);
        put_str(&mut body, password);
    }
    frame(out, 0x10, &body);
}

/// Appends a QoS 1 PUBLISH.
pub fn publish_qos1(out: &mut Vec<u8>, topic: &str, id: u16, payload: &[u8]) {
    let mut body = Vec::with_capacity(topic.len() + payload.len() + 4);
    put_str(&mut body, topic);
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(payload);
    frame(out, 0x32, &body);
}

pub fn puback(out: &mut Vec<u8>, id: u16) {
    frame(out, 0x40, &id.to_be_bytes());
}

/// Appends a SUBSCRIBE to one filter.
pub fn subscribe(out: &mut Vec<u8>, id: u16, filter: &str, qos: u8) {
    let mut body = Vec::with_capacity(filter.len() + 5);
    body.extend_from_slice(&id.to_be_bytes());
    put_str(&mut body, filter);
    body.push(qos);
    frame(out, 0x82, &body);
}

pub fn disconnect(out: &mut Vec<u8>) {
    frame(out, 0xE0, &[]);
}

/// Packet id number `n` (0, 1, 2, ...) of a client: ids run 1..=65535 and wrap.
pub fn packet_id(n: u64) -> u16 {
    u16::try_from(n % 65_535 + 1).unwrap_or(1)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

fn frame(out: &mut Vec<u8>, first: u8, body: &[u8]) {
    out.push(first);
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
}

/// The size of the whole packet at the start of `buf`, if its fixed header is complete.
fn packet_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(2 + i + len));
        }
    }
    bail!("malformed remaining length from the broker")
}

/// Decodes one whole packet (fixed header included).
fn decode(packet: &[u8], header_len: usize) -> anyhow::Result<Packet> {
    let first = packet[0];
    let body = &packet[header_len..];
    let u16_at = |i: usize| -> anyhow::Result<u16> {
        match body.get(i..i + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => bail!("short packet 0x{first:02x} from the broker"),
        }
    };
    Ok(match first >> 4 {
        2 => match body.get(1) {
            Some(&code) => Packet::ConnAck { code },
            None => bail!("short CONNACK from the broker"),
        },
        3 => {
            let qos = (first >> 1) & 0x03;
            let topic_len = usize::from(u16_at(0)?);
            let id = if qos > 0 {
                Some(u16_at(2 + topic_len)?)
            } else {
                None
            };
            Packet::Publish { qos, id }
        }
        4 => Packet::PubAck { id: u16_at(0)? },
        9 => Packet::SubAck {
            id: u16_at(0)?,
            codes: body.get(2..).unwrap_or_default().to_vec(),
        },
        kind => Packet::Other { kind },
    })
}

/// A TCP connection to a broker with a read buffer.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
}

impl Conn {
    /// Opens a TCP connection, sends CONNECT and waits for a CONNACK that accepts it.
    pub async fn open(port: u16, login: &Login<'_>, wait: Duration) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .context("TCP connect")?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            buf: Vec::with_capacity(4096),
            start: 0,
        };
        let mut out = Vec::new();
        connect(&mut out, login);
        conn.send(&out).await?;
        match conn.read_within(wait).await? {
            Packet::ConnAck { code: 0 } => Ok(conn),
            Packet::ConnAck { code } => bail!("CONNACK refused with code {code}"),
            other => bail!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await.context("write")
    }

    /// The next packet, waiting at most `wait` for it.
    pub async fn read_within(&mut self, wait: Duration) -> anyhow::Result<Packet> {
        match tokio::time::timeout(wait, self.read_packet()).await {
            Ok(packet) => packet,
            Err(_) => bail!("nothing from the broker for {wait:?}"),
        }
    }

    /// The next packet, reading from the socket until one is whole.
    pub async fn read_packet(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.buffered_packet()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    /// A packet that is already whole in the buffer, without reading the socket.
    pub fn buffered_packet(&mut self) -> anyhow::Result<Option<Packet>> {
        let pending = &self.buf[self.start..];
        let Some(len) = packet_len(pending)? else {
            return Ok(None);
        };
        if pending.len() < len {
            return Ok(None);
        }
        let header_len = 1 + pending[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        let packet = decode(&pending[..len], header_len)?;
        self.start += len;
        Ok(Some(packet))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + 16 * 1024, 0);
        let read = self.stream.read(&mut self.buf[old..]).await;
        let n = read.as_ref().map_or(0, |n| *n);
        self.buf.truncate(old + n);
        if read.context("read")? == 0 {
            bail!("the broker closed the connection");
        }
        Ok(())
    }

    /// Sends DISCONNECT; a broker that already closed is no error worth reporting.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        disconnect(&mut out);
        let _ = self.stream.write_all(&out).await;
        let _ = self.stream.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Packet {
        let len = packet_len(bytes).expect("valid").expect("whole");
        assert_eq!(len, bytes.len());
        let header_len = 1 + bytes[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
        decode(bytes, header_len).expect("decodes")
    }

    #[test]
    fn connect_with_login_matches_the_spec_layout() {
        let mut out = Vec::new();
        let login = Login {
            client_id: "c",
            user: Some(("u", "p")),
            keep_alive_s: 60,
        };
        connect(&mut out, &login);
        assert_eq!(
            out,
            [
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 4, 0xC2, 0, 60, 0, 1, b'c', 0, 1, b'u', 0,
                1, b'p'
            ]
        );
    }

    #[test]
    fn long_publish_gets_a_two_byte_length_and_decodes_back() {
        let mut out = Vec::new();
        publish_qos1(&mut out, "load/1", 7, &[b'x'; 300]);
        assert_eq!(out[0], 0x32);
        assert_eq!(out.len(), 1 + 2 + (2 + 6 + 2 + 300));
        assert_eq!(
            decode_all(&out),
            Packet::Publish {
                qos: 1,
                id: Some(7)
            }
        );
    }

    #[test]
    fn acks_decode() {
        assert_eq!(decode_all(&[0x20, 2, 0, 5]), Packet::ConnAck { code: 5 });
        assert_eq!(decode_all(&[0x40, 2, 1, 2]), Packet::PubAck { id: 258 });
        assert_eq!(
            decode_all(&[0x90, 3, 0, 9, 1]),
            Packet::SubAck {
                id: 9,
                codes: vec![1]
            }
        );
    }

    #[test]
    fn partial_header_waits_for_more() {
        assert_eq!(packet_len(&[0x30]).expect("valid"), None);
        assert_eq!(packet_len(&[0x30, 0x80]).expect("valid"), None);
        assert!(packet_len(&[0x30, 0x80, 0x80, 0x80, 0x80]).is_err());
    }

    #[test]
    fn packet_ids_skip_zero_and_wrap() {
        assert_eq!(packet_id(0), 1);
        assert_eq!(packet_id(65_534), 65_535);
        assert_eq!(packet_id(65_535), 1);
    }
}
