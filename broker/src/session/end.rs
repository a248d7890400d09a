//! How a connection ends: the last words to the client, the will (now, later, or not at
//! all), and what becomes of the session in the router (kept, expiring later, or ended).

use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{End, Session, SessionLife, Will, DRAIN_WAIT, NEVER};
use crate::acl::Request;
use crate::codec::Version;
use crate::connection::will_publish_properties;
use crate::route::message::Message;
use crate::sessions::Expired;
use crate::Shared;

impl Session {
    pub(super) async fn finish(mut self, end: End) {
        debug!(?end, "ending connection");
        if end == End::Shutdown {
            self.drain_verdicts().await;
        }
        // The session is settled before the socket closes: a client that sees the close and
        // connects again at once finds the session as this end left it (ended, after a
        // DISCONNECT with expiry 0), not the old connection still holding it.
        self.settle_session(end);
        self.say_goodbye(end).await;
        info!(?end, "disconnected");
        // Dropping the registration lets a connection that takes this client id over proceed.
    }

    /// The will (now, later or not at all), and the session kept, left to expire, or ended.
    fn settle_session(&mut self, end: End) {
        // 3.14.2.2.2: a DISCONNECT may change the Session Expiry Interval (from 0 to more is
        // refused when the DISCONNECT is read).
        if let End::Disconnect {
            expiry_s: Some(asked),
            ..
        } = end
        {
            let max = self.shared.config.max_session_expiry_s;
            self.life.expiry_s = granted_session_expiry(asked, max);
        }
        self.will_at_end(end);
        self.return_state();
        // The session goes on in the new connection (also when this one ended on its own
        // while being taken over), or the hub is stopping.
        let goes_on = matches!(end, End::TakenOver | End::Shutdown)
            || self.registration.takeover.is_cancelled();
        let keep = goes_on || (self.life.persistent && self.life.expiry_s != 0);
        self.shared.router.detach(&self.route, keep);
        if keep && !goes_on {
            outlive(
                &self.shared,
                &self.peer.identity.id,
                &self.peer.client_id,
                &self.life,
            );
        }
    }

    /// Tells an MQTT 5 client why the hub ends the connection, then closes it.
    async fn say_goodbye(&mut self, end: End) {
        let tell = match end {
            End::TakenOver => Some(DisconnectReasonCode::SessionTakenOver),
            End::NotAuthorized => Some(DisconnectReasonCode::NotAuthorized),
            End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::KeepAliveTimeout => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::ProtocolError(code) => Some(code),
            End::Disconnect { .. } | End::Closed => None,
        };
        if let (Version::V5, Some(reason_code)) = (self.codec.version(), tell) {
            self.write(Packet::Disconnect(Disconnect { reason_code }, None));
        }
        self.flush_last().await;
        let _ = self.stream.shutdown().await;
    }

    /// The in-flight tables go back to the router's session for a later connection.
    fn return_state(&mut self) {
        let mut state = self.route.state();
        state.outbound = std::mem::take(&mut self.outbound.table);
        let mut inbound = std::mem::take(&mut self.inbound.table);
        inbound.keep_for_session();
        state.inbound = inbound;
    }

    fn will_at_end(&mut self, end: End) {
        let publish_will = match end {
            End::Disconnect { with_will, .. } => with_will,
            End::Shutdown => false,
            End::Closed
            | End::KeepAliveTimeout
            | End::ProtocolError(_)
            | End::NotAuthorized
            | End::TakenOver => true,
        };
        let Some(will) = self.will.take().filter(|_| publish_will) else {
            return;
        };
        let will = *will;
        // MQTT-3.1.3-9: the will goes when its delay has passed or the session ends,
        // whichever comes first.
        let delay = will
            .props
            .as_ref()
            .and_then(|p| p.delay_interval)
            .unwrap_or(0);
        match delay.min(self.life.expiry_s) {
            0 => self.publish_will(will),
            // A takeover is a new connection to the session within the delay: no will.
            _ if end == End::TakenOver => debug!("will dropped: the session was taken over"),
            delay => self.delay_will(will, delay),
        }
    }

    /// Publishes the will after `delay` seconds (MQTT 5 Will Delay Interval, already capped
    /// at the session's expiry), unless the client connects again first. The ACL decides
    /// now, as for a will without delay.
    fn delay_will(&mut self, will: Will, delay: u32) {
        let Some(message) = self.will_message(will) else {
            return;
        };
        info!(delay_s = delay, "will delayed");
        let sessions = self.shared.sessions.clone();
        let shared = self.shared.clone();
        let client_id = self.peer.client_id.clone();
        let token = sessions.delay_will(client_id.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(u64::from(delay))) => {}
                _ = token.cancelled() => return debug!(%client_id, "delayed will cancelled: the client is back"),
                _ = shared.shutdown.cancelled() => return,
            }
            if sessions.will_due(&client_id, &token) {
                shared.router.publish(message);
                info!(%client_id, "delayed will published");
            }
        });
    }

    /// Routes the will if the rules in force now still allow it.
    fn publish_will(&mut self, will: Will) {
        if let Some(message) = self.will_message(will) {
            self.shared.router.publish(message);
        }
    }

    /// The will as a message at its own QoS, if the rules in force now still allow it.
    fn will_message(&mut self, Will { will, props }: Will) -> Option<Message> {
        let topic = String::from_utf8_lossy(&will.topic).into_owned();
        let request = Request::Publish {
            topic: &topic,
            qos: will.qos as u8,
            retain: will.retain,
        };
        if !self.acl.decide(&self.peer.principal(), &request).allowed {
            warn!(topic, "will not published: the ACL no longer allows it");
            return None;
        }
        info!(topic, "publishing will");
        Some(Message::new(
            topic.into(),
            will.message,
            will.qos,
            will.retain,
            will_publish_properties(props),
            Some(self.route.id()),
        ))
    }

    /// At shutdown: write the acknowledgements of telemetry already handed to the pipeline.
    async fn drain_verdicts(&mut self) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while self.inbound.pending > 0 {
            match tokio::time::timeout_at(deadline, self.inbound.outcomes_rx.recv_async()).await {
                Ok(Ok(outcome)) => self.on_outcome(outcome),
                _ => break,
            }
        }
    }
}

/// Lets a kept session expire: a task waits out the interval and ends it unless a connection
/// resumes it first. Nothing for a session that never expires.
pub(crate) fn outlive(
    shared: &Arc<Shared>,
    principal: &str,
    client_id: &Arc<str>,
    life: &SessionLife,
) {
    if life.expiry_s == NEVER {
        return;
    }
    let expiry = life.expiry_s;
    debug!(expiry_s = expiry, "session kept until it expires");
    let sessions = shared.sessions.clone();
    let shared = shared.clone();
    let principal = principal.to_owned();
    let client_id = client_id.clone();
    let router_id = life.router_id.clone();
    let token = sessions.expire_later(router_id.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(u64::from(expiry))) => {}
            _ = token.cancelled() => return,
            _ = shared.shutdown.cancelled() => return,
        }
        let Expired::End(registration) = sessions.claim_expired(&principal, &client_id, &token)
        else {
            return;
        };
        shared.router.end(&router_id, None);
        info!(%client_id, expiry_s = expiry, "session expired");
        drop(registration);
    });
}

/// The Session Expiry Interval the hub grants: what was asked, up to
/// `mqtt.max_session_expiry_s` (0: no cap).
pub(crate) fn granted_session_expiry(asked: u32, max: u32) -> u32 {
    match max {
        0 => asked,
        max => asked.min(max),
    }
}
