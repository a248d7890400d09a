//! The dead-letter store `deadletter.db`: every message kenko refused to store, with the
//! reason, the payload and where it came from, so that nothing is lost silently.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::store::{open_durable, open_existing, sqlite, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    client_id   TEXT    NOT NULL,
    topic       TEXT    NOT NULL,
    device      TEXT,
    reason_code TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_reason ON dead_letters (reason_code);
CREATE TABLE IF NOT EXISTS replay_requests (
    id           INTEGER PRIMARY KEY,
    requested_ms INTEGER NOT NULL,
    letter_id    INTEGER,
    reason_code  TEXT,
    device       TEXT,
    done_ms      INTEGER,
    replayed     INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    skipped      INTEGER NOT NULL DEFAULT 0
);
";

/// Which letters a listing or a replay is about; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub id: Option<i64>,
    pub reason_code: Option<String>,
    pub device: Option<String>,
}

/// A request to run letters through the pipeline again, carried out by the hub's writer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayRequest {
    pub id: i64,
    pub selection: Selection,
    pub done_ms: Option<i64>,
    /// Letters now stored (and deleted from the dead letters).
    pub replayed: u64,
    /// Letters refused again (kept, with the new reason).
    pub failed: u64,
    /// Letters that cannot be replayed through the pipeline (e.g. rows InfluxDB refused).
    pub skipped: u64,
}

fn selection_sql(prefix: &str) -> String {
    format!(
        "{prefix} (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR reason_code = ?2) AND (?3 IS NULL OR device = ?3)"
    )
}

/// One refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub received_ms: i64,
    pub client_id: String,
    pub topic: String,
    pub device: Option<String>,
    /// Stable code, e.g. `unknown_device`, `malformed_payload`.
    pub reason_code: String,
    /// What was wrong, for people.
    pub reason: String,
    pub payload: Vec<u8>,
}

pub struct DeadLetterStore {
    conn: Connection,
    path: PathBuf,
}

impl DeadLetterStore {
    pub fn open(path: &Path) -> Result<DeadLetterStore, StoreError> {
        let conn = open_durable(path, SCHEMA)?;
        Ok(DeadLetterStore {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn open_read_only(path: &Path) -> Result<DeadLetterStore, StoreError> {
        Ok(DeadLetterStore {
            conn: open_existing(path)?,
            path: path.to_owned(),
        })
    }

    /// Records letters in one transaction.
    pub fn record(&mut self, letters: &[DeadLetter]) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sqlite(&path))?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO dead_letters (received_ms, client_id, topic, device, reason_code, reason, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(sqlite(&path))?;
            for l in letters {
                insert
                    .execute(params![
                        l.received_ms,
                        l.client_id,
                        l.topic,
                        l.device,
                        l.reason_code,
                        l.reason,
                        l.payload
                    ])
                    .map_err(sqlite(&path))?;
            }
        }
        tx.commit().map_err(sqlite(&path))
    }

    /// The newest `limit` letters with their ids, newest first.
    pub fn list(&self, limit: usize) -> Result<Vec<(i64, DeadLetter)>, StoreError> {
        self.select(&Selection::default(), limit)
    }

    /// The newest `limit` letters of a selection, newest first.
    pub fn select(
        &self,
        selection: &Selection,
        limit: usize,
    ) -> Result<Vec<(i64, DeadLetter)>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT id, received_ms, client_id, topic, device, reason_code, reason, payload
             FROM dead_letters {} ORDER BY id DESC LIMIT ?4",
            selection_sql("WHERE")
        );
        let mut stmt = self.conn.prepare_cached(&sql).map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(
                params![selection.id, selection.reason_code, selection.device, limit],
                |r| {
                    Ok((
                        r.get(0)?,
                        DeadLetter {
                            received_ms: r.get(1)?,
                            client_id: r.get(2)?,
                            topic: r.get(3)?,
                            device: r.get(4)?,
                            reason_code: r.get(5)?,
                            reason: r.get(6)?,
                            payload: r.get(7)?,
                        },
                    ))
                },
            )
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// Asks the hub to replay a selection; returns the request's id.
    pub fn request_replay(
        &mut self,
        selection: &Selection,
        now_ms: i64,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO replay_requests (requested_ms, letter_id, reason_code, device) VALUES (?1, ?2, ?3, ?4)",
                params![now_ms, selection.id, selection.reason_code, selection.device],
            )
            .map_err(sqlite(&self.path))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Requests not yet carried out, oldest first; or the one with `id`.
    pub fn replay_requests(&self, id: Option<i64>) -> Result<Vec<ReplayRequest>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, letter_id, reason_code, device, done_ms, replayed, failed, skipped
                 FROM replay_requests WHERE (?1 IS NULL AND done_ms IS NULL) OR id = ?1 ORDER BY id",
            )
            .map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(params![id], |r| {
                Ok(ReplayRequest {
                    id: r.get(0)?,
                    selection: Selection {
                        id: r.get(1)?,
                        reason_code: r.get(2)?,
                        device: r.get(3)?,
                    },
                    done_ms: r.get(4)?,
                    replayed: r.get::<_, i64>(5)?.try_into().unwrap_or(0),
                    failed: r.get::<_, i64>(6)?.try_into().unwrap_or(0),
                    skipped: r.get::<_, i64>(7)?.try_into().unwrap_or(0),
                })
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// Settles replayed letters in one transaction: `stored` ones are deleted, refused
    /// ones get their new reason (or are deleted when their citizen no longer lets the hub
    /// keep anything), and the request is marked done with its counts.
    pub fn finish_replay(
        &mut self,
        request: &ReplayRequest,
        stored: &[i64],
        refused: &[(i64, String, String)],
        forget: &[i64],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sqlite(&path))?;
        {
            let mut delete = tx
                .prepare_cached("DELETE FROM dead_letters WHERE id = ?1")
                .map_err(sqlite(&path))?;
            for id in stored.iter().chain(forget) {
                delete.execute([id]).map_err(sqlite(&path))?;
            }
            let mut update = tx
                .prepare_cached(
                    "UPDATE dead_letters SET reason_code = ?2, reason = ?3 WHERE id = ?1",
                )
                .map_err(sqlite(&path))?;
            for (id, code, reason) in refused {
                update
                    .execute(params![id, code, reason])
                    .map_err(sqlite(&path))?;
            }
            tx.execute(
                "UPDATE replay_requests SET done_ms = ?2, replayed = ?3, failed = ?4, skipped = ?5 WHERE id = ?1",
                params![
                    request.id,
                    now_ms,
                    stored.len() as i64,
                    (refused.len() + forget.len()) as i64,
                    request.skipped as i64
                ],
            )
            .map_err(sqlite(&path))?;
        }
        tx.commit().map_err(sqlite(&path))
    }

    pub fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM dead_letters", [], |r| r.get(0))
            .map_err(sqlite(&self.path))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Letters per reason code, most frequent first.
    pub fn count_by_reason(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.counts("SELECT reason_code, count(*) AS n FROM dead_letters GROUP BY reason_code ORDER BY n DESC, reason_code")
    }

    /// How many letters each device has (letters of no known device under the client id).
    pub fn count_by_device(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.counts(
            "SELECT coalesce(device, client_id) AS d, count(*) AS n FROM dead_letters
             GROUP BY d ORDER BY n DESC, d",
        )
    }

    /// (name, count) rows of `sql`.
    fn counts(&self, sql: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(code: &str, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            received_ms: 1,
            client_id: "bed-9".into(),
            topic: "devices/bed-9/telemetry".into(),
            device: Some("bed-9".into()),
            reason_code: code.into(),
            reason: format!("because {code}"),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn records_lists_and_counts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deadletter.db");
        let mut store = DeadLetterStore::open(&path).expect("open");
        store
            .record(&[
                letter("unknown_device", b"{}"),
                letter("malformed_payload", b"\xff"),
                letter("unknown_device", b"x"),
            ])
            .expect("record");
        let reader = DeadLetterStore::open_read_only(&path).expect("read-only");
        assert_eq!(reader.count().expect("count"), 3);
        assert_eq!(
            reader.count_by_reason().expect("by reason"),
            vec![
                ("unknown_device".to_owned(), 2),
                ("malformed_payload".to_owned(), 1)
            ]
        );
        let newest = reader.list(2).expect("list");
        assert_eq!(newest.len(), 2);
        assert_eq!(newest[0].1.payload, b"x");
        assert_eq!(newest[1].1, letter("malformed_payload", b"\xff"));
        assert!(DeadLetterStore::open_read_only(&dir.path().join("none.db")).is_err());
    }

    #[test]
    fn letters_survive_reopen_in_a_durable_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("deadletter.db");
        let mut store = DeadLetterStore::open(&path).expect("open");
        let (mode, sync): (String, i64) = (
            store
                .conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .expect("journal_mode"),
            store
                .conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .expect("synchronous"),
        );
        assert_eq!(
            (mode.as_str(), sync),
            ("wal", 2),
            "WAL with synchronous=FULL"
        );
        assert_eq!(store.count().expect("count"), 0);
        assert!(store.list(10).expect("list").is_empty());
        store.record(&[]).expect("nothing to record");
        let mut anonymous = letter("malformed_payload", b"");
        anonymous.device = None;
        store.record(&[anonymous.clone()]).expect("record");
        drop(store);
        let mut again = DeadLetterStore::open(&path).expect("reopen");
        again
            .record(&[letter("unknown_device", b"y")])
            .expect("record");
        let listed = again.list(10).expect("list");
        assert_eq!(listed.len(), 2);
        assert!(listed[0].0 > listed[1].0, "newest first");
        assert_eq!(listed[1].1, anonymous);
    }

    #[test]
    fn read_only_open_explains_a_missing_or_newer_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = DeadLetterStore::open_read_only(&dir.path().join("none.db"))
            .err()
            .expect("missing");
        assert!(matches!(missing, StoreError::Missing(_)), "{missing}");
        assert!(missing.to_string().contains("--data-dir"), "{missing}");
        let path = dir.path().join("deadletter.db");
        drop(DeadLetterStore::open(&path).expect("open"));
        Connection::open(&path)
            .expect("raw")
            .pragma_update(None, "user_version", 99)
            .expect("bump");
        let newer = DeadLetterStore::open_read_only(&path).err().expect("newer");
        assert!(matches!(newer, StoreError::NewerSchema { .. }), "{newer}");
    }
}
