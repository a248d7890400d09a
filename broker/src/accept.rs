//! Accepting connections when file descriptors run short: a failed accept backs off
//! (doubling up to a second) and is logged at a bounded rate, and at start the descriptor
//! limit is checked against what the connection caps may need.

use std::time::{Duration, Instant};

use kenko_config::Config;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::login::LogThrottle;

const FIRST_PAUSE: Duration = Duration::from_millis(10);
const LONGEST_PAUSE: Duration = Duration::from_secs(1);
/// Descriptors the hub uses besides connections: stores and their journals, log segments,
/// listeners, the runtime's own, threads' files.
pub const FILES_RESERVE: u64 = 128;

/// The pause after a failed accept, for one listener loop. Each listener loop has its own,
/// so a full descriptor table pauses neither loop for longer than a second.
pub struct AcceptBackoff {
    what: &'static str,
    pause: Duration,
    log: LogThrottle,
}

impl AcceptBackoff {
    pub fn new(what: &'static str) -> AcceptBackoff {
        AcceptBackoff {
            what,
            pause: FIRST_PAUSE,
            log: LogThrottle::new(Duration::from_secs(5)),
        }
    }

    pub fn accepted(&mut self) {
        self.pause = FIRST_PAUSE;
    }

    /// Logs (at most every 5 s, with the count of failures not logged) and waits: out of
    /// descriptors, accepting again at once would fail again, spinning a core.
    pub async fn failed(&mut self, e: &std::io::Error, shutdown: &CancellationToken) {
        if let Some(held_back) = self.log.allow(Instant::now()) {
            let out_of_descriptors = matches!(e.raw_os_error(), Some(23 | 24));
            if out_of_descriptors {
                error!(
                    listener = self.what,
                    error = %e,
                    held_back,
                    pause_ms = self.pause.as_millis() as u64,
                    "accept failed: out of file descriptors; raise the open-file limit (ulimit -n, LimitNOFILE=) or lower the connection caps"
                );
            } else {
                error!(listener = self.what, error = %e, held_back, "accept failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(self.pause) => {}
            _ = shutdown.cancelled() => {}
        }
        self.pause = (self.pause * 2).min(LONGEST_PAUSE);
    }
}

/// The soft limit on open files of this process (`Max open files` of /proc/self/limits);
/// `None` where there is no such file or the limit is unlimited.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// Descriptors the configuration's connection caps may take at once, files included.
pub fn descriptor_need(config: &Config) -> u64 {
    let mqtt = config.mqtt.max_connections as u64;
    let http = match config.http.listen {
        Some(_) => config.http.max_connections as u64,
        None => 0,
    };
    mqtt + http + FILES_RESERVE
}

/// Warns when the open-file limit is below what the connection caps may need: past it,
/// accepting fails for every listener alike, MQTT devices included.
pub fn check_descriptor_budget(config: &Config) {
    let Some(limit) = open_file_limit() else {
        return;
    };
    let need = descriptor_need(config);
    if limit < need {
        warn!(
            open_file_limit = limit,
            needed = need,
            mqtt_max_connections = config.mqtt.max_connections,
            http_max_connections = config.http.listen.map(|_| config.http.max_connections),
            files_reserve = FILES_RESERVE,
            "the open-file limit is below what the connection caps may need; raise it (ulimit -n, systemd LimitNOFILE=) or lower mqtt.max_connections and http.max_connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_need_adds_the_caps_of_the_listeners_that_run() {
        let mut config = Config::default();
        config.mqtt.max_connections = 1000;
        config.http.max_connections = 200;
        assert_eq!(descriptor_need(&config), 1000 + FILES_RESERVE);
        config.http.listen = Some("127.0.0.1:0".parse().expect("addr"));
        assert_eq!(descriptor_need(&config), 1200 + FILES_RESERVE);
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
