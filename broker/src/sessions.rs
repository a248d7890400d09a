//! Which client ids are connected, so that a new CONNECT with the same id takes the session
//! over: the old connection is told to stop and has handed its session back to the router
//! before the new one attaches to it. Also the timers of delayed wills and of sessions
//! waiting out their expiry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::sync::locked;

/// The live connection of each client id.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<Arc<str>, Slot>>,
    serial: AtomicU64,
    /// Wills waiting out their delay, by client id: a new connection with the id cancels it.
    wills: Mutex<HashMap<Arc<str>, CancellationToken>>,
    /// Sessions waiting out their expiry interval, by router id ([`router_id`]): a new
    /// connection to the session cancels it.
    expiries: Mutex<HashMap<String, CancellationToken>>,
}

/// The name of a session in the router: principal and client id, joined by a control
/// character that neither may contain. The router keeps persistent
/// sessions by this name alone, so a session left by one principal is never resumed, or
/// wiped, by another that uses the same client id.
pub(crate) fn router_id(principal: &str, client_id: &str) -> String {
    format!("{principal}\u{1f}{client_id}")
}

/// What [`Sessions::claim_expired`] gives the task that ends an expired session.
pub(crate) enum Expired {
    /// The session was resumed or is being resumed: leave it.
    Resumed,
    /// End it; the registration (if any) keeps a reconnecting client waiting meanwhile.
    End(Option<Registration>),
}

struct Slot {
    serial: u64,
    principal: Arc<str>,
    takeover: CancellationToken,
    done: watch::Receiver<bool>,
    /// Said once the connection is accepted (none for an expiring session's hold).
    about: Option<About>,
}

/// What operators see of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct About {
    /// When the hub accepted it, epoch ms.
    pub since_ms: i64,
    pub source: std::net::IpAddr,
    /// "3.1.1" or "5".
    pub protocol: &'static str,
}

/// A connected client, as `GET /api/v1/mqtt/sessions` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    pub client_id: Arc<str>,
    pub principal: Arc<str>,
    pub about: About,
}

/// A read-only handle on the connected clients, for the HTTP API.
#[derive(Clone)]
pub struct ConnectedClients(pub(crate) Arc<Sessions>);

impl ConnectedClients {
    /// The clients connected now, by client id.
    pub fn list(&self) -> Vec<Connected> {
        let mut out: Vec<Connected> = self
            .0
            .lock()
            .iter()
            .filter_map(|(client_id, slot)| {
                Some(Connected {
                    client_id: client_id.clone(),
                    principal: slot.principal.clone(),
                    about: slot.about?,
                })
            })
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        out
    }
}

/// A connection's registration; dropping it marks the connection finished.
pub(crate) struct Registration {
    sessions: Arc<Sessions>,
    client_id: Arc<str>,
    serial: u64,
    /// Cancelled when another connection takes this client id over.
    pub(crate) takeover: CancellationToken,
    done: watch::Sender<bool>,
}

/// Why a client id could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Another principal holds the client id; only the same principal may take it over.
    OtherPrincipal,
    /// The previous connection did not let go in time.
    StillClosing,
}

impl Sessions {
    /// Registers `client_id` for `principal`, taking it over from a live connection of the
    /// same principal if there is one, and returns once that connection has let go. Refused
    /// if another principal holds the id, or if the old connection did not let go within
    /// `wait` (the two would share a router connection id).
    pub(crate) async fn register(
        self: &Arc<Self>,
        client_id: Arc<str>,
        principal: Arc<str>,
        wait: Duration,
    ) -> Result<Registration, Refused> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        // MQTT-3.1.3-9: a new connection to the session before the will's delay has passed
        // means the will is not sent.
        if let Some(will) = self.lock_wills().remove(&client_id) {
            will.cancel();
        }
        // A connection to a session waiting out its expiry keeps it.
        if let Some(expiry) = self
            .lock_expiries()
            .remove(&router_id(&principal, &client_id))
        {
            expiry.cancel();
        }
        let takeover = CancellationToken::new();
        let (done_tx, done_rx) = watch::channel(false);
        let previous = {
            let mut live = self.lock();
            if live
                .get(&client_id)
                .is_some_and(|old| old.principal != principal)
            {
                return Err(Refused::OtherPrincipal);
            }
            live.insert(
                client_id.clone(),
                Slot {
                    serial,
                    principal,
                    takeover: takeover.clone(),
                    done: done_rx,
                    about: None,
                },
            )
        };
        let registration = Registration {
            sessions: self.clone(),
            client_id,
            serial,
            takeover,
            done: done_tx,
        };
        if let Some(mut old) = previous {
            old.takeover.cancel();
            let finished = tokio::time::timeout(wait, old.done.wait_for(|done| *done)).await;
            if !matches!(finished, Ok(Ok(_))) {
                return Err(Refused::StillClosing);
            }
        }
        Ok(registration)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Notes a will waiting for its delay; the token is cancelled if `client_id` connects
    /// again first.
    pub(crate) fn delay_will(&self, client_id: Arc<str>) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(older) = self.lock_wills().insert(client_id, token.clone()) {
            older.cancel();
        }
        token
    }

    /// Whether the delayed will behind `token` is still due: neither a new connection with
    /// its client id nor a newer delayed will came first. Forgets it.
    pub(crate) fn will_due(&self, client_id: &str, token: &CancellationToken) -> bool {
        let mut wills = self.lock_wills();
        // A newer will cancels the older token; a new connection removes the entry.
        !token.is_cancelled() && wills.remove(client_id).is_some()
    }

    /// Notes a session left to expire; the token is cancelled if a connection resumes it.
    pub(crate) fn expire_later(&self, router_id: String) -> CancellationToken {
        let token = CancellationToken::new();
        if let Some(older) = self.lock_expiries().insert(router_id, token.clone()) {
            older.cancel();
        }
        token
    }

    /// Whether the session behind `token` is to end now: no connection resumed it. If so,
    /// and its client id is free, the client id is held (as if a connection had it) until
    /// the returned registration drops, so that a client connecting meanwhile waits and then
    /// finds the session gone rather than half gone.
    pub(crate) fn claim_expired(
        self: &Arc<Self>,
        principal: &str,
        client_id: &Arc<str>,
        token: &CancellationToken,
    ) -> Expired {
        let mut expiries = self.lock_expiries();
        let id = router_id(principal, client_id);
        if token.is_cancelled() || expiries.remove(&id).is_none() {
            return Expired::Resumed;
        }
        drop(expiries);
        let mut live = self.lock();
        if let Some(slot) = live.get(client_id) {
            // Another principal's connection with the same client id: a different session,
            // and this one's owner cannot connect while it lasts.
            return if slot.principal.as_ref() == principal {
                Expired::Resumed
            } else {
                Expired::End(None)
            };
        }
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let (done_tx, done_rx) = watch::channel(false);
        let takeover = CancellationToken::new();
        live.insert(
            client_id.clone(),
            Slot {
                serial,
                principal: Arc::from(principal),
                takeover: takeover.clone(),
                done: done_rx,
                about: None,
            },
        );
        Expired::End(Some(Registration {
            sessions: self.clone(),
            client_id: client_id.clone(),
            serial,
            takeover,
            done: done_tx,
        }))
    }

    fn lock_expiries(&self) -> MutexGuard<'_, HashMap<String, CancellationToken>> {
        locked(&self.expiries)
    }

    fn lock_wills(&self) -> MutexGuard<'_, HashMap<Arc<str>, CancellationToken>> {
        locked(&self.wills)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Slot>> {
        locked(&self.live)
    }
}

impl Registration {
    /// Notes what operators see of the accepted connection.
    pub(crate) fn describe(&self, about: About) {
        let mut live = self.sessions.lock();
        if let Some(slot) = live
            .get_mut(&self.client_id)
            .filter(|s| s.serial == self.serial)
        {
            slot.about = Some(about);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self.sessions.lock();
        if live
            .get(&self.client_id)
            .is_some_and(|s| s.serial == self.serial)
        {
            live.remove(&self.client_id);
        }
        drop(live);
        let _ = self.done.send(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn takeover_waits_for_the_old_connection() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions
            .register(Arc::from("c"), Arc::from("p"), Duration::from_secs(5))
            .await
            .expect("first");
        let takeover = first.takeover.clone();
        let s2 = sessions.clone();
        let second = tokio::spawn(async move {
            s2.register(Arc::from("c"), Arc::from("p"), Duration::from_secs(5))
                .await
        });
        takeover.cancelled().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !second.is_finished(),
            "new connection must wait for the old one"
        );
        drop(first);
        let second = second.await.expect("task").expect("registered");
        assert_eq!(
            sessions.len(),
            1,
            "the new registration stays after the old one is dropped"
        );
        drop(second);
        assert_eq!(sessions.len(), 0);
    }

    #[tokio::test]
    async fn a_connection_that_does_not_let_go_makes_the_new_one_wait_then_fail() {
        let sessions = Arc::new(Sessions::default());
        let _stuck = sessions
            .register(Arc::from("c"), Arc::from("p"), Duration::from_secs(5))
            .await
            .expect("first");
        let second = sessions
            .register(Arc::from("c"), Arc::from("p"), Duration::from_millis(50))
            .await;
        assert_eq!(
            second.err(),
            Some(Refused::StillClosing),
            "no second registration while the first holds on"
        );
    }

    #[tokio::test]
    async fn an_expiring_session_is_kept_by_a_reconnect_and_ended_otherwise() {
        let sessions = Arc::new(Sessions::default());
        let client: Arc<str> = Arc::from("c");
        // The client is back in time: the session stays.
        let token = sessions.expire_later(router_id("p", "c"));
        let back = sessions
            .register(client.clone(), Arc::from("p"), Duration::from_secs(5))
            .await
            .expect("registered");
        assert!(token.is_cancelled());
        assert!(matches!(
            sessions.claim_expired("p", &client, &token),
            Expired::Resumed
        ));
        drop(back);
        // Nobody came: the session ends, and a client connecting meanwhile waits for that.
        let token = sessions.expire_later(router_id("p", "c"));
        let Expired::End(Some(ending)) = sessions.claim_expired("p", &client, &token) else {
            panic!("the session is due and its client id free");
        };
        let s2 = sessions.clone();
        let c2 = client.clone();
        let late = tokio::spawn(async move {
            s2.register(c2, Arc::from("p"), Duration::from_secs(5))
                .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!late.is_finished(), "waits until the session has ended");
        drop(ending);
        let _connected = late.await.expect("task").expect("registered");
        // Another principal's session under the same client id is its own.
        let token = sessions.expire_later(router_id("q", "c"));
        assert!(matches!(
            sessions.claim_expired("q", &client, &token),
            Expired::End(None)
        ));
    }

    #[tokio::test]
    async fn another_principal_cannot_take_a_client_id_over() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions
            .register(Arc::from("c"), Arc::from("owner"), Duration::from_secs(5))
            .await
            .expect("first");
        let thief = sessions
            .register(Arc::from("c"), Arc::from("thief"), Duration::from_secs(5))
            .await;
        assert_eq!(thief.err(), Some(Refused::OtherPrincipal));
        assert!(
            !first.takeover.is_cancelled(),
            "the owner's connection is left alone"
        );
        assert_eq!(sessions.len(), 1);
    }
}
