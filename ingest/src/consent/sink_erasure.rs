//! Erasures in sinks besides the embedded store (InfluxDB): which requests each sink has
//! carried out and how, and whether its server can delete data at all (VictoriaMetrics,
//! which accepts InfluxDB's writes, has no delete API).

use rusqlite::{params, OptionalExtension};

use super::{append_audit, commit_with_head, Consent, ConsentRegistry};
use crate::store::{sqlite, StoreError};

/// How a sink carried out one erasure request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkErasure {
    /// The server deleted the citizen's data.
    Deleted,
    /// The server cannot delete data; what it holds stays until its own retention
    /// removes it.
    Unsupported(String),
    /// The server refused the delete for another reason (not retried: the same request
    /// would be refused again).
    Refused(String),
}

impl SinkErasure {
    fn outcome(&self) -> &'static str {
        match self {
            SinkErasure::Deleted => "deleted",
            SinkErasure::Unsupported(_) => "unsupported",
            SinkErasure::Refused(_) => "refused",
        }
    }

    fn detail(&self) -> &str {
        match self {
            SinkErasure::Deleted => "",
            SinkErasure::Unsupported(d) | SinkErasure::Refused(d) => d,
        }
    }
}

/// Whether a sink's server can delete a citizen's data, as the sink last found out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErasureSupport {
    pub sink: String,
    pub server: String,
    pub supported: bool,
    pub detail: String,
    pub checked_ms: i64,
}

impl ConsentRegistry {
    /// Withdrawals that asked for erasure which `sink` has not carried out, oldest first.
    pub fn pending_erasures_in(&self, sink: &str) -> Result<Vec<Consent>, StoreError> {
        let done: std::collections::HashSet<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT consent_id FROM sink_erasures WHERE sink = ?1")
                .map_err(sqlite(&self.path))?;
            let ids = stmt
                .query_map(params![sink], |r| r.get(0))
                .map_err(sqlite(&self.path))?;
            ids.collect::<Result<_, _>>().map_err(sqlite(&self.path))?
        };
        Ok(self
            .list(None)?
            .into_iter()
            .filter(|c| c.change.erase && !done.contains(&c.id))
            .collect())
    }

    /// Records how `sink` carried out the erasure asked for by `consent`, with its audit
    /// entry (`erasure.SINK`).
    pub fn sink_erasure_done(
        &mut self,
        consent: &Consent,
        sink: &str,
        how: &SinkErasure,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        tx.execute(
            "INSERT OR IGNORE INTO sink_erasures (consent_id, sink, done_ms, outcome, detail)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![consent.id, sink, now_ms, how.outcome(), how.detail()],
        )
        .map_err(sqlite(&path))?;
        let body = serde_json::json!({
            "consent": consent.id,
            "citizen": consent.change.citizen,
            "outcome": how.outcome(),
            "detail": how.detail(),
        })
        .to_string();
        let head = append_audit(&tx, &path, now_ms, &format!("erasure.{sink}"), &body)?;
        commit_with_head(tx, &path, head)
    }

    /// Notes whether `sink`'s server (`server`, its address) can delete data.
    pub fn note_erasure_support(&mut self, support: &ErasureSupport) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO sink_erasure_support (sink, server, supported, detail, checked_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sink) DO UPDATE SET server = excluded.server,
                    supported = excluded.supported, detail = excluded.detail,
                    checked_ms = excluded.checked_ms",
                params![
                    support.sink,
                    support.server,
                    support.supported,
                    support.detail,
                    support.checked_ms
                ],
            )
            .map(drop)
            .map_err(sqlite(&self.path))
    }

    /// What each sink last found out about its server's deletes.
    pub fn erasure_support(&self) -> Result<Vec<ErasureSupport>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT sink, server, supported, detail, checked_ms FROM sink_erasure_support
                 ORDER BY sink",
            )
            .map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ErasureSupport {
                    sink: r.get(0)?,
                    server: r.get(1)?,
                    supported: r.get(2)?,
                    detail: r.get(3)?,
                    checked_ms: r.get(4)?,
                })
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// How `sink` carried out the erasure of `consent_id`, if it has.
    pub fn sink_erasure(
        &self,
        consent_id: i64,
        sink: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        self.conn
            .query_row(
                "SELECT outcome, detail FROM sink_erasures WHERE consent_id = ?1 AND sink = ?2",
                params![consent_id, sink],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sqlite(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentChange;

    fn withdrawal(registry: &mut ConsentRegistry, citizen: &str) -> Consent {
        registry
            .record(ConsentChange::erasure_of(citizen), 1_000)
            .expect("record")
    }

    #[test]
    fn each_sink_carries_out_each_erasure_once_and_the_audit_log_says_how() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let mut registry = ConsentRegistry::open(&path).expect("open");
        let first = withdrawal(&mut registry, "c1");
        let second = withdrawal(&mut registry, "c2");
        assert_eq!(
            registry
                .pending_erasures_in("influxdb")
                .expect("pending")
                .len(),
            2
        );
        let unsupported = SinkErasure::Unsupported("HTTP 400: unsupported path".into());
        registry
            .sink_erasure_done(&first, "influxdb", &unsupported, 2_000)
            .expect("done");
        let pending = registry.pending_erasures_in("influxdb").expect("pending");
        assert_eq!(pending, vec![second.clone()]);
        assert_eq!(
            registry.pending_erasures().expect("store's").len(),
            2,
            "the embedded store's erasures are its own"
        );
        assert_eq!(
            registry.sink_erasure(first.id, "influxdb").expect("read"),
            Some(("unsupported".into(), "HTTP 400: unsupported path".into()))
        );
        let body: String = registry
            .conn
            .query_row(
                "SELECT body FROM audit WHERE kind = 'erasure.influxdb'",
                [],
                |r| r.get(0),
            )
            .expect("audited");
        assert!(body.contains("\"outcome\":\"unsupported\""), "{body}");
        assert!(registry.verify_audit().is_ok());
    }

    #[test]
    fn the_last_word_on_a_servers_support_is_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let mut registry = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        let mut support = ErasureSupport {
            sink: "influxdb".into(),
            server: "http://127.0.0.1:8086".into(),
            supported: false,
            detail: "HTTP 404".into(),
            checked_ms: 1,
        };
        registry.note_erasure_support(&support).expect("note");
        support.supported = true;
        support.checked_ms = 2;
        registry.note_erasure_support(&support).expect("note again");
        assert_eq!(registry.erasure_support().expect("read"), vec![support]);
    }
}
