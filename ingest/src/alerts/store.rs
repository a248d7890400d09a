//! `alerts.db`: the alerts raised for care services, one row per (rule, citizen, care
//! service, start of the condition), until acknowledged and after.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};

use crate::store::{open_durable, open_existing, sqlite, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS alerts (
    id          INTEGER PRIMARY KEY,
    rule        TEXT    NOT NULL,
    citizen     TEXT    NOT NULL,
    grantee     TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    metric      TEXT    NOT NULL,
    started_ms  INTEGER NOT NULL,
    event_ms    INTEGER NOT NULL,
    raised_ms   INTEGER NOT NULL,
    value       REAL,
    acked_ms    INTEGER,
    acked_by    TEXT,
    UNIQUE (rule, citizen, grantee, started_ms)
);
CREATE INDEX IF NOT EXISTS alerts_by_grantee ON alerts (grantee, id);
CREATE INDEX IF NOT EXISTS alerts_by_citizen ON alerts (citizen);
";

const COLUMNS: &str = "id, rule, citizen, grantee, device, metric, started_ms, event_ms, raised_ms,
                       value, acked_ms, acked_by";

/// An alert to record for one care service.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub rule: String,
    pub citizen: String,
    pub grantee: String,
    pub device: String,
    pub metric: String,
    pub started_ms: i64,
    pub event_ms: i64,
    pub raised_ms: i64,
    pub value: Option<f64>,
}

/// A recorded alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub id: i64,
    pub new: NewAlert,
    /// When and by whom it was acknowledged.
    pub acked: Option<(i64, String)>,
}

/// What an acknowledgement found.
#[derive(Debug, Clone, PartialEq)]
pub enum Acked {
    /// Acknowledged now.
    Now(Alert),
    /// Acknowledged before (by whom, when): nothing changed.
    Before(Alert),
    /// No such alert for this care service.
    Unknown,
}

pub struct AlertStore {
    conn: Connection,
    path: PathBuf,
}

impl AlertStore {
    pub fn open(path: &Path) -> Result<AlertStore, StoreError> {
        Ok(AlertStore {
            conn: open_durable(path, SCHEMA)?,
            path: path.to_owned(),
        })
    }

    /// For readers (the HTTP API): the file must exist.
    pub fn open_existing(path: &Path) -> Result<AlertStore, StoreError> {
        Ok(AlertStore {
            conn: open_existing(path)?,
            path: path.to_owned(),
        })
    }

    /// Records `alerts` in one transaction; returns those that were new (an alert already
    /// recorded, say on a replay of the log after a restart, is not recorded twice).
    pub fn record(&mut self, alerts: &[NewAlert]) -> Result<Vec<Alert>, StoreError> {
        let tx = self.conn.transaction().map_err(sqlite(&self.path))?;
        let mut added = Vec::new();
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO alerts (rule, citizen, grantee, device, metric,
                        started_ms, event_ms, raised_ms, value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(sqlite(&self.path))?;
            for a in alerts {
                let n = insert
                    .execute(params![
                        a.rule,
                        a.citizen,
                        a.grantee,
                        a.device,
                        a.metric,
                        a.started_ms,
                        a.event_ms,
                        a.raised_ms,
                        a.value
                    ])
                    .map_err(sqlite(&self.path))?;
                if n == 1 {
                    added.push(Alert {
                        id: tx.last_insert_rowid(),
                        new: a.clone(),
                        acked: None,
                    });
                }
            }
        }
        tx.commit().map_err(sqlite(&self.path))?;
        Ok(added)
    }

    /// Alerts of `grantee` (every care service's when `None`), newest first, at most
    /// `limit`; only those not yet acknowledged when `open`.
    pub fn list(
        &self,
        grantee: Option<&str>,
        open: bool,
        limit: usize,
    ) -> Result<Vec<Alert>, StoreError> {
        self.list_before(grantee, open, None, limit)
    }

    /// As [`AlertStore::list`], of the alerts older than alert `before` (the next page).
    pub fn list_before(
        &self,
        grantee: Option<&str>,
        open: bool,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Alert>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM alerts
             WHERE (?1 IS NULL OR grantee = ?1) AND (?2 = 0 OR acked_ms IS NULL)
               AND (?4 IS NULL OR id < ?4)
             ORDER BY id DESC LIMIT ?3"
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(sqlite(&self.path))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![grantee, open, limit, before], alert)
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// Alert `id`, if it is `grantee`'s.
    pub fn get(&self, id: i64, grantee: &str) -> Result<Option<Alert>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1 AND grantee = ?2"),
                params![id, grantee],
                alert,
            )
            .optional()
            .map_err(sqlite(&self.path))
    }

    /// Acknowledges alert `id` of `grantee`, by `by`, at `now_ms`.
    pub fn acknowledge(
        &mut self,
        id: i64,
        grantee: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<Acked, StoreError> {
        let tx = self.conn.transaction().map_err(sqlite(&self.path))?;
        let found = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM alerts WHERE id = ?1 AND grantee = ?2"),
                params![id, grantee],
                alert,
            )
            .optional()
            .map_err(sqlite(&self.path))?;
        let answer = match found {
            None => Acked::Unknown,
            Some(a) if a.acked.is_some() => Acked::Before(a),
            Some(mut a) => {
                tx.execute(
                    "UPDATE alerts SET acked_ms = ?2, acked_by = ?3 WHERE id = ?1",
                    params![id, now_ms, by],
                )
                .map_err(sqlite(&self.path))?;
                a.acked = Some((now_ms, by.to_owned()));
                Acked::Now(a)
            }
        };
        tx.commit().map_err(sqlite(&self.path))?;
        Ok(answer)
    }

    /// Deletes the alerts about `citizen` raised at or before `until_ms` (an erasure);
    /// returns how many.
    pub fn erase(&mut self, citizen: &str, until_ms: i64) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "DELETE FROM alerts WHERE citizen = ?1 AND raised_ms <= ?2",
                params![citizen, until_ms],
            )
            .map_err(sqlite(&self.path))
    }
}

fn alert(r: &rusqlite::Row<'_>) -> rusqlite::Result<Alert> {
    let acked_ms: Option<i64> = r.get(10)?;
    let acked_by: Option<String> = r.get(11)?;
    Ok(Alert {
        id: r.get(0)?,
        new: NewAlert {
            rule: r.get(1)?,
            citizen: r.get(2)?,
            grantee: r.get(3)?,
            device: r.get(4)?,
            metric: r.get(5)?,
            started_ms: r.get(6)?,
            event_ms: r.get(7)?,
            raised_ms: r.get(8)?,
            value: r.get(9)?,
        },
        acked: acked_ms.map(|at| (at, acked_by.unwrap_or_default())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(citizen: &str, grantee: &str, started_ms: i64) -> NewAlert {
        NewAlert {
            rule: "low-spo2".into(),
            citizen: citizen.into(),
            grantee: grantee.into(),
            device: "ox-1".into(),
            metric: "spo2".into(),
            started_ms,
            event_ms: started_ms + 300_000,
            raised_ms: started_ms + 301_000,
            value: Some(86.0),
        }
    }

    #[test]
    fn an_alert_is_recorded_once_listed_per_service_and_acknowledged_once() {
        let dir = tempfile::tempdir().expect("dir");
        let mut store = AlertStore::open(&dir.path().join("alerts.db")).expect("open");
        let first = store
            .record(&[new("c-1", "st-luke", 0), new("c-1", "home-care", 0)])
            .expect("record");
        assert_eq!(first.len(), 2);
        let again = store
            .record(&[new("c-1", "st-luke", 0), new("c-2", "st-luke", 5)])
            .expect("record again");
        assert_eq!(again.len(), 1, "the repeat is not recorded twice");
        let mine = store.list(Some("st-luke"), true, 10).expect("list");
        let who: Vec<&str> = mine.iter().map(|a| a.new.citizen.as_str()).collect();
        assert_eq!(who, vec!["c-2", "c-1"], "newest first");
        assert_eq!(store.list(None, true, 10).expect("all").len(), 3);
        let next = store
            .list_before(Some("st-luke"), true, Some(mine[0].id), 10)
            .expect("next page");
        assert_eq!(next.len(), 1, "older than the newest");
        assert_eq!(next[0].id, mine[1].id);

        let id = mine[1].id;
        assert_eq!(
            store.get(id, "st-luke").expect("get").map(|a| a.id),
            Some(id)
        );
        assert_eq!(
            store.get(id, "home-care").expect("get"),
            None,
            "not another's"
        );
        assert_eq!(
            store.acknowledge(id, "home-care", "x", 9).expect("ack"),
            Acked::Unknown
        );
        let Acked::Now(done) = store.acknowledge(id, "st-luke", "nurse-1", 9).expect("ack") else {
            panic!("not acknowledged");
        };
        assert_eq!(done.acked, Some((9, "nurse-1".to_owned())));
        assert!(matches!(
            store.acknowledge(id, "st-luke", "nurse-2", 10).expect("ack"),
            Acked::Before(a) if a.acked == Some((9, "nurse-1".to_owned()))
        ));
        assert_eq!(
            store.list(Some("st-luke"), true, 10).expect("open").len(),
            1
        );
        assert_eq!(
            store.list(Some("st-luke"), false, 10).expect("all").len(),
            2
        );

        assert_eq!(store.erase("c-1", i64::MAX).expect("erase"), 2);
        assert_eq!(store.list(None, false, 10).expect("left").len(), 1);
    }
}
