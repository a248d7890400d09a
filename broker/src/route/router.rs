//! kenko's router: who is subscribed to what, the retained messages, and the sessions whose
//! queues deliveries go to. Calls are plain and synchronous (short critical sections, no
//! I/O); a connection learns of new deliveries from its session's [`Outbox`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rumqttd::protocol::QoS;
use tokio::time::Instant;
use tracing::warn;

use super::inflight::{Inbound, Outbound};
use super::message::{
    max_qos, min_qos, Delivery, GroupKey, Message, RetainHandling, SessionId, SubOptions,
};
use super::outbox::{Outbox, Pushed, QueueLimits};
use super::retained::Retained;
use super::topic::{parse_filter, Filter, FilterError};
use super::trie::Trie;
use crate::sync::{locked, read, write};

/// The subscriptions on one filter.
#[derive(Debug, Default)]
pub struct Subscribers {
    direct: HashMap<SessionId, Member>,
    groups: HashMap<Arc<str>, Group>,
}

impl Subscribers {
    fn is_empty(&self) -> bool {
        self.direct.is_empty() && self.groups.is_empty()
    }
}

#[derive(Debug, Clone)]
struct Member {
    options: SubOptions,
    outbox: Arc<Outbox>,
}

/// A shared subscription's members, served in turn.
#[derive(Debug)]
struct Group {
    key: Arc<GroupKey>,
    members: Vec<(SessionId, Member)>,
    next: AtomicUsize,
}

impl Group {
    /// The next member in turn, online ones first, never `exclude`.
    fn pick(&self, exclude: Option<SessionId>) -> Option<&Member> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = || {
            (0..n)
                .map(move |i| &self.members[(start + i) % n])
                .filter(|(id, _)| Some(*id) != exclude)
        };
        candidates()
            .find(|(_, m)| m.outbox.is_online())
            .or_else(|| candidates().next())
            .map(|(_, m)| m)
    }
}

/// What a session keeps between connections besides its queue.
#[derive(Debug, Default)]
pub struct SessionState {
    pub outbound: Outbound,
    pub inbound: Inbound,
}

/// A session in the router.
#[derive(Debug)]
pub struct Session {
    pub key: Arc<str>,
    pub outbox: Arc<Outbox>,
    /// Filters as subscribed (shared ones with their `$share/{group}/` prefix).
    filters: Mutex<HashSet<Box<str>>>,
    /// The in-flight tables, held by the connection while one is attached.
    state: Mutex<SessionState>,
}

impl Session {
    pub fn id(&self) -> SessionId {
        self.outbox.id
    }

    /// The in-flight tables, for the attached connection.
    pub fn state(&self) -> std::sync::MutexGuard<'_, SessionState> {
        locked(&self.state)
    }
}

/// What [`Router::subscribe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// The session had this subscription already (it was replaced).
    pub existed: bool,
    /// Retained messages queued for it.
    pub retained: usize,
}

/// Counts for `$SYS` and metrics.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub received: AtomicU64,
    pub routed: AtomicU64,
    pub dropped: AtomicU64,
    pub expired: AtomicU64,
    subscriptions: AtomicUsize,
}

/// The router.
pub struct Router {
    subscriptions: RwLock<Trie<Subscribers>>,
    retained: RwLock<Retained<Arc<Message>>>,
    sessions: Mutex<HashMap<Arc<str>, Arc<Session>>>,
    next_id: AtomicU64,
    limits: QueueLimits,
    pub stats: RouterStats,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("sessions", &self.session_count())
            .field("subscriptions", &self.subscription_count())
            .field("retained", &self.retained_count())
            .finish()
    }
}

impl Router {
    pub fn new(limits: QueueLimits) -> Router {
        Router {
            subscriptions: RwLock::new(Trie::default()),
            retained: RwLock::new(Retained::default()),
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            limits,
            stats: RouterStats::default(),
        }
    }

    /// Attaches a connection to the session `key`: a new one, or the one kept from before
    /// unless `clean` (MQTT-3.1.2-4). Returns the session and whether one was resumed
    /// (CONNACK Session Present).
    pub fn attach(&self, key: &str, clean: bool) -> (Arc<Session>, bool) {
        let old = {
            let mut sessions = locked(&self.sessions);
            match sessions.get(key) {
                Some(session) if !clean => {
                    let session = session.clone();
                    session.outbox.set_online(true);
                    return (session, true);
                }
                _ => sessions.remove(key),
            }
        };
        if let Some(old) = old {
            self.discard(&old);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            key: Arc::from(key),
            outbox: Arc::new(Outbox::new(id, self.limits)),
            filters: Mutex::new(HashSet::new()),
            state: Mutex::new(SessionState::default()),
        });
        session.outbox.set_online(true);
        locked(&self.sessions).insert(session.key.clone(), session.clone());
        (session, false)
    }

    /// The connection of `session` ended. Deliveries of shared subscriptions it had not
    /// acknowledged go to other members of their groups; the session is kept for a later
    /// connection if `keep`, else ended.
    pub fn detach(&self, session: &Arc<Session>, keep: bool) {
        session.outbox.set_online(false);
        if !keep {
            self.end(&session.key, Some(session));
            return;
        }
        let mut shared = session.state().outbound.take_shared();
        let (queued, rest): (Vec<_>, Vec<_>) = session
            .outbox
            .take_all()
            .into_iter()
            .partition(|d| d.group.is_some());
        session.outbox.unshift(rest);
        shared.extend(queued);
        self.hand_over(shared, session);
    }

    /// Ends the session `key` (its expiry came, or it ended with its connection); `only`
    /// ends it only if it is still that session (a new one may have replaced it).
    pub fn end(&self, key: &str, only: Option<&Arc<Session>>) {
        let removed = {
            let mut sessions = locked(&self.sessions);
            match sessions.get(key) {
                Some(s) if only.is_none_or(|o| Arc::ptr_eq(o, s)) => sessions.remove(key),
                _ => None,
            }
        };
        if let Some(session) = removed {
            self.discard(&session);
        }
    }

    /// Whether a session is kept under `key`.
    pub fn has_session(&self, key: &str) -> bool {
        locked(&self.sessions).contains_key(key)
    }

    /// Removes an ended session's subscriptions; what it held for shared subscriptions goes
    /// to the other members.
    fn discard(&self, session: &Arc<Session>) {
        session.outbox.set_online(false);
        let filters: Vec<Box<str>> = locked(&session.filters).drain().collect();
        for filter in &filters {
            self.remove_subscription(session.id(), filter);
        }
        let mut shared = session.state().outbound.take_shared();
        shared.extend(
            session
                .outbox
                .take_all()
                .into_iter()
                .filter(|d| d.group.is_some()),
        );
        self.hand_over(shared, session);
    }

    /// Gives shared deliveries `from` did not finish to other members of their groups; with
    /// no other member, a session that is kept keeps them.
    fn hand_over(&self, deliveries: Vec<Delivery>, from: &Arc<Session>) {
        if deliveries.is_empty() {
            return;
        }
        let kept = self.has_session(&from.key);
        let subscriptions = read(&self.subscriptions);
        let mut back = Vec::new();
        for delivery in deliveries {
            let member = delivery.group.as_ref().and_then(|key| {
                let group = subscriptions.get(&key.filter)?.groups.get(&key.group)?;
                group.pick(Some(from.id())).cloned()
            });
            match member {
                Some(member) => self.push(&member.outbox, regrant(delivery, &member.options)),
                None if kept => back.push(delivery),
                None => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        drop(subscriptions);
        from.outbox.unshift(back);
    }

    /// Subscribes `session` to `raw` (a plain or `$share/` filter) with `options`, replacing
    /// a subscription it has on the same filter, and queues the retained messages it gets
    /// (MQTT 5 Retain Handling; none for a shared subscription, MQTT 5 4.8.2).
    pub fn subscribe(
        &self,
        session: &Arc<Session>,
        raw: &str,
        options: SubOptions,
    ) -> Result<Subscribed, FilterError> {
        let filter = parse_filter(raw)?;
        let member = Member {
            options,
            outbox: session.outbox.clone(),
        };
        let id = session.id();
        let existed = {
            let mut subscriptions = write(&self.subscriptions);
            match filter {
                Filter::Plain(f) => subscriptions.entry(f).direct.insert(id, member).is_some(),
                Filter::Shared { group, filter: f } => {
                    let node = subscriptions.entry(f);
                    let group = node
                        .groups
                        .entry(Arc::from(group))
                        .or_insert_with(|| Group {
                            key: Arc::new(GroupKey {
                                filter: Arc::from(f),
                                group: Arc::from(group),
                            }),
                            members: Vec::new(),
                            next: AtomicUsize::new(0),
                        });
                    match group.members.iter_mut().find(|(m, _)| *m == id) {
                        Some((_, old)) => {
                            *old = member;
                            true
                        }
                        None => {
                            group.members.push((id, member));
                            false
                        }
                    }
                }
            }
        };
        if !existed {
            locked(&session.filters).insert(Box::from(raw));
            self.stats.subscriptions.fetch_add(1, Ordering::Relaxed);
        }
        let wants_retained = match options.retain_handling {
            RetainHandling::Always => true,
            RetainHandling::IfNew => !existed,
            RetainHandling::Never => false,
        };
        let retained = match filter {
            Filter::Plain(f) if wants_retained => self.queue_retained(session, f, &options),
            _ => 0,
        };
        Ok(Subscribed { existed, retained })
    }

    /// Removes `session`'s subscription on `raw`; whether it had one (MQTT 5 UNSUBACK 0x11).
    pub fn unsubscribe(&self, session: &Arc<Session>, raw: &str) -> bool {
        let had = locked(&session.filters).remove(raw);
        if had {
            self.remove_subscription(session.id(), raw);
        }
        had
    }

    fn remove_subscription(&self, id: SessionId, raw: &str) {
        let Ok(filter) = parse_filter(raw) else {
            return;
        };
        let mut subscriptions = write(&self.subscriptions);
        let f = match filter {
            Filter::Plain(f) => {
                if let Some(node) = subscriptions.get_mut(f) {
                    node.direct.remove(&id);
                }
                f
            }
            Filter::Shared { group, filter: f } => {
                if let Some(node) = subscriptions.get_mut(f) {
                    if let Entry::Occupied(mut g) = node.groups.entry(Arc::from(group)) {
                        g.get_mut().members.retain(|(m, _)| *m != id);
                        if g.get().members.is_empty() {
                            g.remove();
                        }
                    }
                }
                f
            }
        };
        subscriptions.remove_if(f, Subscribers::is_empty);
        self.stats.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    fn queue_retained(&self, session: &Session, filter: &str, options: &SubOptions) -> usize {
        let now = Instant::now();
        let mut found = Vec::new();
        read(&self.retained).for_each_matching(filter, |_, message| {
            if !message.expired(now) {
                found.push(message.clone());
            }
        });
        let n = found.len();
        for message in found {
            let delivery = Delivery {
                qos: min_qos(message.qos, options.qos),
                // MQTT-3.3.1-8: a retained message sent for a new subscription has RETAIN 1.
                retain: true,
                subscription_ids: options.id.into_iter().collect(),
                group: None,
                message,
            };
            self.push(&session.outbox, delivery);
        }
        n
    }

    /// Routes a message to every matching subscription and keeps or clears it as the retained
    /// message of its topic. Returns the number of deliveries queued.
    pub fn publish(&self, message: Message) -> usize {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        let message = Arc::new(message);
        if message.retain {
            let mut retained = write(&self.retained);
            if message.payload.is_empty() {
                // MQTT-3.3.1-10/11: an empty retained message clears the topic's and is not
                // kept itself.
                retained.clear(&message.topic);
            } else {
                retained.set(&message.topic, message.clone());
            }
        }
        let targets = self.targets(&message);
        let n = targets.len();
        for (outbox, delivery) in targets {
            self.push(&outbox, delivery);
        }
        self.stats.routed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// One delivery per session with matching plain subscriptions (at the highest QoS they
    /// grant, with all their identifiers, MQTT-3.3.4-2/-4), plus one per shared group.
    fn targets(&self, message: &Arc<Message>) -> Vec<(Arc<Outbox>, Delivery)> {
        let mut direct: HashMap<SessionId, (Arc<Outbox>, Delivery)> = HashMap::new();
        let mut shared = Vec::new();
        let subscriptions = read(&self.subscriptions);
        subscriptions.for_each_match(&message.topic, |subscribers| {
            for (id, member) in &subscribers.direct {
                if member.options.no_local && message.origin == Some(*id) {
                    continue;
                }
                let options = &member.options;
                let qos = min_qos(message.qos, options.qos);
                let retain = message.retain && options.retain_as_published;
                match direct.entry(*id) {
                    Entry::Occupied(mut e) => {
                        let d = &mut e.get_mut().1;
                        d.qos = max_qos(d.qos, qos);
                        d.retain |= retain;
                        d.subscription_ids.extend(options.id);
                    }
                    Entry::Vacant(e) => {
                        let delivery = Delivery {
                            message: message.clone(),
                            qos,
                            retain,
                            subscription_ids: options.id.into_iter().collect(),
                            group: None,
                        };
                        e.insert((member.outbox.clone(), delivery));
                    }
                }
            }
            for group in subscribers.groups.values() {
                if let Some(member) = group.pick(None) {
                    let options = &member.options;
                    let delivery = Delivery {
                        message: message.clone(),
                        qos: min_qos(message.qos, options.qos),
                        retain: message.retain && options.retain_as_published,
                        subscription_ids: options.id.into_iter().collect(),
                        group: Some(group.key.clone()),
                    };
                    shared.push((member.outbox.clone(), delivery));
                }
            }
        });
        drop(subscriptions);
        let mut targets: Vec<_> = direct.into_values().collect();
        targets.extend(shared);
        targets
    }

    /// Queues a delivery; a full queue drops for its session alone, counted, and logged
    /// once per episode.
    fn push(&self, outbox: &Outbox, delivery: Delivery) {
        if outbox.push(delivery) == Pushed::Queued {
            return;
        }
        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        if outbox.warning_due() {
            let (qos0, qos12) = outbox.dropped();
            warn!(
                session = outbox.id,
                dropped_qos0 = qos0,
                dropped_qos12 = qos12,
                "a session's queue is full (mqtt.max_queued_messages / max_queued_bytes): its \
                 deliveries are dropped, QoS 0 first, until its client catches up"
            );
        }
    }

    /// Subscriptions in force (each member of a shared group counts once).
    pub fn subscription_count(&self) -> usize {
        self.stats.subscriptions.load(Ordering::Relaxed)
    }

    pub fn retained_count(&self) -> usize {
        read(&self.retained).len()
    }

    pub fn session_count(&self) -> usize {
        locked(&self.sessions).len()
    }

    /// Sessions whose queues dropped deliveries: (key, dropped QoS 0, dropped QoS 1/2).
    pub fn drops(&self) -> Vec<(Arc<str>, u64, u64)> {
        locked(&self.sessions)
            .values()
            .filter_map(|s| {
                let (q0, q12) = s.outbox.dropped();
                (q0 + q12 > 0).then(|| (s.key.clone(), q0, q12))
            })
            .collect()
    }

    /// Memory held by the subscription and retained tables, as node counts (tests of bounded
    /// state).
    pub fn node_counts(&self) -> (usize, usize) {
        (
            read(&self.subscriptions).node_count(),
            read(&self.retained).node_count(),
        )
    }
}

/// A shared delivery taken over by another member, at what that member was granted.
fn regrant(mut delivery: Delivery, options: &SubOptions) -> Delivery {
    delivery.qos = min_qos(delivery.message.qos, options.qos);
    delivery.subscription_ids = options.id.into_iter().collect();
    delivery
}

/// A QoS that needs no acknowledgement.
pub fn is_qos0(qos: QoS) -> bool {
    qos == QoS::AtMostOnce
}
