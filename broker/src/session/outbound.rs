//! What the hub delivers to the client: deliveries taken from the session's queue as the
//! client's Receive Maximum allows, checked against the ACL at the moment they are written,
//! and the hub's half of QoS 1 and 2.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use rumqttd::protocol::{Packet, PubRel, PubRelReason, QoS};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Session, WRITE_BATCH};
use crate::codec::WriteError;
use crate::event_time;
use crate::packet::{publish, publish_again};
use crate::route::inflight::{Acked, Out, Outbound};
use crate::route::message::Delivery;

/// The hub's side of the session: deliveries in flight to the client.
pub(super) struct OutboundPart {
    pub(super) table: Outbound,
    /// QoS 1 and 2 deliveries the client takes unacknowledged.
    window: usize,
}

impl OutboundPart {
    pub(super) fn new(table: Outbound, window: usize) -> OutboundPart {
        OutboundPart { table, window }
    }

    fn has_room(&self) -> bool {
        self.table.len() < self.window
    }
}

impl Session {
    /// Writes queued deliveries while the client has room for them (QoS 0 needs none, but
    /// keeps its place in the order). `true` if more could go now but the batch is full.
    pub(super) fn deliver_queued(&mut self) -> bool {
        let outbox = self.route.outbox.clone();
        loop {
            if self.out.len() >= WRITE_BATCH {
                return !outbox.is_empty();
            }
            let Some(delivery) = outbox.pop(self.outbound.has_room()) else {
                return false;
            };
            self.deliver(delivery);
        }
    }

    /// Writes one delivery, or withholds it if the rules in force now do not allow it (or its
    /// consent does not cover the reading's time), or it expired, or it is larger than the
    /// client accepts (MQTT-3.1.2-25: discarded as if delivered).
    fn deliver(&mut self, delivery: Delivery) {
        let message = delivery.message.clone();
        let now = Instant::now();
        if message.expired(now) {
            self.shared
                .router
                .stats
                .expired
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut props = message.properties.clone();
        let event_ms = event_time::take(&mut props);
        let allowed = self
            .acl
            .decide_delivery(&self.peer.principal(), &message.topic, event_ms)
            .allowed;
        if !allowed {
            self.shared.stats.withheld.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let expiry = message.expiry_left(now);
        if expiry.is_some() || !delivery.subscription_ids.is_empty() {
            let props = props.get_or_insert_with(Default::default);
            props.message_expiry_interval = expiry;
            props.subscription_identifiers = delivery.subscription_ids.clone();
        }
        let qos = delivery.qos;
        let retain = delivery.retain;
        let pkid = match qos {
            QoS::AtMostOnce => 0,
            _ => match self.outbound.table.insert(delivery) {
                Some(pkid) => pkid,
                None => {
                    warn!("no free packet id for a delivery; dropped");
                    return;
                }
            },
        };
        let topic = Bytes::copy_from_slice(message.topic.as_bytes());
        let packet = publish(topic, message.payload.clone(), qos, pkid, retain);
        if self.write_delivery(Packet::Publish(packet, props)) {
            self.shared.stats.delivered.fetch_add(1, Ordering::Relaxed);
        } else if qos != QoS::AtMostOnce {
            // Not written: the exchange never started.
            match qos {
                QoS::AtLeastOnce => self.outbound.table.puback(pkid),
                _ => self.outbound.table.pubrec(pkid, true),
            };
        }
    }

    /// Encodes a delivery into the output buffer; `false` (and nothing written) if it cannot
    /// be encoded or exceeds the client's Maximum Packet Size.
    fn write_delivery(&mut self, packet: Packet) -> bool {
        match self.codec.write(packet, &mut self.out) {
            Ok(()) => true,
            Err(WriteError::TooLarge { size, max }) => {
                self.shared
                    .stats
                    .too_large_for_client
                    .fetch_add(1, Ordering::Relaxed);
                debug!(
                    size,
                    max, "delivery larger than the client accepts; discarded"
                );
                false
            }
            Err(e) => {
                warn!(error = %e, "cannot encode delivery for client; discarded");
                false
            }
        }
    }

    /// A resumed session sends again what the client had not finished (MQTT-4.4.0-1): PUBLISH
    /// with DUP for unacknowledged deliveries, PUBREL for received ones.
    pub(super) fn resend(&mut self) {
        for (pkid, out) in self.outbound.table.to_resend() {
            match out {
                Out::Published(delivery) => {
                    let message = &delivery.message;
                    let mut props = message.properties.clone();
                    event_time::take(&mut props);
                    let topic = Bytes::copy_from_slice(message.topic.as_bytes());
                    let packet = publish_again(
                        topic,
                        message.payload.clone(),
                        delivery.qos,
                        pkid,
                        delivery.retain,
                        true,
                    );
                    self.write_delivery(Packet::Publish(packet, props));
                }
                Out::Released => self.write(pubrel(pkid)),
            }
        }
    }

    pub(super) fn on_puback(&mut self, pkid: u16) {
        if self.outbound.table.puback(pkid) == Acked::Unknown {
            debug!(pkid, "PUBACK for no delivery in flight; ignored");
        }
    }

    pub(super) fn on_pubrec(&mut self, pkid: u16, refused: bool) {
        match self.outbound.table.pubrec(pkid, refused) {
            Acked::Release => self.write(pubrel(pkid)),
            Acked::Done => {}
            Acked::Unknown => {
                // MQTT 5 4.3.3: answer an unknown PUBREC with PUBREL 0x92.
                let rel = PubRel {
                    pkid,
                    reason: PubRelReason::PacketIdentifierNotFound,
                };
                self.write(Packet::PubRel(rel, None));
            }
        }
    }

    pub(super) fn on_pubcomp(&mut self, pkid: u16) {
        if self.outbound.table.pubcomp(pkid) == Acked::Unknown {
            debug!(pkid, "PUBCOMP for no delivery in flight; ignored");
        }
    }
}

fn pubrel(pkid: u16) -> Packet {
    let reason = PubRelReason::Success;
    Packet::PubRel(PubRel { pkid, reason }, None)
}
