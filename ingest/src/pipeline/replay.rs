//! The writer's part in `kenko deadletter replay`: requested letters go through the
//! pipeline again.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::{error, info};

use super::{Batch, Origin, Reply, Submission, Writer, IDLE_CHECK};
use crate::decode::RejectCode;

impl Writer {
    /// Carries out `kenko deadletter replay` requests: the selected letters go through the
    /// pipeline again as they were received; stored ones leave the dead letters, refused
    /// ones stay with their new reason.
    pub(super) fn replay_if_asked(&mut self) {
        if self.replay_checked.elapsed() < IDLE_CHECK {
            return;
        }
        self.replay_checked = Instant::now();
        let requests = match self.answers.dead.replay_requests(None) {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot read dead-letter replay requests; will retry");
                return;
            }
        };
        for mut request in requests {
            let letters = match self.answers.dead.select(&request.selection, usize::MAX) {
                Ok(l) => l,
                Err(e) => {
                    error!(error = %e, "cannot read dead letters to replay; will retry");
                    return;
                }
            };
            // Only device messages can go through the pipeline again.
            let (letters, skipped): (Vec<_>, Vec<_>) = letters
                .into_iter()
                .partition(|(_, l)| l.device.is_some() && l.topic.starts_with("devices/"));
            request.skipped = skipped.len() as u64;
            let (to, verdicts) = flume::unbounded();
            let (mut stored, mut refused, mut forget) = (Vec::new(), Vec::new(), Vec::new());
            for chunk in letters.chunks(self.batch_max) {
                let mut batch = Batch::default();
                for (i, (_, letter)) in chunk.iter().enumerate() {
                    batch.submissions.push(Submission {
                        client_id: Arc::from(letter.client_id.as_str()),
                        device: letter.device.clone().unwrap_or_default().into(),
                        payload: Bytes::from(letter.payload.clone()),
                        received_ms: letter.received_ms,
                        reply: Some(Reply {
                            to: to.clone(),
                            token: i as u32,
                            refusable: false,
                        }),
                        protobuf: letter.topic.ends_with("/pb"),
                        origin: Origin::Replay,
                    });
                }
                self.process(&mut batch);
                while let Ok(outcome) = verdicts.try_recv() {
                    let id = chunk[outcome.token as usize].0;
                    match outcome.verdict {
                        Ok(()) => stored.push(id),
                        // Its citizen no longer lets the hub keep it: not even as a letter.
                        Err(r) if r.code == RejectCode::NoConsent => forget.push(id),
                        // The hub is stopping with a full log: the letter stays as it was.
                        Err(r) if r.code == RejectCode::LogFull => {}
                        Err(r) => refused.push((id, r.code.as_str().to_owned(), r.message)),
                    }
                }
            }
            let now = jiff::Timestamp::now().as_millisecond();
            match self
                .answers
                .dead
                .finish_replay(&request, &stored, &refused, &forget, now)
            {
                Ok(()) => info!(
                    request = request.id,
                    replayed = stored.len(),
                    refused = refused.len() + forget.len(),
                    skipped = request.skipped,
                    "dead letters replayed"
                ),
                // Stored ones are stored; a second run stores nothing twice.
                Err(e) => {
                    error!(error = %e, "dead letters replayed but not settled; the request runs again")
                }
            }
        }
    }
}
