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

fn varint(bytes: &[u8]) -> (usize, usize) {
    let mut value = 0usize;
    for (i, b) in bytes.iter().enumerate().take(4) {
        value |= usize::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    (value, 4)
}
