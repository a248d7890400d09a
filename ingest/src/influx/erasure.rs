//! Erasure in InfluxDB: a citizen's points in the personal bucket are deleted through
//! InfluxDB's delete API (`/api/v2/delete`, by measurement and citizen tag, every time up
//! to what could have arrived before the request).
//!
//! Servers that accept InfluxDB's writes but have no delete API (VictoriaMetrics) answer
//! that the path is unsupported: the erasure is then recorded as not possible there, with
//! the server's words, in `registry.db` and the audit log, and the points stay until the
//! server's own retention removes them. At its first chance the sink also asks the server a
//! delete that matches nothing, and notes whether it can delete at all, so that
//! `kenko consent revoke --erase` can say so before it matters. Pseudonymized points in the
//! shared bucket stay, as in `shared.db`: erasure forgets the citizen's pseudonym instead.

use std::time::{Duration, Instant};

use influxdb2::RequestError;
use tracing::{error, info, warn};

use super::InfluxSink;
use crate::backoff::Backoff;
use crate::consent::{ErasureSupport, SinkErasure};

/// The sink's name in `registry.db`'s erasure records and the audit log (`erasure.influxdb`).
pub const SINK: &str = "influxdb";
/// A measurement no hub writes, for the delete that checks the server's support.
const PROBE_MEASUREMENT: &str = "kenko_erasure_probe";

/// What the sink knows of pending erasures between batches.
#[derive(Debug)]
pub(super) struct ErasureState {
    /// The consent book's generation whose erasures are all carried out.
    seen: u64,
    /// Whether the server's support is known.
    probed: bool,
    backoff: Backoff,
    /// When to try again after the server could not be reached.
    retry_at: Option<Instant>,
    /// How far ahead of its arrival an event time may be (`ingest.max_future_s`), in
    /// milliseconds: no point received before an erasure request lies further ahead of it.
    pub(super) horizon_ms: i64,
}

impl ErasureState {
    pub fn new(max_backoff: Duration) -> ErasureState {
        ErasureState {
            seen: u64::MAX,
            probed: false,
            backoff: Backoff::new(
                Duration::from_secs(1),
                max_backoff.max(Duration::from_secs(1)),
            )
            .with_jitter(),
            retry_at: None,
            horizon_ms: 5 * 60 * 1000,
        }
    }
}

/// One delete's answer: done (as `SinkErasure` says), or to be tried again.
fn classify(result: Result<(), RequestError>) -> Result<SinkErasure, String> {
    match result {
        Ok(()) => Ok(SinkErasure::Deleted),
        Err(RequestError::Http { status, text }) => classify_status(status.as_u16(), text.trim()),
        Err(other) => Err(other.to_string()),
    }
}

fn classify_status(code: u16, text: &str) -> Result<SinkErasure, String> {
    let said = format!("HTTP {code}: {text}");
    match code {
        404 | 405 | 501 => Ok(SinkErasure::Unsupported(said)),
        // VictoriaMetrics: `unsupported path requested: "/api/v2/delete"`.
        400 if text.contains("unsupported path") => Ok(SinkErasure::Unsupported(said)),
        401 | 403 => Err(format!(
            "{said} (the token needs write permission on the bucket to delete)"
        )),
        408 | 425 | 429 => Err(said),
        400..=499 => Ok(SinkErasure::Refused(said)),
        _ => Err(said),
    }
}

impl InfluxSink {
    /// Between batches: notes the server's support once, then carries out the erasures the
    /// sink has not, oldest first; a server that cannot be reached is tried again later.
    pub(super) fn erase_if_asked(&mut self) {
        let generation = self.consents.book().generation();
        let due = self.erasure.retry_at.is_none_or(|at| Instant::now() >= at);
        if !due || (generation == self.erasure.seen && self.erasure.probed) {
            return;
        }
        let done = self.probe_support().and_then(|()| self.erase_pending());
        match done {
            Ok(()) => {
                self.erasure.seen = generation;
                self.erasure.retry_at = None;
                self.erasure.backoff.succeeded();
            }
            Err(why) => {
                self.erasure.backoff.failed();
                let wait = self.erasure.backoff.take_wait();
                self.erasure.retry_at = Some(Instant::now() + wait);
                error!(error = %why, retry_in_ms = wait.as_millis() as u64,
                    "InfluxDB erasure work not done; will retry");
            }
        }
    }

    fn probe_support(&mut self) -> Result<(), String> {
        if self.erasure.probed {
            return Ok(());
        }
        let answer = self
            .delete(PROBE_MEASUREMENT, None, 1)
            .map_err(|e| format!("cannot ask the server whether it can delete: {e}"))?;
        let (supported, detail) = match answer {
            SinkErasure::Deleted => (true, String::new()),
            SinkErasure::Unsupported(why) => (false, why),
            // Refused for some other reason: the real deletes will say which.
            SinkErasure::Refused(why) => (true, why),
        };
        if !supported {
            warn!(server = %self.config.url, why = %detail,
                "the InfluxDB server has no delete API: erasures cannot reach the points it holds");
        }
        let support = ErasureSupport {
            sink: SINK.into(),
            server: self.config.url.clone(),
            supported,
            detail,
            checked_ms: jiff::Timestamp::now().as_millisecond(),
        };
        self.consents
            .registry()
            .note_erasure_support(&support)
            .map_err(|e| e.to_string())?;
        self.erasure.probed = true;
        Ok(())
    }

    fn erase_pending(&mut self) -> Result<(), String> {
        let pending = self
            .consents
            .registry()
            .pending_erasures_in(SINK)
            .map_err(|e| e.to_string())?;
        for request in pending {
            let citizen = request.change.citizen.clone();
            let measurement = self.config.measurement.clone();
            // Up to what could have arrived before the request, not further: points of
            // data collected under a later grant stay (a worker that copies the hub's
            // records may carry out an erasure long after it was asked for).
            let stop_s = (request.recorded_ms + self.erasure.horizon_ms) / 1000 + 1;
            let how = self.delete(&measurement, Some(&citizen), stop_s)?;
            match &how {
                SinkErasure::Deleted => {
                    info!(%citizen, "erased a citizen's points in InfluxDB on request");
                }
                SinkErasure::Unsupported(why) | SinkErasure::Refused(why) => {
                    warn!(%citizen, why, "InfluxDB did not erase a citizen's points; recorded in the audit log");
                }
            }
            let now = jiff::Timestamp::now().as_millisecond();
            self.consents
                .registry()
                .sink_erasure_done(&request, SINK, &how, now)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Deletes the points of `measurement` (of `citizen`, when given) in the personal
    /// bucket, from the earliest time InfluxDB keeps up to `stop_s`.
    fn delete(
        &mut self,
        measurement: &str,
        citizen: Option<&str>,
        stop_s: i64,
    ) -> Result<SinkErasure, String> {
        // Measurement and citizen ids are checked identifiers: no quotes to escape.
        let mut predicate = format!("_measurement=\"{measurement}\"");
        if let Some(citizen) = citizen {
            predicate.push_str(&format!(" AND citizen=\"{citizen}\""));
        }
        let start = chrono::DateTime::from_timestamp(-2_208_988_800, 0)
            .map(|t| t.naive_utc())
            .ok_or("no start time")?;
        let stop = chrono::DateTime::from_timestamp(stop_s, 0)
            .map(|t| t.naive_utc())
            .ok_or("no stop time")?;
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let bucket = self.config.bucket_personal.clone();
        let client = self.client.clone();
        let runtime = self.runtime().map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let delete = client.delete(&bucket, start, stop, Some(predicate));
            match tokio::time::timeout(timeout, delete).await {
                Ok(result) => classify(result),
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use crate::consent::{ConsentChange, ConsentRegistry};

    /// Each request's line and body, as received.
    type Requests = Arc<Mutex<Vec<(String, String)>>>;

    /// A stand-in for InfluxDB's delete API: answers 204 to everything and keeps each
    /// request's line and body.
    fn delete_api() -> (String, Requests) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                reader.read_line(&mut line).expect("request line");
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).expect("header");
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().expect("length");
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).expect("body");
                keep.lock().expect("lock").push((
                    line.trim().to_owned(),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        (url, seen)
    }

    #[test]
    fn a_citizens_points_are_deleted_by_measurement_and_citizen_and_the_deletion_recorded() {
        let dir = tempfile::tempdir().expect("dir");
        let (url, seen) = delete_api();
        let mut sink = super::super::tests::sink_in(dir.path(), &url, 5_000);
        let registry_path = dir.path().join("registry.db");
        let request = ConsentRegistry::open(&registry_path)
            .expect("registry")
            .record(ConsentChange::erasure_of("c1"), 1_000)
            .expect("record");
        sink.erase_if_asked();
        let requests = seen.lock().expect("lock").clone();
        assert_eq!(
            requests.len(),
            2,
            "the check, then the erasure: {requests:?}"
        );
        let (line, body) = &requests[1];
        assert!(
            line.starts_with("POST /api/v2/delete?bucket=personal&org=city"),
            "{line}"
        );
        assert!(
            body.contains(r#""predicate":"_measurement=\"kenko\" AND citizen=\"c1\"""#),
            "{body}"
        );
        assert!(requests[0].1.contains(PROBE_MEASUREMENT), "{requests:?}");
        // Recorded at 1 s: points up to 5 minutes ahead of it could have come before.
        assert!(body.contains(r#""stop":"1970-01-01T00:05:02"#), "{body}");
        let registry = ConsentRegistry::open_read_only(&registry_path).expect("registry");
        assert_eq!(
            registry.sink_erasure(request.id, SINK).expect("read"),
            Some(("deleted".into(), String::new()))
        );
        assert!(registry.erasure_support().expect("support")[0].supported);
        // Carried out once: nothing more is asked of the server.
        sink.erase_if_asked();
        assert_eq!(seen.lock().expect("lock").len(), 2);
    }

    #[test]
    fn servers_without_a_delete_api_are_told_from_refusals_and_outages() {
        let vm = classify_status(400, "unsupported path requested: \"/api/v2/delete\"");
        assert!(matches!(vm, Ok(SinkErasure::Unsupported(_))), "{vm:?}");
        for code in [404, 405, 501] {
            assert!(matches!(
                classify_status(code, ""),
                Ok(SinkErasure::Unsupported(_))
            ));
        }
        assert!(matches!(
            classify_status(400, "invalid predicate"),
            Ok(SinkErasure::Refused(_))
        ));
        for code in [401, 403, 429, 500, 503] {
            assert!(classify_status(code, "").is_err(), "{code} is retried");
        }
        let token = classify_status(403, "forbidden").expect_err("retried");
        assert!(token.contains("write permission"), "{token}");
    }
}
