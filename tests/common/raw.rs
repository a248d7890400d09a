//! Raw MQTT packets over a plain socket, for tests that must see exact bytes and reason codes
//! or send what a well-behaved client library would not.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context};

/// A packet as read: first byte and body.
#[derive(Debug)]
pub struct Raw {
    pub header: u8,
    pub body: Vec<u8>,
}

impl Raw {
    pub fn kind(&self) -> u8 {
        self.header >> 4
    }
}

pub struct Conn {
    pub stream: TcpStream,
    pub v5: bool,
}

fn remaining_length(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            break;
        }
    }
}

fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A whole packet from its first byte and body.
pub fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    remaining_length(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// CONNECT, clean session, keep-alive 30 s; optional login and will (topic, QoS 1).
pub fn connect(
    v5: bool,
    client_id: &str,
    login: Option<(&str, &str)>,
    will: Option<&str>,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(if v5 { 5 } else { 4 });
    let mut flags = 0x02;
    if will.is_some() {
        flags |= 0x04 | 0x08; // will, will QoS 1
    }
    if login.is_some() {
        flags |= 0x80 | 0x40;
    }
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    if v5 {
        body.push(0); // no properties
    }
    string(client_id.as_bytes(), &mut body);
    if let Some(topic) = will {
        if v5 {
            body.push(0); // no will properties
        }
        string(topic.as_bytes(), &mut body);
        string(b"gone", &mut body);
    }
    if let Some((user, password)) = login {
        string(user.as_bytes(), &mut body);
        string(password.as_bytes(), &mut body);
    }
    packet(0x10, &body)
}

/// SUBSCRIBE with packet id `pkid` for `filters` at QoS 0.
pub fn subscribe(v5: bool, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        string(f.as_bytes(), &mut body);
        body.push(0);
    }
    packet(0x82, &body)
}

/// PUBLISH at QoS 1 with packet id `pkid`; `props` are raw v5 property bytes.
pub fn publish_qos1(v5: bool, topic: &str, pkid: u16, props: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    body.extend_from_slice(&pkid.to_be_bytes());
    if v5 {
        remaining_length(props.len(), &mut body);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(payload);
    packet(0x32, &body)
}

impl Conn {
    pub fn open(addr: SocketAddr, v5: bool) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn { stream, v5 })
    }

    /// Connects and returns the CONNACK's return / reason code.
    pub fn connect(
        addr: SocketAddr,
        v5: bool,
        client_id: &str,
        login: Option<(&str, &str)>,
        will: Option<&str>,
    ) -> anyhow::Result<(Conn, u8)> {
        let mut conn = Conn::open(addr, v5)?;
        conn.send(&connect(v5, client_id, login, will))?;
        let ack = conn.read()?;
        if ack.kind() != 2 {
            bail!("expected CONNACK, got {ack:?}");
        }
        let code = *ack.body.get(1).context("short CONNACK")?;
        Ok((conn, code))
    }

    pub fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one packet; fails on timeout or close.
    pub fn read(&mut self) -> anyhow::Result<Raw> {
        let mut header = [0u8; 1];
        self.stream.read_exact(&mut header)?;
        let mut len = 0usize;
        let mut shift = 0;
        loop {
            let mut b = [0u8; 1];
            self.stream.read_exact(&mut b)?;
            len |= usize::from(b[0] & 0x7f) << shift;
            if b[0] & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body)?;
        Ok(Raw {
            header: header[0],
            body,
        })
    }

    /// Reads until a packet of `kind` arrives.
    pub fn read_kind(&mut self, kind: u8) -> anyhow::Result<Raw> {
        loop {
            let p = self.read()?;
            if p.kind() == kind {
                return Ok(p);
            }
        }
    }

    /// Completes the publisher's side of a PUBLISH just sent with `pkid`: reads PUBACK (QoS
    /// 1), or PUBREC, sends PUBREL and reads PUBCOMP (QoS 2).
    pub fn finish_publish(&mut self, qos: u8, pkid: u16) -> anyhow::Result<()> {
        match qos {
            1 => drop(self.read_kind(4)?),
            2 => {
                self.read_kind(5)?;
                self.send(&ack(0x62, pkid))?;
                self.read_kind(7)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// What a resumed session is sent again until `quiet` passes without a packet: its
    /// PUBLISHes as (packet id, topic, DUP, QoS), and every other packet as (kind, packet id).
    #[allow(clippy::type_complexity)]
    pub fn read_resent(
        &mut self,
        quiet: Duration,
    ) -> (Vec<(u16, String, bool, u8)>, Vec<(u8, u16)>) {
        let (mut publishes, mut others) = (Vec::new(), Vec::new());
        while let Some(p) = self.read_within(quiet) {
            match p.kind() {
                3 => {
                    let d = p.publish(self.v5);
                    publishes.push((d.pkid, d.topic, d.dup, d.qos));
                }
                kind => others.push((kind, p.pkid())),
            }
        }
        (publishes, others)
    }

    /// Reads a QoS 1 delivery and two QoS 2 ones and leaves them unfinished, as a client that
    /// goes away would: the first unacknowledged, the second not received, the third received
    /// (PUBREC sent, PUBREL read) but not completed.
    pub fn leave_unfinished(&mut self) -> anyhow::Result<Unfinished> {
        let mut next = |what: &str| {
            self.read_kind_within(3, super::SOON)
                .map(|p| p.publish(self.v5))
                .with_context(|| format!("no {what} delivered"))
        };
        let one = next("QoS 1")?;
        let two = next("first QoS 2")?;
        let three = next("second QoS 2")?;
        assert_eq!((one.qos, two.qos, three.qos), (1, 2, 2));
        assert!(
            !one.dup && !two.dup && !three.dup,
            "first deliveries have no DUP"
        );
        self.send(&ack(0x50, three.pkid))?;
        assert_eq!(self.read_kind(6)?.pkid(), three.pkid, "PUBREL");
        Ok(Unfinished { one, two, three })
    }

    /// On the resumed session of a client that left `unfinished`: expects them sent again in
    /// order, PUBLISHes with DUP and their packet ids and the PUBREL (MQTT-4.4.0-1), nothing
    /// else, and completes them.
    pub fn complete_resent(&mut self, unfinished: &Unfinished) -> anyhow::Result<()> {
        let Unfinished { one, two, three } = unfinished;
        let (publishes, pubrels) = self.read_resent(super::QUIET);
        assert_eq!(
            publishes,
            vec![
                (one.pkid, one.topic.clone(), true, 1),
                (two.pkid, two.topic.clone(), true, 2),
            ],
            "the unacknowledged PUBLISHes again, in order, with DUP and their packet ids"
        );
        assert_eq!(pubrels, vec![(6, three.pkid)], "the PUBREL again");
        self.send(&ack(0x40, one.pkid))?;
        self.send(&ack(0x50, two.pkid))?;
        assert_eq!(self.read_kind(6)?.pkid(), two.pkid);
        self.send(&ack(0x70, two.pkid))?;
        self.send(&ack(0x70, three.pkid))?;
        Ok(())
    }

    /// Publishes on each `(topic, published QoS, expected delivery QoS)` in turn, finishing
    /// each exchange, and checks that `subscriber` gets it at the expected QoS (acknowledging
    /// QoS 1 deliveries).
    pub fn expect_delivery_qos(
        &mut self,
        subscriber: &mut Conn,
        cases: &[(&str, u8, u8)],
    ) -> anyhow::Result<()> {
        let no_props = Props::new();
        for (pkid, &(topic, published, delivered)) in (1..).zip(cases) {
            self.send(&publish_with(
                self.v5, topic, published, false, false, pkid, &no_props, b"x",
            ))?;
            self.finish_publish(published, pkid)?;
            let got = subscriber
                .read_kind_within(3, super::SOON)
                .map(|p| p.publish(subscriber.v5))
                .with_context(|| format!("nothing delivered on {topic}"))?;
            assert_eq!(
                (got.topic.as_str(), got.qos),
                (topic, delivered),
                "published at QoS {published}"
            );
            if got.qos == 1 {
                subscriber.send(&ack(0x40, got.pkid))?;
            }
        }
        Ok(())
    }

    /// Publishes at QoS 0 on each topic (its name as payload), then returns the topics
    /// `subscriber` got, in order, until it has been quiet for `QUIET`.
    pub fn topics_delivered(
        &mut self,
        subscriber: &mut Conn,
        topics: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        let no_props = Props::new();
        for topic in topics {
            self.send(&publish_with(
                self.v5,
                topic,
                0,
                false,
                false,
                0,
                &no_props,
                topic.as_bytes(),
            ))?;
        }
        let v5 = subscriber.v5;
        Ok(
            std::iter::from_fn(|| subscriber.read_kind_within(3, super::QUIET))
                .map(|p| p.publish(v5).topic)
                .collect(),
        )
    }

    /// SUBSCRIBEs and returns the SUBACK's codes, one per filter.
    pub fn subscribe(&mut self, pkid: u16, filters: &[&str]) -> anyhow::Result<Vec<u8>> {
        self.send(&subscribe(self.v5, pkid, filters))?;
        let ack = self.read_kind(9)?;
        let mut at = 2;
        if self.v5 {
            // Property length (one byte for the short reason strings kenko sends) and properties.
            let (len, used) = varint(&ack.body[2..]);
            at += used + len;
        }
        Ok(ack.body[at..].to_vec())
    }

    /// True if the server closed the connection (or sent DISCONNECT) within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        let _ = self.stream.set_read_timeout(Some(limit));
        loop {
            match self.read() {
                Ok(p) if p.kind() == 14 => return true,
                Ok(_) => continue,
                Err(e) => {
                    return e
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
                }
            }
        }
    }
}

/// A variable byte integer at the start of `bytes`: its value and the bytes it used.
pub fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, 4)
}

// ---------------------------------------------------------------------------------------------
// Every field chosen by the caller: for the conformance suites, which must send exactly what a
// clause talks about and read back every property.

/// An MQTT 5 property as read from a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    Byte(u8),
    U16(u16),
    U32(u32),
    VarInt(usize),
    Str(String),
    Bin(Vec<u8>),
    Pair(String, String),
}

/// MQTT 5 property identifiers used by the suites.
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1a;
    pub const REASON_STRING: u8 = 0x1f;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2a;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
}

/// Encodes MQTT 5 properties (without the length in front).
#[derive(Debug, Default, Clone)]
pub struct Props(pub Vec<u8>);

impl Props {
    pub fn new() -> Props {
        Props::default()
    }
    pub fn byte(mut self, id: u8, v: u8) -> Props {
        self.0.extend_from_slice(&[id, v]);
        self
    }
    pub fn u16(mut self, id: u8, v: u16) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, id: u8, v: u32) -> Props {
        self.0.push(id);
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn varint(mut self, id: u8, v: usize) -> Props {
        self.0.push(id);
        remaining_length(v, &mut self.0);
        self
    }
    pub fn str(mut self, id: u8, v: &str) -> Props {
        self.0.push(id);
        string(v.as_bytes(), &mut self.0);
        self
    }
    pub fn bin(mut self, id: u8, v: &[u8]) -> Props {
        self.0.push(id);
        string(v, &mut self.0);
        self
    }
    pub fn pair(mut self, key: &str, value: &str) -> Props {
        self.0.push(prop::USER_PROPERTY);
        string(key.as_bytes(), &mut self.0);
        string(value.as_bytes(), &mut self.0);
        self
    }
    /// Length-prefixed, as the packet carries them.
    fn encoded(&self) -> Vec<u8> {
        let mut out = Vec::new();
        remaining_length(self.0.len(), &mut out);
        out.extend_from_slice(&self.0);
        out
    }
}

/// Decodes a property block (without its length). Unknown identifiers end the decoding.
pub fn parse_props(mut bytes: &[u8]) -> Vec<(u8, Prop)> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = tail;
        Some(head)
    }
    fn text(bytes: &mut &[u8]) -> Option<Vec<u8>> {
        let len = take(bytes, 2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        take(bytes, len).map(<[u8]>::to_vec)
    }
    let mut out = Vec::new();
    while let Some((&id, rest)) = bytes.split_first() {
        bytes = rest;
        let value = match id {
            0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2a => {
                take(&mut bytes, 1).map(|b| Prop::Byte(b[0]))
            }
            0x13 | 0x21 | 0x22 | 0x23 => {
                take(&mut bytes, 2).map(|b| Prop::U16(u16::from_be_bytes([b[0], b[1]])))
            }
            0x02 | 0x11 | 0x18 | 0x27 => {
                take(&mut bytes, 4).map(|b| Prop::U32(u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
            }
            0x0b => {
                let (v, used) = varint(bytes);
                bytes = &bytes[used.min(bytes.len())..];
                Some(Prop::VarInt(v))
            }
            0x03 | 0x08 | 0x12 | 0x15 | 0x1a | 0x1c | 0x1f => {
                text(&mut bytes).map(|b| Prop::Str(String::from_utf8_lossy(&b).into_owned()))
            }
            0x09 | 0x16 => text(&mut bytes).map(Prop::Bin),
            0x26 => text(&mut bytes).and_then(|k| {
                text(&mut bytes).map(|v| {
                    Prop::Pair(
                        String::from_utf8_lossy(&k).into_owned(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
            }),
            _ => None,
        };
        match value {
            Some(v) => out.push((id, v)),
            None => break,
        }
    }
    out
}

/// The first property `id` in `props`.
pub fn find_prop(props: &[(u8, Prop)], id: u8) -> Option<&Prop> {
    props.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
}

/// Reads a property block with its length at the start of `bytes`; returns it and the bytes
/// used.
fn props_at(bytes: &[u8]) -> (Vec<(u8, Prop)>, usize) {
    let (len, used) = varint(bytes);
    let end = (used + len).min(bytes.len());
    (parse_props(&bytes[used..end]), end)
}

/// A will for [`connect_with`].
#[derive(Debug, Clone, Default)]
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub qos: u8,
    pub retain: bool,
    /// v5 will properties.
    pub props: Props,
}

/// A CONNECT with every field given: `flags_extra` is ORed into the connect flags (to set
/// the reserved bit, say), `props` are v5 CONNECT properties.
#[allow(clippy::too_many_arguments)]
pub fn connect_with(
    v5: bool,
    client_id: &str,
    clean: bool,
    keep_alive: u16,
    props: &Props,
    will: Option<&Will>,
    flags_extra: u8,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(b"MQTT", &mut body);
    body.push(if v5 { 5 } else { 4 });
    let mut flags = flags_extra;
    if clean {
        flags |= 0x02;
    }
    if let Some(w) = will {
        flags |= 0x04 | (w.qos << 3);
        if w.retain {
            flags |= 0x20;
        }
    }
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if v5 {
        body.extend_from_slice(&props.encoded());
    }
    string(client_id.as_bytes(), &mut body);
    if let Some(w) = will {
        if v5 {
            body.extend_from_slice(&w.props.encoded());
        }
        string(w.topic.as_bytes(), &mut body);
        string(w.payload, &mut body);
    }
    packet(0x10, &body)
}

/// PUBLISH with every field given (`pkid` is left out at QoS 0).
#[allow(clippy::too_many_arguments)]
pub fn publish_with(
    v5: bool,
    topic: &str,
    qos: u8,
    retain: bool,
    dup: bool,
    pkid: u16,
    props: &Props,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic.as_bytes(), &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        body.extend_from_slice(&props.encoded());
    }
    body.extend_from_slice(payload);
    let header = 0x30 | (u8::from(dup) << 3) | (qos << 1) | u8::from(retain);
    packet(header, &body)
}

/// PUBACK (0x40), PUBREC (0x50), PUBREL (0x62) or PUBCOMP (0x70) for `pkid`, reason success.
pub fn ack(header: u8, pkid: u16) -> Vec<u8> {
    packet(header, &pkid.to_be_bytes())
}

/// SUBSCRIBE with each filter's options byte (QoS in bits 0-1; v5: no-local 0x04,
/// retain-as-published 0x08, retain handling in bits 4-5) and v5 properties.
pub fn subscribe_with(v5: bool, pkid: u16, filters: &[(&str, u8)], props: &Props) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.extend_from_slice(&props.encoded());
    }
    for (f, options) in filters {
        string(f.as_bytes(), &mut body);
        body.push(*options);
    }
    packet(0x82, &body)
}

/// UNSUBSCRIBE with packet id `pkid`.
pub fn unsubscribe(v5: bool, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        body.push(0);
    }
    for f in filters {
        string(f.as_bytes(), &mut body);
    }
    packet(0xa2, &body)
}

/// DISCONNECT; v5 with `reason`.
pub fn disconnect(v5: bool, reason: u8) -> Vec<u8> {
    if v5 {
        packet(0xe0, &[reason, 0])
    } else {
        packet(0xe0, &[])
    }
}

/// What [`Conn::leave_unfinished`] left: a QoS 1 delivery unacknowledged, a QoS 2 one not
/// received, a QoS 2 one received but not completed.
pub struct Unfinished {
    pub one: Delivery,
    pub two: Delivery,
    pub three: Delivery,
}

/// A PUBLISH as read.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    pub topic: String,
    pub pkid: u16,
    pub props: Vec<(u8, Prop)>,
    pub payload: Vec<u8>,
}

impl Raw {
    /// CONNACK: session present, return / reason code, v5 properties.
    pub fn connack(&self, v5: bool) -> (bool, u8, Vec<(u8, Prop)>) {
        let present = self.body.first().is_some_and(|b| b & 1 == 1);
        let code = self.body.get(1).copied().unwrap_or(0xff);
        let props = if v5 && self.body.len() > 2 {
            props_at(&self.body[2..]).0
        } else {
            Vec::new()
        };
        (present, code, props)
    }

    /// A PUBLISH's parts.
    pub fn publish(&self, v5: bool) -> Delivery {
        let qos = (self.header >> 1) & 3;
        let b = &self.body;
        let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
        let topic = String::from_utf8_lossy(&b[2..2 + tlen]).into_owned();
        let mut at = 2 + tlen;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16::from_be_bytes([b[at], b[at + 1]]);
            at += 2;
        }
        let mut props = Vec::new();
        if v5 {
            let (p, used) = props_at(&b[at..]);
            props = p;
            at += used;
        }
        Delivery {
            qos,
            retain: self.header & 1 == 1,
            dup: self.header & 8 == 8,
            topic,
            pkid,
            props,
            payload: b[at..].to_vec(),
        }
    }

    /// Packet id of an acknowledgement (PUBACK … UNSUBACK).
    pub fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body[0], self.body[1]])
    }

    /// Reason code of a v5 PUBACK/PUBREC/PUBREL/PUBCOMP (success when left out).
    pub fn ack_reason(&self) -> u8 {
        self.body.get(2).copied().unwrap_or(0)
    }

    /// Reason code of a v5 DISCONNECT (normal when left out).
    pub fn disconnect_reason(&self) -> u8 {
        self.body.first().copied().unwrap_or(0)
    }

    /// The properties of a v5 SUBACK or UNSUBACK (after the packet id).
    pub fn ack_props(&self) -> Vec<(u8, Prop)> {
        props_at(&self.body[2..]).0
    }

    /// The reason codes of a SUBACK or v5 UNSUBACK (after the properties).
    pub fn codes(&self, v5: bool) -> Vec<u8> {
        let mut at = 2;
        if v5 {
            at += props_at(&self.body[2..]).1;
        }
        self.body[at..].to_vec()
    }
}

impl Conn {
    /// Opens a connection and sends `connect`; returns the connection and its CONNACK.
    pub fn handshake(addr: SocketAddr, v5: bool, connect: &[u8]) -> anyhow::Result<(Conn, Raw)> {
        let mut conn = Conn::open(addr, v5)?;
        conn.send(connect)?;
        let ack = conn.read()?;
        if ack.kind() != 2 {
            bail!("expected CONNACK, got {ack:?}");
        }
        Ok((conn, ack))
    }

    /// The next packet within `limit`, or `None` if none came (or the connection closed).
    pub fn read_within(&mut self, limit: Duration) -> Option<Raw> {
        let _ = self.stream.set_read_timeout(Some(limit));
        let got = self.read().ok();
        let _ = self.stream.set_read_timeout(Some(Duration::from_secs(10)));
        got
    }

    /// Reads until a packet of `kind` arrives, within `limit`; other packets are dropped.
    pub fn read_kind_within(&mut self, kind: u8, limit: Duration) -> Option<Raw> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.read_within(left) {
                Some(p) if p.kind() == kind => return Some(p),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Subscribes with options and properties and returns the whole SUBACK.
    pub fn subscribe_with(
        &mut self,
        pkid: u16,
        filters: &[(&str, u8)],
        props: &Props,
    ) -> anyhow::Result<Raw> {
        self.send(&subscribe_with(self.v5, pkid, filters, props))?;
        self.read_kind(9)
    }

    /// How the connection ended within `limit`: `Some(reason)` for a DISCONNECT (0 in 3.1.1),
    /// `Some(0xff)` for a close without DISCONNECT, `None` if it is still open.
    pub fn end_within(&mut self, limit: Duration) -> Option<u8> {
        let _ = self.stream.set_read_timeout(Some(limit));
        loop {
            match self.read() {
                Ok(p) if p.kind() == 14 => return Some(p.disconnect_reason()),
                Ok(_) => continue,
                Err(e) => {
                    let eof = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                        matches!(
                            io.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                        )
                    });
                    return eof.then_some(0xff);
                }
            }
        }
    }
}

impl Conn {
    /// Everything the server writes until it closes the connection; fails if it is still open
    /// after `limit`.
    pub fn read_to_close(&mut self, limit: Duration) -> anyhow::Result<Vec<u8>> {
        self.stream.set_read_timeout(Some(limit))?;
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => Ok(rest),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(rest),
            Err(e) => bail!("connection still open after {limit:?} ({e}); read {rest:?}"),
        }
    }

    /// PINGREQ, and the PINGRESP that answers it (other packets in between are skipped):
    /// proof that the connection is open and served.
    pub fn ping(&mut self) -> anyhow::Result<()> {
        self.send(&packet(0xc0, &[]))?;
        self.read_kind(13).map(|_| ())
    }
}
