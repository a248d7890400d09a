//! The writer's intake: the queue from the connections, and the messages held back from it
//! while the log is full.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{log_full, Batch, Outcome, Submission};
use crate::stats::IngestStats;

pub(super) struct Intake {
    rx: flume::Receiver<Submission>,
    /// Messages taken off the queue while the log was full, in order, to be processed
    /// before anything queued after them.
    held: VecDeque<Submission>,
    /// Messages in one batch at most.
    batch_max: usize,
    /// Messages held at most (the queue's size).
    hold_max: usize,
}

impl Intake {
    pub fn new(rx: flume::Receiver<Submission>, batch_max: usize, hold_max: usize) -> Intake {
        Intake {
            rx,
            held: VecDeque::new(),
            batch_max,
            hold_max,
        }
    }

    /// The next message, held ones first, waiting up to `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Result<Submission, flume::RecvTimeoutError> {
        match self.held.pop_front() {
            Some(held) => Ok(held),
            None => self.rx.recv_timeout(timeout),
        }
    }

    /// Takes what is already queued, and waits up to `linger` for more while the batch is
    /// small.
    pub fn fill(&mut self, batch: &mut Batch, linger: Duration) {
        let deadline = Instant::now() + linger;
        while batch.submissions.len() < self.batch_max {
            if let Some(held) = self.held.pop_front() {
                batch.submissions.push(held);
                continue;
            }
            match self.rx.try_recv() {
                Ok(s) => batch.submissions.push(s),
                Err(flume::TryRecvError::Disconnected) => return,
                Err(flume::TryRecvError::Empty) => match self.rx.recv_deadline(deadline) {
                    Ok(s) => batch.submissions.push(s),
                    Err(_) => return,
                },
            }
        }
    }

    /// Every connection is gone: the hub is stopping.
    pub fn stopping(&self) -> bool {
        self.rx.is_disconnected()
    }

    /// While the writer waits for room: answers queued messages whose clients can be told
    /// "not now" (0x97) at once, and holds the rest, in order, up to the queue's size (then
    /// the queue fills and pushes back).
    pub fn refuse_or_hold(&mut self, stats: &IngestStats) {
        while self.held.len() < self.hold_max {
            let Ok(sub) = self.rx.try_recv() else { return };
            match sub.reply {
                Some(reply) if reply.refusable => {
                    stats.refused_log_full.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.to.send(Outcome {
                        token: reply.token,
                        verdict: Err(log_full()),
                    });
                }
                reply => self.held.push_back(Submission { reply, ..sub }),
            }
        }
    }
}
