//! A session's queue of deliveries: filled by publishers, emptied by the session's connection,
//! bounded in messages and bytes so that one slow or absent session costs only itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rumqttd::protocol::QoS;
use tokio::sync::Notify;

use super::message::{Delivery, SessionId};
use crate::sync::locked;

/// The least time between two log lines about one session's dropped deliveries.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Deliveries' room an empty queue keeps.
const KEPT_CAPACITY: usize = 16;

/// How much one session's queue may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

/// What a full queue did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// A QoS 0 delivery already queued made room for this one.
    QueuedDroppingQos0,
    /// This delivery was dropped.
    Dropped,
}

/// A session's deliveries, shared between the router (which fills it) and the connection.
#[derive(Debug)]
pub struct Outbox {
    pub id: SessionId,
    queue: Mutex<Queue>,
    wake: Notify,
    online: AtomicBool,
    /// When a drop was last logged: at most one line per session per [`WARN_EVERY`].
    warned_at: Mutex<Option<Instant>>,
    /// Deliveries dropped because the queue was full, QoS 0 and QoS 1/2.
    dropped_qos0: AtomicU64,
    dropped_qos12: AtomicU64,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Delivery>,
    bytes: usize,
    qos0: usize,
    limits: QueueLimits,
}

impl Outbox {
    pub fn new(id: SessionId, limits: QueueLimits) -> Outbox {
        Outbox {
            id,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                qos0: 0,
                limits,
            }),
            wake: Notify::new(),
            online: AtomicBool::new(false),
            warned_at: Mutex::new(None),
            dropped_qos0: AtomicU64::new(0),
            dropped_qos12: AtomicU64::new(0),
        }
    }

    /// Queues a delivery. When the queue is full a QoS 0 delivery gives way first: the oldest
    /// queued one, or the new one if it is QoS 0 itself; a QoS 1/2 delivery that finds only
    /// QoS 1/2 ahead of it is dropped.
    pub fn push(&self, delivery: Delivery) -> Pushed {
        let qos = delivery.qos;
        let pushed = locked(&self.queue).push(delivery);
        match pushed {
            Pushed::Queued => {}
            Pushed::QueuedDroppingQos0 => self.count_drop(QoS::AtMostOnce),
            Pushed::Dropped => self.count_drop(qos),
        }
        if pushed != Pushed::Dropped {
            self.wake.notify_one();
        }
        pushed
    }

    /// Puts deliveries back at the front (a connection that ends hands back what it took but
    /// did not write), in their order, beyond the limits if need be: they were queued once.
    pub fn unshift(&self, deliveries: Vec<Delivery>) {
        let mut queue = locked(&self.queue);
        for delivery in deliveries.into_iter().rev() {
            queue.account(&delivery, true);
            queue.items.push_front(delivery);
        }
    }

    /// Takes the next delivery; without `room` for a QoS 1/2 one, the first QoS 0 one, which
    /// need not wait (MQTT-3.3.4-10).
    pub fn pop(&self, room: bool) -> Option<Delivery> {
        let mut queue = locked(&self.queue);
        let at = match room {
            true => 0,
            false if queue.qos0 == 0 => return None,
            false => queue.items.iter().position(|d| d.qos == QoS::AtMostOnce)?,
        };
        let delivery = queue.items.remove(at)?;
        queue.account(&delivery, false);
        queue.give_back_if_empty();
        Some(delivery)
    }

    /// Takes every delivery queued.
    pub fn take_all(&self) -> Vec<Delivery> {
        let mut queue = locked(&self.queue);
        queue.bytes = 0;
        queue.qos0 = 0;
        std::mem::take(&mut queue.items).into()
    }

    pub fn len(&self) -> usize {
        locked(&self.queue).items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until something is pushed (returns at once if something was pushed since the
    /// last wait).
    pub async fn pushed(&self) {
        self.wake.notified().await
    }

    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    pub fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// Deliveries dropped for a full queue: (QoS 0, QoS 1/2).
    pub fn dropped(&self) -> (u64, u64) {
        (
            self.dropped_qos0.load(Ordering::Relaxed),
            self.dropped_qos12.load(Ordering::Relaxed),
        )
    }

    /// Whether this drop is worth a log line: the first, or the first for [`WARN_EVERY`]
    /// (a client that keeps falling behind gets a line now and then with the running counts,
    /// not one per drop).
    pub fn warning_due(&self) -> bool {
        let mut warned_at = locked(&self.warned_at);
        let now = Instant::now();
        match *warned_at {
            Some(at) if now.duration_since(at) < WARN_EVERY => false,
            _ => {
                *warned_at = Some(now);
                true
            }
        }
    }

    fn count_drop(&self, qos: QoS) {
        let counter = match qos {
            QoS::AtMostOnce => &self.dropped_qos0,
            _ => &self.dropped_qos12,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Queue {
    fn full_for(&self, delivery: &Delivery) -> bool {
        self.items.len() >= self.limits.max_messages
            || self.bytes + delivery.size() > self.limits.max_bytes
    }

    fn push(&mut self, delivery: Delivery) -> Pushed {
        if !self.full_for(&delivery) {
            self.account(&delivery, true);
            self.items.push_back(delivery);
            return Pushed::Queued;
        }
        if delivery.qos == QoS::AtMostOnce || self.qos0 == 0 {
            return Pushed::Dropped;
        }
        let Some(at) = self.items.iter().position(|d| d.qos == QoS::AtMostOnce) else {
            return Pushed::Dropped;
        };
        if let Some(old) = self.items.remove(at) {
            self.account(&old, false);
        }
        self.account(&delivery, true);
        self.items.push_back(delivery);
        Pushed::QueuedDroppingQos0
    }

    /// An emptied queue gives its memory back beyond a little: a burst to a thousand
    /// subscribers must not stay allocated a thousand times once delivered.
    fn give_back_if_empty(&mut self) {
        if self.items.is_empty() && self.items.capacity() > KEPT_CAPACITY {
            self.items = VecDeque::new();
        }
    }

    fn account(&mut self, delivery: &Delivery, added: bool) {
        let qos0 = usize::from(delivery.qos == QoS::AtMostOnce);
        if added {
            self.bytes += delivery.size();
            self.qos0 += qos0;
        } else {
            self.bytes = self.bytes.saturating_sub(delivery.size());
            self.qos0 = self.qos0.saturating_sub(qos0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(qos: QoS) -> Delivery {
        Delivery::for_test(qos)
    }

    fn capacity(outbox: &Outbox) -> usize {
        locked(&outbox.queue).items.capacity()
    }

    #[test]
    fn an_emptied_queue_gives_back_what_a_burst_took() {
        let limits = QueueLimits {
            max_messages: 1000,
            max_bytes: 1 << 20,
        };
        let outbox = Outbox::new(1, limits);
        for _ in 0..500 {
            assert_eq!(outbox.push(delivery(QoS::AtLeastOnce)), Pushed::Queued);
        }
        assert!(capacity(&outbox) >= 500);
        while outbox.pop(true).is_some() {}
        assert!(capacity(&outbox) <= KEPT_CAPACITY, "{}", capacity(&outbox));
        for _ in 0..500 {
            outbox.push(delivery(QoS::AtMostOnce));
        }
        assert_eq!(outbox.take_all().len(), 500);
        assert!(capacity(&outbox) <= KEPT_CAPACITY, "{}", capacity(&outbox));
    }

    #[test]
    fn a_full_queue_drops_qos_0_first_and_counts_it() {
        let limits = QueueLimits {
            max_messages: 2,
            max_bytes: 1 << 20,
        };
        let outbox = Outbox::new(1, limits);
        outbox.push(delivery(QoS::AtMostOnce));
        outbox.push(delivery(QoS::AtLeastOnce));
        assert_eq!(
            outbox.push(delivery(QoS::AtLeastOnce)),
            Pushed::QueuedDroppingQos0
        );
        assert_eq!(outbox.push(delivery(QoS::AtLeastOnce)), Pushed::Dropped);
        assert_eq!(outbox.dropped(), (1, 1));
        assert_eq!(outbox.len(), 2);
    }
}
