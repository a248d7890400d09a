//! What the router moves: a message as published, the options of a subscription, and one
//! delivery of a message to one session.

use std::sync::Arc;

use bytes::Bytes;
use rumqttd::protocol::{PublishProperties, QoS};
use tokio::time::Instant;

/// A session's number in the router, unique for the router's life.
pub type SessionId = u64;

/// An application message as the router received it, shared by all of its deliveries.
#[derive(Debug)]
pub struct Message {
    /// The topic name, checked (valid UTF-8, no wildcards) before the router sees it.
    pub topic: Arc<str>,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Properties relayed unchanged (user properties in order, payload format indicator,
    /// content type, response topic, correlation data). Topic alias and subscription
    /// identifiers are taken off: they belong to one connection.
    pub properties: Option<PublishProperties>,
    /// When the message expires (MQTT 5 Message Expiry Interval, from its reception).
    pub expires_at: Option<Instant>,
    /// The session that published it (no-local), `None` for the hub's own messages.
    pub origin: Option<SessionId>,
}

impl Message {
    /// A message; takes the expiry out of the properties (each delivery says what is left).
    pub fn new(
        topic: Arc<str>,
        payload: Bytes,
        qos: QoS,
        retain: bool,
        mut properties: Option<PublishProperties>,
        origin: Option<SessionId>,
    ) -> Message {
        let mut expires_at = None;
        if let Some(props) = properties.as_mut() {
            props.topic_alias = None;
            props.subscription_identifiers.clear();
            expires_at = props
                .message_expiry_interval
                .take()
                .map(|s| Instant::now() + std::time::Duration::from_secs(u64::from(s)));
        }
        Message {
            topic,
            // A payload read from a connection shares that connection's read buffer; a message
            // kept (retained, or queued for a session away) must not pin the whole buffer, and
            // the queue bounds count what the message itself holds.
            payload: Bytes::copy_from_slice(&payload),
            qos,
            retain,
            properties,
            expires_at,
            origin,
        }
    }

    /// Whether the message has expired at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }

    /// Seconds of life left at `now`, rounded up, for the delivery's Message Expiry
    /// Interval (MQTT-3.3.2-6).
    pub fn expiry_left(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|at| {
            let left = at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX)
        })
    }

    /// Bytes the message holds, for the bounds of session queues.
    pub fn size(&self) -> usize {
        self.topic.len() + self.payload.len()
    }
}

/// How a retained message is sent when a subscription is made (MQTT 5 Retain Handling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainHandling {
    /// 0: at every SUBSCRIBE.
    Always,
    /// 1: only when the subscription did not exist.
    IfNew,
    /// 2: never.
    Never,
}

/// The options of one subscription, as granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The granted QoS: deliveries go at min(message QoS, this).
    pub qos: QoS,
    /// Messages the session published itself are not delivered to it (MQTT 5).
    pub no_local: bool,
    /// Deliveries keep the message's RETAIN flag (MQTT 5); otherwise it is 0.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
    /// The Subscription Identifier sent with each delivery (MQTT 5).
    pub id: Option<usize>,
}

impl SubOptions {
    /// Options of a plain MQTT 3.1.1 subscription at `qos`.
    pub fn at(qos: QoS) -> SubOptions {
        SubOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::Always,
            id: None,
        }
    }
}

/// A shared subscription's group: the filter it is on and its name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub filter: Arc<str>,
    pub group: Arc<str>,
}

/// One message on its way to one session.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(message QoS, the highest granted QoS of the matching subscriptions).
    pub qos: QoS,
    /// The RETAIN flag of the PUBLISH.
    pub retain: bool,
    /// Identifiers of the matching subscriptions that carry one.
    pub subscription_ids: Vec<usize>,
    /// Set for a delivery through a shared subscription: another member takes it over if
    /// this session goes before acknowledging it. Behind an `Arc`: deliveries are many,
    /// shared ones few.
    pub group: Option<Arc<GroupKey>>,
}

impl Delivery {
    pub fn size(&self) -> usize {
        self.message.size()
    }

    /// A delivery of a one-byte message on `a/b` at `qos`, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(qos: QoS) -> Delivery {
        let payload = Bytes::from_static(b"x");
        let message = Message::new("a/b".into(), payload, qos, false, None, None);
        Delivery {
            message: Arc::new(message),
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            group: None,
        }
    }
}

/// The lower of two QoS levels.
pub fn min_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) {
        a
    } else {
        b
    }
}

/// The higher of two QoS levels.
pub fn max_qos(a: QoS, b: QoS) -> QoS {
    if (a as u8) >= (b as u8) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deliveries are many (one per subscriber per message, queued and in flight): each byte
    /// counts a thousand times in a fan-out.
    #[test]
    fn a_delivery_stays_small() {
        assert!(
            std::mem::size_of::<Delivery>() <= 48,
            "{}",
            std::mem::size_of::<Delivery>()
        );
    }
}
