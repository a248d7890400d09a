//! What the hub rereads while it runs (the ACL file, the consent records and the devices and
//! principals of `registry.db`) is watched the same way: a thread of its own runs one cheap
//! check every so often, and rereads only when the check says something changed. [`Poller`]
//! is that thread.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A named thread that runs a step every `every` until it is dropped (which stops and joins
/// it, waiting for a step under way).
pub struct Poller {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Poller {
    /// Starts the thread `name`; `step` runs first after `every`, then every `every`.
    pub fn spawn(
        name: &str,
        every: Duration,
        mut step: impl FnMut() + Send + 'static,
    ) -> std::io::Result<Poller> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                // Ends when the sender is dropped.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    step();
                }
            })?;
        Ok(Poller {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn steps_run_until_the_poller_is_dropped() {
        let steps = Arc::new(AtomicUsize::new(0));
        let counted = steps.clone();
        let poller = Poller::spawn("test-poller", Duration::from_millis(2), move || {
            counted.fetch_add(1, Ordering::Relaxed);
        })
        .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(5);
        while steps.load(Ordering::Relaxed) < 3 {
            assert!(Instant::now() < deadline, "three steps within 5 s");
            thread::sleep(Duration::from_millis(1));
        }
        drop(poller);
        let after = steps.load(Ordering::Relaxed);
        thread::sleep(Duration::from_millis(20));
        assert_eq!(
            steps.load(Ordering::Relaxed),
            after,
            "no step after the drop"
        );
    }
}
