//! The hub's own voice in MQTT: what kenko itself publishes (errors for devices, live
//! observations), routed from a plain thread fed by the ingest pipeline.

use std::sync::Arc;
use std::thread;

use kenko_ingest::pipeline::Notice;
use rumqttd::protocol::QoS;
use tracing::info;

use crate::event_time::hub_properties;
use crate::route::message::Message;
use crate::route::Router;

/// Client ids starting with this are the hub's; CONNECTs may not use them.
pub(crate) const HUB_CLIENT_ID: &str = "kenko-hub";

/// Starts the hub's publisher thread; it ends when every sender of `notices` is gone.
pub(crate) fn spawn(
    router: Arc<Router>,
    notices: flume::Receiver<Notice>,
) -> std::io::Result<thread::JoinHandle<()>> {
    thread::Builder::new()
        .name("kenko-hub".into())
        .spawn(move || {
            while let Ok(notice) = notices.recv() {
                router.publish(notice_message(notice));
            }
            info!("hub publisher stopped");
        })
}

fn notice_message(notice: Notice) -> Message {
    let topic: Arc<str> = Arc::from(notice.topic);
    Message::new(
        topic,
        notice.payload,
        QoS::AtMostOnce,
        false,
        hub_properties(notice.event_ms),
        None,
    )
}
