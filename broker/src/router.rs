//! rumqttd's router, which kenko uses for what it does well: subscriptions, fan-out, retained
//! messages, QoS state and persistent sessions. Connections reach it through local links.
//!
//! Also the hub's own link, which publishes what kenko itself has to say (errors for devices,
//! live observations) from a plain thread, because rumqttd's link calls block.

use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use futures_util::FutureExt;
use kenko_ingest::pipeline::Notice;
use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::{Disconnect, DisconnectReasonCode, Packet, Publish};
use rumqttd::{Notification, Router, RouterConfig};
use tracing::{error, info};

use crate::event_time::hub_properties;

/// Client id of the hub's own link; CONNECTs may not use it.
pub(crate) const HUB_CLIENT_ID: &str = "kenko-hub";

type Connect =
    dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), LinkFailed> + Send + Sync;

/// The router refused or dropped a link (rumqttd's own error is large and carries channel
/// internals, so only its message is kept).
#[derive(Debug, thiserror::Error)]
#[error("router link failed: {0}")]
pub(crate) struct LinkFailed(String);

impl From<LinkError> for LinkFailed {
    fn from(e: LinkError) -> Self {
        LinkFailed(e.to_string())
    }
}

/// A running router and the way to open links to it.
#[derive(Clone)]
pub(crate) struct RouterHandle {
    // rumqttd does not export the type of its router channel, so the sender lives in a closure.
    connect: Arc<Connect>,
}

impl RouterHandle {
    /// Starts the router thread, sized for `max_connections` and small in-memory logs: the
    /// router relays, it is not where kenko keeps data.
    pub(crate) fn spawn(max_connections: usize, max_inflight: u16) -> RouterHandle {
        let config = RouterConfig {
            // kenko enforces its own limit first; the router's must never be what refuses one,
            // because it refuses by not answering at all.
            max_connections: max_connections + 16,
            max_outgoing_packet_count: u64::from(max_inflight),
            max_segment_size: 256 * 1024,
            max_segment_count: 4,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
        let connect = move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .dynamic_filters(false)
                .build()
                .map_err(LinkFailed::from)
        };
        RouterHandle {
            connect: Arc::new(connect),
        }
    }

    /// Registers a connection with the router. Blocks until the router answers.
    pub(crate) fn link(
        &self,
        client_id: &str,
        clean_session: bool,
    ) -> Result<(LinkTx, LinkRx, Notification), LinkFailed> {
        (self.connect)(client_id, clean_session)
    }

    /// Ends the router's session `client_id` (a router id), if it has one: a clean link
    /// discards what was kept, and its DISCONNECT leaves nothing behind. The caller makes sure
    /// no connection uses the id meanwhile.
    pub(crate) async fn end_session(&self, client_id: String) -> Result<(), LinkFailed> {
        let router = self.clone();
        let linked = tokio::task::spawn_blocking(move || router.link(&client_id, true))
            .await
            .map_err(|e| LinkFailed(format!("cannot link: {e}")))?;
        let (mut tx, _rx, _) = linked?;
        let done = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        tx.send(Packet::Disconnect(done, None)).await?;
        Ok(())
    }

    /// Starts the hub's publisher thread; it ends when every sender of `notices` is gone.
    pub(crate) fn spawn_hub(
        &self,
        notices: flume::Receiver<Notice>,
    ) -> Result<thread::JoinHandle<()>, LinkFailed> {
        let (mut tx, rx, _ack) = self.link(HUB_CLIENT_ID, true)?;
        let handle = thread::Builder::new()
            .name("kenko-hub".into())
            .spawn(move || {
                // The router drops a link whose receiving side is gone, so keep it alive.
                let _rx = rx;
                while let Ok(first) = notices.recv() {
                    let mut last = notice_packet(first);
                    {
                        let mut buffer = tx.buffer();
                        for notice in notices.try_iter().take(1024) {
                            buffer.push_back(std::mem::replace(&mut last, notice_packet(notice)));
                        }
                    }
                    // One notification to the router covers everything buffered above, in
                    // the order it was published. `send` never waits: it queues and notifies.
                    let sent = tx.send(last).now_or_never();
                    if let Some(Err(e)) = sent {
                        error!(error = %e, "router is gone; hub publisher stops");
                        return;
                    }
                }
                info!("hub publisher stopped");
            })
            .map_err(|e| LinkFailed(format!("cannot start hub thread: {e}")))?;
        Ok(handle)
    }
}

fn notice_packet(notice: Notice) -> Packet {
    Packet::Publish(
        Publish::new(Bytes::from(notice.topic), notice.payload, false),
        hub_properties(notice.event_ms),
    )
}
