//! Acknowledgements of outgoing QoS 1 and 2 deliveries, handed to the router in the order it
//! sent the deliveries.
//!
//! kenko withholds deliveries the ACL does not allow; the router still waits for their
//! acknowledgements, and it accepts acknowledgements only in the order it sent the packets
//! (otherwise it drops the connection). So every delivery gets a slot in sending order, the
//! client's acknowledgements fill their slots, withheld deliveries are acknowledged by kenko,
//! and slots go to the router from the front as soon as they are filled. This also puts a
//! client's out-of-order acknowledgements (which MQTT allows) in the order the router needs.

use std::collections::{HashSet, VecDeque};

use rumqttd::protocol::{
    Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason,
};

/// A delivery by router packet id; `done` once its acknowledgement may go to the router.
/// The router looks only at the packet id of an acknowledgement, so that is all that is kept.
#[derive(Debug, Clone, Copy)]
struct Slot {
    pkid: u16,
    done: bool,
}

#[derive(Debug, Default)]
pub(crate) struct AckOrder {
    /// QoS 1 and 2 deliveries awaiting PUBACK / PUBREC.
    acks: VecDeque<(bool, Slot)>,
    /// QoS 2 deliveries whose PUBREC went to the router, awaiting PUBCOMP.
    comps: VecDeque<Slot>,
    /// Withheld QoS 2 deliveries whose PUBREL from the router must not reach the client.
    swallow: HashSet<u16>,
}

impl AckOrder {
    /// A QoS 1 (`qos2 == false`) or QoS 2 delivery with router packet id `pkid`; `withheld`
    /// if the client does not get it. Returns acknowledgements now due to the router.
    pub(crate) fn delivered(
        &mut self,
        pkid: u16,
        qos2: bool,
        withheld: bool,
        to_router: &mut Vec<Packet>,
    ) {
        self.acks.push_back((
            qos2,
            Slot {
                pkid,
                done: withheld,
            },
        ));
        if withheld && qos2 {
            self.swallow.insert(pkid);
        }
        self.drain(to_router);
    }

    /// The client's PUBACK or PUBREC. An acknowledgement of nothing kenko sent on this
    /// connection (a resend after reconnecting) goes to the router unchanged.
    pub(crate) fn client_ack(&mut self, packet: Packet, to_router: &mut Vec<Packet>) {
        let (pkid, refused) = match &packet {
            Packet::PubAck(ack, _) => (ack.pkid, false),
            Packet::PubRec(rec, _) => (rec.pkid, is_refusal(rec.reason)),
            _ => {
                to_router.push(packet);
                return;
            }
        };
        match self
            .acks
            .iter_mut()
            .find(|(_, slot)| slot.pkid == pkid && !slot.done)
        {
            Some((_, slot)) => {
                slot.done = true;
                if refused {
                    // A refusing PUBREC ends the exchange (MQTT 5 4.3.3): the router, which
                    // gets a plain PUBREC, answers with a PUBREL the client must not see,
                    // and kenko gives the PUBCOMP.
                    self.swallow.insert(pkid);
                }
            }
            None => to_router.push(packet),
        }
        self.drain(to_router);
    }

    /// The client's PUBCOMP.
    pub(crate) fn client_comp(&mut self, packet: Packet, to_router: &mut Vec<Packet>) {
        let Packet::PubComp(comp, _) = &packet else {
            to_router.push(packet);
            return;
        };
        let pkid = comp.pkid;
        match self
            .comps
            .iter_mut()
            .find(|slot| slot.pkid == pkid && !slot.done)
        {
            Some(slot) => slot.done = true,
            None => to_router.push(packet),
        }
        self.drain(to_router);
    }

    /// The router's PUBREL for `pkid`: `false` if it belongs to a withheld delivery and must
    /// not reach the client.
    pub(crate) fn router_pubrel(&mut self, pkid: u16) -> bool {
        !self.swallow.remove(&pkid)
    }

    /// Deliveries whose acknowledgement has not gone to the router.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.acks.len() + self.comps.len()
    }

    fn drain(&mut self, to_router: &mut Vec<Packet>) {
        while let Some(&(qos2, slot)) = self.acks.front() {
            if !slot.done {
                break;
            }
            self.acks.pop_front();
            to_router.push(synthetic_ack(slot.pkid, qos2));
            if qos2 {
                // The router answers the PUBREC with PUBREL and then waits for PUBCOMP, in
                // PUBREC order; a withheld delivery's PUBCOMP is kenko's to give.
                self.comps.push_back(Slot {
                    pkid: slot.pkid,
                    done: self.swallow.contains(&slot.pkid),
                });
            }
        }
        while let Some(&slot) = self.comps.front() {
            if !slot.done {
                break;
            }
            self.comps.pop_front();
            to_router.push(synthetic_comp(slot.pkid));
        }
    }
}

/// Whether a PUBREC refuses the message (reason 0x80 or above), which ends a QoS 2 exchange.
pub(crate) fn is_refusal(reason: PubRecReason) -> bool {
    !matches!(
        reason,
        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
    )
}

fn synthetic_ack(pkid: u16, qos2: bool) -> Packet {
    if qos2 {
        Packet::PubRec(
            PubRec {
                pkid,
                reason: PubRecReason::Success,
            },
            None,
        )
    } else {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::Success,
            },
            None,
        )
    }
}

fn synthetic_comp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(packets: &[Packet]) -> Vec<(char, u16)> {
        packets
            .iter()
            .map(|p| match p {
                Packet::PubAck(a, _) => ('A', a.pkid),
                Packet::PubRec(r, _) => ('R', r.pkid),
                Packet::PubComp(c, _) => ('C', c.pkid),
                _ => ('?', 0),
            })
            .collect()
    }

    fn puback(pkid: u16) -> Packet {
        synthetic_ack(pkid, false)
    }

    #[test]
    fn withheld_deliveries_are_acknowledged_in_their_turn() {
        let mut order = AckOrder::default();
        let mut out = Vec::new();
        order.delivered(1, false, false, &mut out);
        order.delivered(2, false, true, &mut out);
        order.delivered(3, false, false, &mut out);
        assert!(
            out.is_empty(),
            "nothing is due before the client acknowledges 1"
        );
        order.client_ack(puback(3), &mut out);
        assert!(out.is_empty(), "3 waits for 1");
        order.client_ack(puback(1), &mut out);
        assert_eq!(ids(&out), vec![('A', 1), ('A', 2), ('A', 3)]);
        assert_eq!(order.len(), 0);
    }

    #[test]
    fn a_withheld_delivery_at_the_front_is_acknowledged_at_once() {
        let mut order = AckOrder::default();
        let mut out = Vec::new();
        order.delivered(7, false, true, &mut out);
        assert_eq!(ids(&out), vec![('A', 7)]);
    }

    #[test]
    fn qos2_withheld_gets_rec_and_comp_and_its_pubrel_is_swallowed() {
        let mut order = AckOrder::default();
        let mut out = Vec::new();
        order.delivered(1, true, false, &mut out);
        order.delivered(2, true, true, &mut out);
        assert!(out.is_empty());
        order.client_ack(synthetic_ack(1, true), &mut out);
        // PUBREC 1, PUBREC 2; PUBCOMP 2 waits behind the client's PUBCOMP 1.
        assert_eq!(ids(&out), vec![('R', 1), ('R', 2)]);
        assert!(order.router_pubrel(1), "the client's own PUBREL reaches it");
        assert!(!order.router_pubrel(2), "the withheld one does not");
        out.clear();
        order.client_comp(synthetic_comp(1), &mut out);
        assert_eq!(ids(&out), vec![('C', 1), ('C', 2)]);
        assert_eq!(order.len(), 0);
    }

    #[test]
    fn a_refusing_pubrec_ends_the_exchange_with_kenkos_pubcomp() {
        let mut order = AckOrder::default();
        let mut out = Vec::new();
        order.delivered(5, true, false, &mut out);
        let refusal = Packet::PubRec(
            PubRec {
                pkid: 5,
                reason: PubRecReason::QuotaExceeded,
            },
            None,
        );
        order.client_ack(refusal, &mut out);
        assert_eq!(ids(&out), vec![('R', 5), ('C', 5)]);
        assert!(!order.router_pubrel(5), "the client gets no PUBREL");
        assert_eq!(order.len(), 0);
    }

    #[test]
    fn unknown_acknowledgements_pass_through() {
        let mut order = AckOrder::default();
        let mut out = Vec::new();
        order.client_ack(puback(9), &mut out);
        order.client_comp(synthetic_comp(4), &mut out);
        assert_eq!(ids(&out), vec![('A', 9), ('C', 4)]);
    }
}
