//! kenko's MQTT routing: subscriptions (a topic trie holding each subscription's options,
//! shared groups included), retained messages, and sessions with their bounded queues and
//! in-flight tables. The connection layer (`session`) authorizes; the router only routes.

pub mod inflight;
pub mod message;
pub mod outbox;
pub mod retained;
pub mod router;
pub mod topic;
pub mod trie;

pub use outbox::QueueLimits;
pub use router::Router;
pub use router::Session;

#[cfg(test)]
mod model_tests;
