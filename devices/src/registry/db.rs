//! The file `registry.db` as the registry uses it: its `devices` and `principals` tables,
//! opened the same way by both stores. The consent records and the audit log (kenko-ingest)
//! live in the same file; every statement here is `IF NOT EXISTS`, so either side may create
//! the file first.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS devices (
    id            TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    citizen       TEXT    NOT NULL,
    profile       TEXT    NOT NULL,
    timezone      TEXT,
    password_hash TEXT,
    added_at      INTEGER NOT NULL, -- epoch milliseconds
    gateway       TEXT              -- the device it is registered behind, if any
);
CREATE INDEX IF NOT EXISTS devices_by_citizen ON devices (citizen);
CREATE TABLE IF NOT EXISTS principals (
    id            TEXT    PRIMARY KEY,
    roles         TEXT    NOT NULL,  -- comma-separated
    citizen       TEXT,
    password_hash TEXT    NOT NULL,
    added_at      INTEGER NOT NULL,  -- epoch milliseconds
    changed_at    INTEGER NOT NULL
);
";

/// Opens (or creates) `registry.db` in WAL mode with both tables.
pub(super) fn open(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    conn.execute_batch(SCHEMA)?;
    add_gateway_column(&mut conn)?;
    Ok(conn)
}

/// A file written before devices could be registered behind a gateway gets the column,
/// checked and added under the write lock (two processes may open an old file at once).
fn add_gateway_column(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = immediate(conn)?;
    if !has_column(&tx, "devices", "gateway")? {
        tx.execute_batch("ALTER TABLE devices ADD COLUMN gateway TEXT")?;
    }
    tx.commit()
}

/// Opens an existing `registry.db` for reading; `None` if there is no such file.
pub(super) fn open_read_only(path: &Path) -> rusqlite::Result<Option<Connection>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(Some(conn))
}

/// A write transaction that holds the file's write lock from its start, so that what it
/// checks still holds when it commits.
pub(super) fn immediate(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

/// Which table holds an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Holder {
    Device,
    Principal,
}

/// The table of the file that holds `id`, if one does.
pub(super) fn holder(conn: &Connection, id: &str) -> rusqlite::Result<Option<Holder>> {
    let found = |table: &str| -> rusqlite::Result<bool> {
        Ok(conn
            .query_row(
                &format!("SELECT 1 FROM {table} WHERE id = ?1"),
                [id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    };
    Ok(if found("devices")? {
        Some(Holder::Device)
    } else if found("principals")? {
        Some(Holder::Principal)
    } else {
        None
    })
}

/// Does the file have this table? (A file written by an older kenko, opened read-only, may
/// not.)
pub(super) fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Does `table` have `column`? (A file written by an older kenko may lack a newer column.)
pub(super) fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2",
            [table, column],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}
