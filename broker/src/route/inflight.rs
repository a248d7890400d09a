//! The two in-flight tables of a session, one per direction, each a state per packet id:
//! QoS 1 and 2 deliveries the client has not finished, and QoS 1 and 2 publishes from the
//! client the hub has not finished.

use std::collections::HashMap;

use rumqttd::protocol::QoS;

use super::message::Delivery;

/// Exchanges' room an empty table keeps.
const KEPT_CAPACITY: usize = 16;

/// Where an outgoing QoS 1 or 2 delivery stands.
#[derive(Debug, Clone)]
pub enum Out {
    /// PUBLISH written; awaiting PUBACK (QoS 1) or PUBREC (QoS 2).
    Published(Delivery),
    /// PUBREL written; awaiting PUBCOMP.
    Released,
}

/// What an acknowledgement from the client did.
#[derive(Debug, PartialEq, Eq)]
pub enum Acked {
    /// The exchange is over; its slot is free.
    Done,
    /// PUBREC accepted: the hub now sends PUBREL.
    Release,
    /// Not an exchange in this state (a late or duplicate acknowledgement): ignored.
    Unknown,
}

/// QoS 1 and 2 deliveries in flight to the client, by packet id.
#[derive(Debug, Default)]
pub struct Outbound {
    slots: HashMap<u16, (u64, Out)>,
    /// Order of sending, so that a resumed session resends in order (MQTT-4.6.0-1).
    sent: u64,
    last_pkid: u16,
}

impl Outbound {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Takes a free packet id for `delivery` (QoS 1 or 2); `None` if all 65,535 are in use.
    pub fn insert(&mut self, delivery: Delivery) -> Option<u16> {
        for _ in 0..u16::MAX {
            self.last_pkid = self.last_pkid.checked_add(1).unwrap_or(1);
            if !self.slots.contains_key(&self.last_pkid) {
                self.sent += 1;
                self.slots
                    .insert(self.last_pkid, (self.sent, Out::Published(delivery)));
                return Some(self.last_pkid);
            }
        }
        None
    }

    /// PUBACK: ends a QoS 1 delivery.
    pub fn puback(&mut self, pkid: u16) -> Acked {
        match self.slots.get(&pkid) {
            Some((_, Out::Published(d))) if d.qos == QoS::AtLeastOnce => self.end(pkid),
            _ => Acked::Unknown,
        }
    }

    /// PUBREC: a QoS 2 delivery goes on to PUBREL, or ends if the client refused it
    /// (reason code 0x80 or above, MQTT 5 4.3.3).
    pub fn pubrec(&mut self, pkid: u16, refused: bool) -> Acked {
        match self.slots.get_mut(&pkid) {
            Some((_, out @ Out::Published(_))) => {
                if refused {
                    return self.end(pkid);
                }
                *out = Out::Released;
                Acked::Release
            }
            // A PUBREC again after PUBREL was sent: send PUBREL again.
            Some((_, Out::Released)) => Acked::Release,
            None => Acked::Unknown,
        }
    }

    /// PUBCOMP: ends a QoS 2 delivery.
    pub fn pubcomp(&mut self, pkid: u16) -> Acked {
        match self.slots.get(&pkid) {
            Some((_, Out::Released)) => self.end(pkid),
            _ => Acked::Unknown,
        }
    }

    /// Ends the exchange on `pkid`. An emptied table gives its memory back beyond a little.
    fn end(&mut self, pkid: u16) -> Acked {
        self.slots.remove(&pkid);
        if self.slots.is_empty() && self.slots.capacity() > KEPT_CAPACITY {
            self.slots = HashMap::new();
        }
        Acked::Done
    }

    /// What a resumed session sends again, in the order first sent: PUBLISH with DUP for
    /// deliveries not acknowledged, PUBREL for those received (MQTT-4.4.0-1).
    pub fn to_resend(&self) -> Vec<(u16, Out)> {
        let mut slots: Vec<_> = self
            .slots
            .iter()
            .map(|(pkid, (order, out))| (*order, *pkid, out.clone()))
            .collect();
        slots.sort_unstable_by_key(|(order, ..)| *order);
        slots
            .into_iter()
            .map(|(_, pkid, out)| (pkid, out))
            .collect()
    }

    /// Takes out the shared-subscription deliveries the client has not acknowledged, for
    /// another member of their group (MQTT 5 4.8.2).
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let mut taken: Vec<(u64, Delivery)> = Vec::new();
        self.slots.retain(|_, (order, out)| match out {
            Out::Published(d) if d.group.is_some() => {
                taken.push((*order, d.clone()));
                false
            }
            _ => true,
        });
        taken.sort_unstable_by_key(|(order, _)| *order);
        taken.into_iter().map(|(_, d)| d).collect()
    }
}

/// Where an incoming QoS 1 or 2 publish stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum In {
    /// Handed to the ingest pipeline; its verdict answers it.
    Pipeline(QoS),
    /// PUBREC written; awaiting PUBREL.
    AwaitingRelease,
}

/// QoS 1 and 2 publishes from the client not yet finished, by packet id: what the hub's
/// Receive Maximum bounds.
#[derive(Debug, Default)]
pub struct Inbound {
    slots: HashMap<u16, In>,
}

impl Inbound {
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn get(&self, pkid: u16) -> Option<In> {
        self.slots.get(&pkid).copied()
    }

    pub fn set(&mut self, pkid: u16, state: In) {
        self.slots.insert(pkid, state);
    }

    pub fn remove(&mut self, pkid: u16) -> Option<In> {
        self.slots.remove(&pkid)
    }

    /// What outlives the connection: QoS 2 publishes awaiting PUBREL (MQTT 4.1). Verdicts on
    /// publishes still in the pipeline will not come to a new connection, so the client
    /// sends those again.
    pub fn keep_for_session(&mut self) {
        self.slots.retain(|_, state| *state == In::AwaitingRelease);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: QoS) -> Delivery {
        Delivery::for_test(qos)
    }

    #[test]
    fn an_emptied_table_gives_back_what_a_full_window_took() {
        let mut table = Outbound::default();
        let pkids: Vec<u16> = (0..100)
            .map(|_| table.insert(delivery(QoS::AtLeastOnce)).expect("free id"))
            .collect();
        assert!(table.slots.capacity() >= 100);
        for pkid in pkids {
            assert_eq!(table.puback(pkid), Acked::Done);
        }
        assert!(table.is_empty());
        assert!(table.slots.capacity() <= KEPT_CAPACITY);
    }

    #[test]
    fn qos_2_goes_through_pubrec_and_pubcomp_once() {
        let mut table = Outbound::default();
        let pkid = table.insert(delivery(QoS::ExactlyOnce)).expect("free id");
        assert_eq!(table.puback(pkid), Acked::Unknown, "not a QoS 1 exchange");
        assert_eq!(table.pubrec(pkid, false), Acked::Release);
        assert_eq!(
            table.pubrec(pkid, false),
            Acked::Release,
            "PUBREC again: PUBREL again"
        );
        assert_eq!(table.pubcomp(pkid), Acked::Done);
        assert_eq!(table.pubcomp(pkid), Acked::Unknown);
        assert!(table.is_empty());
    }
}
