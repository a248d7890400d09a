//! Citizens' consent: the registry in `registry.db` (append-only records: a withdrawal is a
//! new record, never an edit), the snapshot the hub decides with, and the hash-chained audit
//! log of every consent change.
//!
//! A record says: `citizen` lets `grantee` use their data for `purpose` (collect, care,
//! research), for some data types or all, from / until a time. Collection and research are
//! granted to the hub itself (grantee [`HUB`]). For a (citizen, grantee, purpose) and a data
//! type, the latest record that names the type (or all types) decides.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kenko_config::poll::Poller;
use tracing::{debug, error};

use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

use crate::store::{open_durable, open_existing, sqlite, StoreError};

/// The grantee of `collect` and `research`: the hub itself.
pub const HUB: &str = "kenko";

/// What a citizen consents to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// The hub may store the citizen's data at all.
    Collect,
    /// A named grantee (a care service) may see identified data.
    Care,
    /// Pseudonymized data may go to the shared store for research.
    Research,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Collect => "collect",
            Purpose::Care => "care",
            Purpose::Research => "research",
        }
    }
}

impl FromStr for Purpose {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "collect" => Ok(Purpose::Collect),
            "care" => Ok(Purpose::Care),
            "research" => Ok(Purpose::Research),
            other => Err(format!(
                "unknown purpose {other:?}; use collect, care or research"
            )),
        }
    }
}

/// One consent record as stored: the change as it was asked for, numbered and timed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consent {
    pub id: i64,
    pub recorded_ms: i64,
    pub change: ConsentChange,
}

impl Consent {
    fn covers(&self, data_type: &str) -> bool {
        let types = &self.change.data_types;
        types.is_empty() || types.iter().any(|t| t == data_type)
    }

    /// Does the record's validity window hold data from `event_ms`?
    pub fn covers_time(&self, event_ms: i64) -> bool {
        self.change
            .valid_from_ms
            .is_none_or(|from| event_ms >= from)
            && self
                .change
                .valid_until_ms
                .is_none_or(|until| event_ms < until)
    }
}

#[cfg(test)]
impl ConsentChange {
    /// For tests: `citizen` withdraws collection and asks for erasure.
    pub(crate) fn erasure_of(citizen: &str) -> ConsentChange {
        ConsentChange {
            citizen: citizen.into(),
            grantee: HUB.into(),
            purpose: Purpose::Collect,
            data_types: Vec::new(),
            valid_from_ms: None,
            valid_until_ms: None,
            source: "test".into(),
            granted: false,
            erase: true,
        }
    }
}

/// Records kept past this many in a snapshot's newer part are folded into its older part:
/// a change copies only the newer part, so putting a withdrawal in force costs the same
/// whatever the size of the registry, and folding happens once per this many changes.
const RECENT_MAX: usize = 4096;

/// Records grouped by citizen, oldest first.
#[derive(Debug, Default, Clone)]
struct Records {
    /// Each citizen's records, oldest first (a citizen has few; looking one up allocates
    /// nothing, which matters on the ingest path).
    by_citizen: HashMap<String, Vec<Consent>>,
    /// The latest erasure request of each citizen (recorded at, epoch ms).
    erasures: HashMap<String, i64>,
    len: usize,
}

impl Records {
    fn add(&mut self, r: Consent) {
        if r.change.erase {
            let at = self
                .erasures
                .entry(r.change.citizen.clone())
                .or_insert(r.recorded_ms);
            *at = (*at).max(r.recorded_ms);
        }
        self.len += 1;
        self.by_citizen
            .entry(r.change.citizen.clone())
            .or_default()
            .push(r);
    }

    fn merged(&self, other: &Records) -> Records {
        let mut all = self.clone();
        for list in other.by_citizen.values() {
            for r in list {
                all.add(r.clone());
            }
        }
        all
    }

    fn of(&self, citizen: &str) -> &[Consent] {
        self.by_citizen.get(citizen).map_or(&[], Vec::as_slice)
    }
}

/// The consent records in force, for decisions: an immutable snapshot. A newer snapshot
/// shares the older records with the one it was made from and copies only the few records
/// added since (see [`Consents::with`]).
#[derive(Debug, Default, Clone)]
pub struct Consents {
    /// Older records, shared between snapshots.
    base: Arc<Records>,
    /// Records newer than every one in `base` (at most [`RECENT_MAX`]).
    recent: Records,
    /// The highest record id read: records are only ever added, so a snapshot with a higher
    /// one is newer.
    last_id: i64,
}

impl Consents {
    pub fn new(records: Vec<Consent>) -> Consents {
        Consents::default().with(records)
    }

    /// The highest record id this snapshot holds (0 for none).
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    /// How many records this snapshot holds.
    pub fn len(&self) -> usize {
        self.base.len + self.recent.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// This snapshot with `records` added; records it already holds (by id) are skipped, so
    /// two readers that load the same records cannot add them twice.
    pub fn with(&self, records: Vec<Consent>) -> Consents {
        self.with_folding(records, RECENT_MAX)
    }

    /// [`Consents::with`], folding the newer part into the older past `recent_max` records.
    fn with_folding(&self, mut records: Vec<Consent>, recent_max: usize) -> Consents {
        records.retain(|r| r.id > self.last_id);
        records.sort_by_key(|r| r.id);
        let last_id = records.last().map_or(self.last_id, |r| r.id);
        let mut recent = self.recent.clone();
        for r in records {
            recent.add(r);
        }
        if recent.len <= recent_max {
            return Consents {
                base: self.base.clone(),
                recent,
                last_id,
            };
        }
        let base = if self.base.len == 0 {
            recent // the first load: nothing to merge with
        } else {
            self.base.merged(&recent)
        };
        Consents {
            base: Arc::new(base),
            recent: Records::default(),
            last_id,
        }
    }

    /// A citizen's records, newest first.
    fn newest_first<'a>(&'a self, citizen: &str) -> impl Iterator<Item = &'a Consent> {
        let recent = self.recent.of(citizen).iter().rev();
        recent.chain(self.base.of(citizen).iter().rev())
    }

    /// The record that decides for (citizen, grantee, purpose, data type) at `at_ms`: the
    /// latest that covers the type among those recorded by then.
    pub fn deciding(
        &self,
        citizen: &str,
        grantee: &str,
        purpose: Purpose,
        data_type: &str,
        at_ms: i64,
    ) -> Option<&Consent> {
        self.newest_first(citizen).find(|r| {
            r.change.purpose == purpose
                && r.change.grantee == grantee
                && r.recorded_ms <= at_ms
                && r.covers(data_type)
        })
    }

    /// The one consent rule, for every path (ingest routing, research copies, live
    /// deliveries, queries, exports): may `grantee` use `citizen`'s `data_type` observed at
    /// `event_ms` for `purpose`, when delivering or reading it at `at_ms`?
    ///
    /// Yes only if the record that decides at `at_ms` (the latest one recorded by then that
    /// names the type, or all types) is a grant whose validity window covers `event_ms`. So
    /// a late reading from before a grant's window is never let through, and a withdrawal
    /// stops everything decided after it was recorded.
    pub fn permits(
        &self,
        citizen: &str,
        grantee: &str,
        purpose: Purpose,
        data_type: &str,
        event_ms: i64,
        at_ms: i64,
    ) -> bool {
        self.deciding(citizen, grantee, purpose, data_type, at_ms)
            .is_some_and(|r| r.change.granted && r.covers_time(event_ms))
    }

    /// Every citizen who asked for erasure, with the time of their latest request.
    pub fn erasures(&self) -> Vec<(&str, i64)> {
        let mut all: std::collections::HashMap<&str, i64> = std::collections::HashMap::new();
        for (citizen, &at) in self.base.erasures.iter().chain(&self.recent.erasures) {
            let latest = all.entry(citizen.as_str()).or_insert(at);
            *latest = (*latest).max(at);
        }
        all.into_iter().collect()
    }

    /// The grantees `citizen` has named for `purpose` in any record (in force or not), each
    /// once, in the order first named.
    pub fn grantees(&self, citizen: &str, purpose: Purpose) -> Vec<&str> {
        let mut found: Vec<&str> = Vec::new();
        let records = self.base.of(citizen).iter().chain(self.recent.of(citizen));
        for r in records.filter(|r| r.change.purpose == purpose) {
            if !found.contains(&r.change.grantee.as_str()) {
                found.push(&r.change.grantee);
            }
        }
        found
    }

    /// The citizens who let `grantee` use some data type for `purpose` at `at_ms` (as
    /// [`Consents::permits_any`]), sorted.
    pub fn citizens_permitting(&self, grantee: &str, purpose: Purpose, at_ms: i64) -> Vec<String> {
        let mut citizens: Vec<&String> = self
            .base
            .by_citizen
            .keys()
            .chain(self.recent.by_citizen.keys())
            .collect();
        citizens.sort_unstable();
        citizens.dedup();
        citizens
            .into_iter()
            .filter(|c| self.permits_any(c, grantee, purpose, at_ms))
            .cloned()
            .collect()
    }

    /// Was erasure of `citizen`'s data asked for at or after `received_ms`? Data received
    /// before an erasure request must not be stored after it, even if it was still queued.
    pub fn erased_after(&self, citizen: &str, received_ms: i64) -> bool {
        [&self.recent.erasures, &self.base.erasures]
            .iter()
            .any(|e| e.get(citizen).is_some_and(|&at| at >= received_ms))
    }

    /// Does [`Consents::permits`] let `grantee` use some data type of `citizen`, observed at
    /// `at_ms`, for `purpose` at `at_ms`? For a message that could not be decoded, whose
    /// types and times are unknown.
    pub fn permits_any(&self, citizen: &str, grantee: &str, purpose: Purpose, at_ms: i64) -> bool {
        // The types some record names, and one no record names (covered only by "all").
        let mut types: Vec<&str> = self
            .newest_first(citizen)
            .filter(|r| r.change.purpose == purpose && r.change.grantee == grantee)
            .flat_map(|r| r.change.data_types.iter().map(String::as_str))
            .collect();
        types.push("\0unnamed");
        types
            .into_iter()
            .any(|t| self.permits(citizen, grantee, purpose, t, at_ms, at_ms))
    }
}

/// The consents in force, shared by ingest routing and the broker's egress checks, and
/// replaced by a newer snapshot when consent records are added.
#[derive(Debug, Default)]
pub struct ConsentBook {
    current: RwLock<Arc<Consents>>,
    generation: AtomicU64,
}

impl ConsentBook {
    pub fn new(consents: Consents) -> ConsentBook {
        ConsentBook {
            current: RwLock::new(Arc::new(consents)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn current(&self) -> Arc<Consents> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes each time new records take force (and only then: audit entries and other
    /// writes to the registry leave it alone).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `consents` in force unless the book already holds a newer snapshot (two readers
    /// of the registry may finish in either order).
    pub fn replace(&self, consents: Consents) {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if consents.last_id < current.last_id {
            return;
        }
        *current = Arc::new(consents);
        drop(current);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Adds `records` to the snapshot in force (those it already holds are skipped); `true`
    /// if any took force.
    pub fn extend(&self, records: Vec<Consent>) -> bool {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = current.with(records);
        if next.last_id == current.last_id {
            return false;
        }
        *current = Arc::new(next);
        drop(current);
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// Keeps a [`ConsentBook`] up with `registry.db` through a connection of its own. A commit
/// is noticed by SQLite's data version (one cheap query); only then are the consent records
/// added since the book's newest read, by id. Audit entries (every read of identified data
/// writes one) change the data version but add no record, so they never reload the book.
struct ConsentFollower {
    registry: ConsentRegistry,
    /// `registry.db`'s data version when the records were last read here.
    version: Option<i64>,
}

impl ConsentFollower {
    fn open(path: &Path) -> Result<ConsentFollower, StoreError> {
        Ok(ConsentFollower {
            registry: ConsentRegistry::open(path)?,
            version: None,
        })
    }

    /// Brings `book` up to every record committed before this call; `true` if new records
    /// took force.
    fn catch_up(&mut self, book: &ConsentBook) -> Result<bool, StoreError> {
        // Read before the records: a commit in between is noticed next time.
        let version = self.registry.data_version()?;
        if self.version == Some(version) {
            return Ok(false);
        }
        let added = self.registry.list_after(book.current().last_id())?;
        self.version = Some(version);
        Ok(!added.is_empty() && book.extend(added))
    }
}

/// A reader of the registry that keeps a [`ConsentBook`] current on demand: the ingest
/// writer and the sinks refresh before each batch, so a batch is decided with every record
/// committed before it started.
pub struct ConsentView {
    follower: ConsentFollower,
    book: Arc<ConsentBook>,
}

impl ConsentView {
    pub fn open(path: &Path, book: Arc<ConsentBook>) -> Result<ConsentView, StoreError> {
        Ok(ConsentView {
            follower: ConsentFollower::open(path)?,
            book,
        })
    }

    /// The records in force, after adding any another connection has committed since.
    pub fn refresh(&mut self) -> Arc<Consents> {
        if let Err(e) = self.follower.catch_up(&self.book) {
            error!(error = %e, "cannot read new consent records; deciding with the records in force");
        }
        self.book.current()
    }

    pub fn book(&self) -> &Arc<ConsentBook> {
        &self.book
    }

    pub fn registry(&mut self) -> &mut ConsentRegistry {
        &mut self.follower.registry
    }
}

/// The thread that keeps a [`ConsentBook`] up with `registry.db` (a [`Poller`]); stops
/// when dropped.
pub struct ConsentWatcher {
    _poller: Poller,
}

impl ConsentWatcher {
    /// Checks the registry every `every` (a cheap query) and adds the records another
    /// connection (`kenko consent`, the HTTP API) has committed.
    pub fn start(
        path: &Path,
        book: Arc<ConsentBook>,
        every: Duration,
    ) -> Result<ConsentWatcher, StoreError> {
        let mut follower = ConsentFollower::open(path)?;
        follower.catch_up(&book)?;
        let poller = Poller::spawn("kenko-consent", every, move || {
            match follower.catch_up(&book) {
                Ok(true) => debug!("new consent records in force"),
                Ok(false) => {}
                Err(e) => error!(error = %e, "cannot read new consent records; the previous ones stay in force"),
            }
        })
        .map_err(|e| StoreError::Io {
            path: path.to_owned(),
            source: e,
        })?;
        Ok(ConsentWatcher { _poller: poller })
    }
}

/// One read of a citizen's identified data, from the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifiedRead {
    pub at_ms: i64,
    pub principal: String,
    /// The metrics read, comma-separated.
    pub metrics: String,
}

/// A record to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentChange {
    pub citizen: String,
    pub grantee: String,
    pub purpose: Purpose,
    pub data_types: Vec<String>,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub source: String,
    pub granted: bool,
    pub erase: bool,
}

/// The longest `source` a record keeps, in bytes. Every record and its audit entry are kept
/// for good, so a source is a short note (a form number, an app's name), not a document.
pub const MAX_SOURCE: usize = 256;

/// The longest data type name checked against the catalogue, in bytes; longer names are
/// refused without being looked up (or repeated in the error).
const MAX_DATA_TYPE: usize = 64;

/// Why a consent record cannot be stored as given. Messages name the field and the rule, not
/// the value, which may be megabytes long.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidChange {
    #[error("{field} is {len} bytes long; at most {max} bytes are allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} {why}")]
    Identifier { field: &'static str, why: String },
    #[error("data_types: {0}")]
    UnknownType(String),
    #[error("data_types names {0} more than once; name each data type once")]
    Repeated(String),
}

impl ConsentChange {
    /// Checks every text the record would store: identifiers by the config's rules, data
    /// types against the catalogue (each once, so their number is bounded), `source` by
    /// [`MAX_SOURCE`].
    pub fn check(&self) -> Result<(), InvalidChange> {
        self.check_texts()?;
        let mut seen = Vec::with_capacity(self.data_types.len());
        for name in &self.data_types {
            too_long("data_types entry", name, MAX_DATA_TYPE)?;
            let metric: kenko_devices::Metric =
                name.parse()
                    .map_err(|e: kenko_devices::catalogue::UnknownMetric| {
                        InvalidChange::UnknownType(e.to_string())
                    })?;
            if seen.contains(&metric) {
                return Err(InvalidChange::Repeated(metric.name().to_owned()));
            }
            seen.push(metric);
        }
        Ok(())
    }
}

impl ConsentChange {
    /// Checks the record's identifiers and the length of its texts, not its data types
    /// against this kenko's catalogue: for records a hub has checked already (a newer hub
    /// may know more metrics; a record naming one applies to that metric alone).
    pub fn check_texts(&self) -> Result<(), InvalidChange> {
        for (field, id) in [("citizen", &self.citizen), ("grantee", &self.grantee)] {
            kenko_config::check_identifier(id)
                .map_err(|why| InvalidChange::Identifier { field, why })?;
        }
        too_long("source", &self.source, MAX_SOURCE)?;
        for name in &self.data_types {
            too_long("data_types entry", name, MAX_DATA_TYPE)?;
        }
        Ok(())
    }
}

fn too_long(field: &'static str, value: &str, max: usize) -> Result<(), InvalidChange> {
    if value.len() > max {
        return Err(InvalidChange::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    Ok(())
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS consents (
    id             INTEGER PRIMARY KEY,
    citizen        TEXT    NOT NULL,
    grantee        TEXT    NOT NULL,
    purpose        TEXT    NOT NULL,
    data_types     TEXT    NOT NULL,
    valid_from_ms  INTEGER,
    valid_until_ms INTEGER,
    recorded_ms    INTEGER NOT NULL,
    source         TEXT    NOT NULL,
    granted        INTEGER NOT NULL,
    erase          INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS consents_by_citizen ON consents (citizen);
-- A citizen's own goals (consent/goals.rs); deleted with an erasure request.
CREATE TABLE IF NOT EXISTS goals (
    citizen   TEXT    NOT NULL,
    metric    TEXT    NOT NULL,
    direction TEXT    NOT NULL,
    target    REAL    NOT NULL,
    set_ms    INTEGER NOT NULL,
    PRIMARY KEY (citizen, metric)
);
CREATE TABLE IF NOT EXISTS erasures_done (
    consent_id INTEGER PRIMARY KEY,
    done_ms    INTEGER NOT NULL,
    rows       INTEGER NOT NULL
);
-- Erasures carried out by sinks besides the embedded store (InfluxDB), with their outcome.
CREATE TABLE IF NOT EXISTS sink_erasures (
    consent_id INTEGER NOT NULL,
    sink       TEXT    NOT NULL,
    done_ms    INTEGER NOT NULL,
    outcome    TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    PRIMARY KEY (consent_id, sink)
);
-- Whether each such sink's server can delete a citizen's data at all, as last checked.
CREATE TABLE IF NOT EXISTS sink_erasure_support (
    sink       TEXT    PRIMARY KEY,
    server     TEXT    NOT NULL,
    supported  INTEGER NOT NULL,
    detail     TEXT    NOT NULL,
    checked_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    seq     INTEGER PRIMARY KEY,
    at_ms   INTEGER NOT NULL,
    kind    TEXT    NOT NULL,
    body    TEXT    NOT NULL,
    prev    BLOB    NOT NULL,
    hash    BLOB    NOT NULL
);
";

/// `registry.db`: consent records and the audit log.
pub struct ConsentRegistry {
    conn: Connection,
    path: PathBuf,
}

/// The file next to `registry.db` that holds the latest audit checkpoint (sequence number and
/// hash). Copy it somewhere else, or print it with `kenko audit head`, to anchor the log: a
/// log truncated behind a checkpoint fails verification.
pub fn audit_head_path(registry: &Path) -> PathBuf {
    registry.with_file_name("audit-head")
}

impl ConsentRegistry {
    pub fn open(path: &Path) -> Result<ConsentRegistry, StoreError> {
        let conn = open_durable(path, SCHEMA)?;
        Ok(ConsentRegistry {
            conn,
            path: path.to_owned(),
        })
    }

    pub fn open_read_only(path: &Path) -> Result<ConsentRegistry, StoreError> {
        Ok(ConsentRegistry {
            conn: open_existing(path)?,
            path: path.to_owned(),
        })
    }

    /// Adds a record and its audit entry in one transaction; returns the record as stored.
    pub fn record(&mut self, new: ConsentChange, now_ms: i64) -> Result<Consent, StoreError> {
        new.check()?;
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let (consent, head) = insert_record(&tx, &path, None, new, now_ms, now_ms, None)?;
        commit_with_head(tx, &path, head)?;
        Ok(consent)
    }

    /// Appends an audit entry on its own (decisions on identified data, erasures).
    pub fn audit(&mut self, at_ms: i64, kind: &str, body: &str) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let head = append_audit(&tx, &path, at_ms, kind, body)?;
        commit_with_head(tx, &path, head)
    }

    /// Every record, oldest first; only `citizen`'s when given.
    pub fn list(&self, citizen: Option<&str>) -> Result<Vec<Consent>, StoreError> {
        self.select(
            "SELECT id, citizen, grantee, purpose, data_types, valid_from_ms, valid_until_ms,
                    recorded_ms, source, granted, erase
             FROM consents WHERE ?1 IS NULL OR citizen = ?1 ORDER BY id",
            params![citizen],
        )
    }

    /// The reads of `citizen`'s identified data written to the audit log since `since_ms`
    /// (`access.identified` entries naming them), but those of principal `except` (the
    /// citizen's own app), newest first, at most `limit`.
    pub fn identified_reads(
        &self,
        citizen: &str,
        since_ms: i64,
        except: Option<&str>,
        limit: usize,
    ) -> Result<Vec<IdentifiedRead>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT at_ms, json_extract(body, '$.principal'), json_extract(body, '$.metric')
                 FROM audit
                 WHERE kind = 'access.identified' AND at_ms >= ?2
                   AND EXISTS (SELECT 1 FROM json_each(body, '$.citizens') WHERE value = ?1)
                   AND (?4 IS NULL OR json_extract(body, '$.principal') IS NOT ?4)
                 ORDER BY seq DESC LIMIT ?3",
            )
            .map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(params![citizen, since_ms, limit as i64, except], |r| {
                Ok(IdentifiedRead {
                    at_ms: r.get(0)?,
                    principal: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                    metrics: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                })
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// The records with an id above `last_id`, oldest first: those added since a reader
    /// last looked (ids only grow, and SQLite commits writers one at a time, in id order).
    pub fn list_after(&self, last_id: i64) -> Result<Vec<Consent>, StoreError> {
        self.select(
            "SELECT id, citizen, grantee, purpose, data_types, valid_from_ms, valid_until_ms,
                    recorded_ms, source, granted, erase
             FROM consents WHERE id > ?1 ORDER BY id",
            params![last_id],
        )
    }

    fn select(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Consent>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(sqlite(&self.path))?;
        let rows = stmt
            .query_map(args, |r| {
                let purpose: String = r.get(3)?;
                let types: String = r.get(4)?;
                Ok(Consent {
                    id: r.get(0)?,
                    recorded_ms: r.get(7)?,
                    change: ConsentChange {
                        citizen: r.get(1)?,
                        grantee: r.get(2)?,
                        purpose: purpose.parse().unwrap_or(Purpose::Collect),
                        data_types: types
                            .split(',')
                            .filter(|t| !t.is_empty())
                            .map(str::to_owned)
                            .collect(),
                        valid_from_ms: r.get(5)?,
                        valid_until_ms: r.get(6)?,
                        source: r.get(8)?,
                        granted: r.get(9)?,
                        erase: r.get(10)?,
                    },
                })
            })
            .map_err(sqlite(&self.path))?;
        rows.collect::<Result<_, _>>().map_err(sqlite(&self.path))
    }

    /// Withdrawals that asked for erasure and have not been carried out, oldest first.
    pub fn pending_erasures(&self) -> Result<Vec<Consent>, StoreError> {
        let done: std::collections::HashSet<i64> = {
            let mut stmt = self
                .conn
                .prepare("SELECT consent_id FROM erasures_done")
                .map_err(sqlite(&self.path))?;
            let ids = stmt
                .query_map([], |r| r.get(0))
                .map_err(sqlite(&self.path))?;
            ids.collect::<Result<_, _>>().map_err(sqlite(&self.path))?
        };
        Ok(self
            .list(None)?
            .into_iter()
            .filter(|c| c.change.erase && !done.contains(&c.id))
            .collect())
    }

    /// Records that the erasure asked for by `consent` was carried out (`rows` deleted),
    /// with its audit entry.
    pub fn erasure_done(
        &mut self,
        consent: &Consent,
        rows: usize,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        tx.execute(
            "INSERT OR IGNORE INTO erasures_done (consent_id, done_ms, rows) VALUES (?1, ?2, ?3)",
            params![consent.id, now_ms, rows as i64],
        )
        .map_err(sqlite(&path))?;
        let body = serde_json::json!({
            "consent": consent.id,
            "citizen": consent.change.citizen,
            "rows_deleted": rows,
        })
        .to_string();
        let head = append_audit(&tx, &path, now_ms, "erasure.done", &body)?;
        commit_with_head(tx, &path, head)
    }

    /// The consents in force now.
    pub fn consents(&self) -> Result<Consents, StoreError> {
        Ok(Consents::new(self.list(None)?))
    }

    /// Changes whenever another connection commits to the registry: a cheap way to notice
    /// records added by `kenko consent` while the hub runs.
    pub fn data_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(sqlite(&self.path))
    }

    /// Checks the audit log: every entry's hash, the chain of hashes, contiguous sequence
    /// numbers, and that the log still holds the checkpoint in `audit-head`.
    pub fn verify_audit(&self) -> Result<AuditReport, AuditError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, at_ms, kind, body, prev, hash FROM audit ORDER BY seq")
            .map_err(|e| AuditError::Read(e.to_string()))?;
        let mut rows = stmt
            .query([])
            .map_err(|e| AuditError::Read(e.to_string()))?;
        let mut expected_prev = vec![0u8; 32];
        let mut expected_seq = 1i64;
        let mut hashes: HashMap<i64, Vec<u8>> = HashMap::new();
        while let Some(row) = rows.next().map_err(|e| AuditError::Read(e.to_string()))? {
            let read = |e: rusqlite::Error| AuditError::Read(e.to_string());
            let seq: i64 = row.get(0).map_err(read)?;
            let at_ms: i64 = row.get(1).map_err(read)?;
            let kind: String = row.get(2).map_err(read)?;
            let body: String = row.get(3).map_err(read)?;
            let prev: Vec<u8> = row.get(4).map_err(read)?;
            let hash: Vec<u8> = row.get(5).map_err(read)?;
            if seq != expected_seq {
                return Err(AuditError::Gap {
                    expected: expected_seq,
                    found: seq,
                });
            }
            if prev != expected_prev {
                return Err(AuditError::BrokenChain { seq });
            }
            if hash != entry_hash(&prev, seq, at_ms, &kind, &body) {
                return Err(AuditError::Modified { seq });
            }
            hashes.insert(seq, hash.clone());
            expected_prev = hash;
            expected_seq += 1;
        }
        let entries = expected_seq - 1;
        let head = read_head(&self.path)?;
        if let Some((seq, hash)) = &head {
            match hashes.get(seq) {
                Some(found) if found == hash => {}
                Some(_) => return Err(AuditError::Modified { seq: *seq }),
                None => {
                    return Err(AuditError::Truncated {
                        entries,
                        checkpoint: *seq,
                    })
                }
            }
        }
        Ok(AuditReport {
            entries,
            head: (entries > 0).then(|| (entries, hex(&expected_prev))),
        })
    }
}

/// A verified audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: i64,
    /// Sequence number and hash (hex) of the last entry.
    pub head: Option<(i64, String)>,
}

/// Why the audit log does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuditError {
    #[error("cannot read the audit log: {0}")]
    Read(String),
    #[error("audit entry {found} follows entry {}: entries are missing", expected - 1)]
    Gap { expected: i64, found: i64 },
    #[error(
        "audit entry {seq} does not chain to the entry before it: an entry was removed or replaced"
    )]
    BrokenChain { seq: i64 },
    #[error("audit entry {seq} was modified: its hash does not match its contents")]
    Modified { seq: i64 },
    #[error("the audit log ends at entry {entries} but the checkpoint in audit-head is entry {checkpoint}: the log was truncated")]
    Truncated { entries: i64, checkpoint: i64 },
    #[error("the checkpoint file {0} is unreadable")]
    Head(String),
}

fn entry_hash(prev: &[u8], seq: i64, at_ms: i64, kind: &str, body: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(seq.to_be_bytes());
    h.update(at_ms.to_be_bytes());
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(body.as_bytes());
    h.finalize().to_vec()
}

/// Inserts a record (numbered `id`, or the next number) with its audit entry, at
/// `at_ms`, in `tx`; deletes the citizen's goals with an erasure request. `from` names the
/// hub a mirrored record was copied from. Gives the record and the new audit head.
fn insert_record(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    id: Option<i64>,
    new: ConsentChange,
    recorded_ms: i64,
    at_ms: i64,
    from: Option<&str>,
) -> Result<(Consent, (i64, Vec<u8>)), StoreError> {
    tx.execute(
        "INSERT INTO consents (id, citizen, grantee, purpose, data_types, valid_from_ms,
            valid_until_ms, recorded_ms, source, granted, erase)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            id,
            new.citizen,
            new.grantee,
            new.purpose.as_str(),
            new.data_types.join(","),
            new.valid_from_ms,
            new.valid_until_ms,
            recorded_ms,
            new.source,
            new.granted,
            new.erase
        ],
    )
    .map_err(sqlite(path))?;
    let id = tx.last_insert_rowid();
    if new.erase {
        // The citizen's goals go with the rest of their data.
        tx.execute("DELETE FROM goals WHERE citizen = ?1", params![new.citizen])
            .map_err(sqlite(path))?;
    }
    let mut body = serde_json::json!({
        "consent": id,
        "citizen": new.citizen,
        "grantee": new.grantee,
        "purpose": new.purpose.as_str(),
        "data_types": new.data_types,
        "valid_from_ms": new.valid_from_ms,
        "valid_until_ms": new.valid_until_ms,
        "source": new.source,
        "erase": new.erase,
    });
    if let Some(hub) = from {
        body["from"] = hub.into();
        body["recorded_ms"] = recorded_ms.into();
    }
    let consent = Consent {
        id,
        recorded_ms,
        change: new,
    };
    let kind = if consent.change.granted {
        "consent.grant"
    } else {
        "consent.revoke"
    };
    let head = append_audit(tx, path, at_ms, kind, &body.to_string())?;
    Ok((consent, head))
}

fn append_audit(
    tx: &rusqlite::Transaction<'_>,
    path: &Path,
    at_ms: i64,
    kind: &str,
    body: &str,
) -> Result<(i64, Vec<u8>), StoreError> {
    let last: Option<(i64, Vec<u8>)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sqlite(path))?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, vec![0u8; 32]),
    };
    let hash = entry_hash(&prev, seq, at_ms, kind, body);
    tx.execute(
        "INSERT INTO audit (seq, at_ms, kind, body, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![seq, at_ms, kind, body, prev, hash],
    )
    .map_err(sqlite(path))?;
    Ok((seq, hash))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes the checkpoint while the transaction still holds the registry's write lock (so
/// checkpoints never go backwards between processes), then commits; if the commit fails the
/// previous checkpoint is put back.
fn commit_with_head(
    tx: rusqlite::Transaction<'_>,
    path: &Path,
    head: (i64, Vec<u8>),
) -> Result<(), StoreError> {
    let previous = std::fs::read(audit_head_path(path)).ok();
    write_head(path, head)?;
    if let Err(e) = tx.commit() {
        let head_path = audit_head_path(path);
        match previous {
            Some(bytes) => {
                let _ = std::fs::write(&head_path, bytes);
            }
            None => {
                let _ = std::fs::remove_file(&head_path);
            }
        }
        return Err(sqlite(path)(e));
    }
    Ok(())
}

/// Replaces the checkpoint file (write to a file of this process's own, fsync, rename).
fn write_head(registry: &Path, (seq, hash): (i64, Vec<u8>)) -> Result<(), StoreError> {
    let path = audit_head_path(registry);
    let tmp = path.with_extension(format!("new.{}", std::process::id()));
    let io = |e: std::io::Error| StoreError::Io {
        path: path.clone(),
        source: e,
    };
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, format!("{seq} {}\n", hex(&hash)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &path).map_err(io)
}

fn read_head(registry: &Path) -> Result<Option<(i64, Vec<u8>)>, AuditError> {
    let path = audit_head_path(registry);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(AuditError::Head(format!("{}: {e}", path.display()))),
    };
    let mut words = text.split_whitespace();
    let seq = words.next().and_then(|s| s.parse().ok());
    let hash = words.next().and_then(unhex);
    match (seq, hash) {
        (Some(seq), Some(hash)) => Ok(Some((seq, hash))),
        _ => Err(AuditError::Head(path.display().to_string())),
    }
}

mod goals;
mod mirror;
mod sink_erasure;
pub use goals::{Direction, Goal};
pub use mirror::MirrorError;
pub use sink_erasure::{ErasureSupport, SinkErasure};

#[cfg(test)]
mod rule_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(citizen: &str, purpose: Purpose, types: &[&str]) -> ConsentChange {
        ConsentChange {
            citizen: citizen.into(),
            grantee: HUB.into(),
            purpose,
            data_types: types.iter().map(|t| (*t).to_owned()).collect(),
            valid_from_ms: None,
            valid_until_ms: None,
            source: "test".into(),
            granted: true,
            erase: false,
        }
    }

    fn revoke(citizen: &str, purpose: Purpose, types: &[&str]) -> ConsentChange {
        ConsentChange {
            granted: false,
            ..grant(citizen, purpose, types)
        }
    }

    #[test]
    fn a_record_with_an_unbounded_text_is_refused_before_anything_is_stored() {
        let dir = tempfile::tempdir().expect("dir");
        let mut registry = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        let long_source = ConsentChange {
            source: "s".repeat(MAX_SOURCE + 1),
            ..grant("c-1", Purpose::Collect, &[])
        };
        let repeated = grant(
            "c-1",
            Purpose::Collect,
            &["heart_rate", "spo2", "heart_rate"],
        );
        let unknown = grant("c-1", Purpose::Collect, &["x"; 1]);
        let huge_type = ConsentChange {
            data_types: vec!["h".repeat(10_000)],
            ..grant("c-1", Purpose::Collect, &[])
        };
        let citizen = grant(&"c".repeat(1_000), Purpose::Collect, &[]);
        for (change, says) in [
            (
                long_source,
                "source is 257 bytes long; at most 256 bytes are allowed",
            ),
            (repeated, "data_types names heart_rate more than once"),
            (unknown, "data_types: unknown metric \"x\""),
            (huge_type, "data_types entry is 10000 bytes long"),
            (citizen, "citizen is longer than 128 bytes"),
        ] {
            let err = registry.record(change, 1).expect_err(says);
            assert!(err.to_string().contains(says), "{err}");
        }
        assert!(registry.list(None).expect("list").is_empty());
        assert_eq!(registry.verify_audit().expect("verify").entries, 0);
        let at_limit = ConsentChange {
            source: "s".repeat(MAX_SOURCE),
            ..grant("c-1", Purpose::Collect, &[])
        };
        registry.record(at_limit, 1).expect("at the limit");
    }

    #[test]
    fn grantees_and_the_citizens_who_permit_one_follow_the_records() {
        let care = |citizen: &str, grantee: &str, granted: bool, id: i64| Consent {
            id,
            recorded_ms: id * 10,
            change: ConsentChange {
                grantee: grantee.into(),
                granted,
                ..grant(citizen, Purpose::Care, &[])
            },
        };
        let consents = Consents::new(vec![
            care("c-1", "st-luke", true, 1),
            care("c-1", "home-care", true, 2),
            care("c-2", "st-luke", true, 3),
            care("c-2", "st-luke", false, 4),
            care("c-3", "st-luke", true, 5),
        ]);
        assert_eq!(
            consents.grantees("c-1", Purpose::Care),
            vec!["st-luke", "home-care"]
        );
        assert_eq!(consents.grantees("c-2", Purpose::Care), vec!["st-luke"]);
        assert!(consents.grantees("c-1", Purpose::Research).is_empty());
        assert_eq!(
            consents.citizens_permitting("st-luke", Purpose::Care, 100),
            vec!["c-1".to_owned(), "c-3".to_owned()]
        );
        assert_eq!(
            consents.citizens_permitting("st-luke", Purpose::Care, 35),
            vec!["c-1".to_owned(), "c-2".to_owned()],
            "c-2's withdrawal at 40 and c-3's grant at 50 are not yet recorded at 35"
        );
        // Newer records are found too (they live apart until folded).
        let later = consents.with(vec![care("c-4", "st-luke", true, 6)]);
        assert_eq!(
            later
                .citizens_permitting("st-luke", Purpose::Care, 100)
                .len(),
            3
        );
    }

    #[test]
    fn a_citizen_sees_the_reads_that_named_them_newest_first() {
        let dir = tempfile::tempdir().expect("dir");
        let mut reg = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        let read = |who: &str, citizens: &[&str]| {
            serde_json::json!({"principal": who, "metric": "heart_rate", "citizens": citizens, "rows": 3})
                .to_string()
        };
        reg.audit(100, "access.identified", &read("care-a", &["c-1", "c-2"]))
            .expect("audit");
        reg.audit(200, "access.identified", &read("care-b", &["c-2"]))
            .expect("audit");
        reg.audit(300, "access.identified", &read("app-c-1", &["c-1"]))
            .expect("audit");
        reg.audit(400, "consent.recorded", &read("x", &["c-1"]))
            .expect("audit");
        let mine = reg.identified_reads("c-1", 0, None, 10).expect("reads");
        let who: Vec<(i64, &str)> = mine
            .iter()
            .map(|r| (r.at_ms, r.principal.as_str()))
            .collect();
        assert_eq!(who, vec![(300, "app-c-1"), (100, "care-a")]);
        assert_eq!(mine[0].metrics, "heart_rate");
        assert_eq!(
            reg.identified_reads("c-1", 150, None, 10)
                .expect("since")
                .len(),
            1
        );
        assert_eq!(
            reg.identified_reads("c-1", 0, None, 1)
                .expect("limit")
                .len(),
            1
        );
        // The citizen's own app left out before the limit: the care service's read stays.
        let others = reg
            .identified_reads("c-1", 0, Some("app-c-1"), 1)
            .expect("others");
        assert_eq!(others[0].principal, "care-a");
        assert!(reg
            .identified_reads("c-", 0, None, 10)
            .expect("no prefix match")
            .is_empty());
    }

    #[test]
    fn the_latest_record_covering_a_type_decides() {
        let dir = tempfile::tempdir().expect("dir");
        let mut reg = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        let c = Purpose::Collect;
        reg.record(grant("c1", c, &[]), 1).expect("grant");
        let now = reg.consents().expect("consents");
        assert!(now.permits("c1", HUB, c, "heart_rate", 5, 5));
        assert!(
            !now.permits("c2", HUB, c, "heart_rate", 5, 5),
            "no record, no consent"
        );
        assert!(!now.permits("c1", HUB, Purpose::Research, "heart_rate", 5, 5));
        reg.record(revoke("c1", c, &["heart_rate"]), 2)
            .expect("revoke");
        let now = reg.consents().expect("consents");
        assert!(!now.permits("c1", HUB, c, "heart_rate", 5, 5));
        assert!(
            now.permits("c1", HUB, c, "spo2", 5, 5),
            "other types stay granted"
        );
        reg.record(revoke("c1", c, &[]), 3).expect("revoke all");
        assert!(!reg
            .consents()
            .expect("c")
            .permits("c1", HUB, c, "spo2", 5, 5));
        let windowed = ConsentChange {
            valid_from_ms: Some(100),
            valid_until_ms: Some(200),
            ..grant("c3", c, &[])
        };
        reg.record(windowed, 4).expect("grant");
        let now = reg.consents().expect("consents");
        assert!(!now.permits("c3", HUB, c, "x", 99, 99));
        assert!(now.permits("c3", HUB, c, "x", 100, 100));
        assert!(!now.permits("c3", HUB, c, "x", 200, 200));
        assert_eq!(reg.list(Some("c1")).expect("list").len(), 3);

        // An erasure request covers everything received up to it, whenever it is processed.
        let erase = ConsentChange {
            erase: true,
            ..revoke("c3", c, &[])
        };
        reg.record(erase, 500).expect("erase");
        let now = reg.consents().expect("consents");
        assert!(now.erased_after("c3", 499) && now.erased_after("c3", 500));
        assert!(!now.erased_after("c3", 501) && !now.erased_after("c1", 0));
        assert!(!now.permits_any("c3", HUB, c, 600));
        assert!(
            now.permits_any("c3", HUB, c, 150),
            "the windowed grant, before the erase"
        );
        assert!(!now.permits_any("c1", HUB, c, 5));

        // Reading history: the window of the record in force decides which data it covers.
        let care = ConsentChange {
            grantee: "st-luke".into(),
            purpose: Purpose::Care,
            valid_from_ms: Some(1_000),
            ..grant("c4", Purpose::Care, &["heart_rate"])
        };
        reg.record(care, 2_000).expect("care");
        let now = reg.consents().expect("consents");
        let care = Purpose::Care;
        assert!(now.permits("c4", "st-luke", care, "heart_rate", 1_500, 3_000));
        assert!(
            !now.permits("c4", "st-luke", care, "heart_rate", 999, 3_000),
            "before the window"
        );
        assert!(
            !now.permits("c4", "st-luke", care, "spo2", 1_500, 3_000),
            "another type"
        );
        assert!(
            !now.permits("c4", "other", care, "heart_rate", 1_500, 3_000),
            "another grantee"
        );
    }

    fn registry_with_entries(n: usize) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("registry.db");
        let mut reg = ConsentRegistry::open(&path).expect("open");
        for i in 0..n {
            reg.record(grant(&format!("c{i}"), Purpose::Collect, &[]), i as i64)
                .expect("grant");
        }
        (dir, path)
    }

    #[test]
    fn an_older_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().expect("dir");
        let mut reg = ConsentRegistry::open(&dir.path().join("registry.db")).expect("open");
        reg.record(grant("c1", Purpose::Collect, &[]), 1)
            .expect("grant");
        let old = reg.consents().expect("consents");
        reg.record(revoke("c1", Purpose::Collect, &[]), 2)
            .expect("revoke");
        let book = ConsentBook::new(reg.consents().expect("consents"));
        book.replace(old);
        assert!(
            !book
                .current()
                .permits("c1", HUB, Purpose::Collect, "x", 5, 5),
            "the withdrawal stays in force"
        );
    }

    fn care(granted: bool) -> ConsentChange {
        ConsentChange {
            grantee: "st-luke".into(),
            granted,
            ..grant("c1", Purpose::Care, &["heart_rate"])
        }
    }

    #[test]
    fn audit_appends_do_not_reload_the_book_and_a_withdrawal_still_takes_force() {
        let (_dir, path) = registry_with_entries(50);
        let mut reg = ConsentRegistry::open(&path).expect("open");
        reg.record(care(true), 100).expect("grant");
        let book = Arc::new(ConsentBook::new(reg.consents().expect("consents")));
        let mut view = ConsentView::open(&path, book.clone()).expect("view");
        let watcher =
            ConsentWatcher::start(&path, book.clone(), Duration::from_millis(1)).expect("watch");
        view.refresh();
        let (generation, snapshot) = (book.generation(), book.current());
        let permits =
            |c: &Consents| c.permits("c1", "st-luke", Purpose::Care, "heart_rate", 0, 500);
        assert!(permits(&snapshot));

        // Every identified read appends an audit entry: the registry changes, the book not.
        for i in 0..300 {
            reg.audit(200 + i, "access.identified", "{}")
                .expect("audit");
            view.refresh();
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(book.generation(), generation, "no consent record was added");
        assert!(Arc::ptr_eq(&book.current(), &snapshot), "the same snapshot");

        // A withdrawal takes force at the next refresh, and through the watcher too.
        reg.record(care(false), 400).expect("revoke");
        assert!(!permits(&view.refresh()));
        assert_eq!(book.generation(), generation + 1);
        let other = Arc::new(ConsentBook::new(snapshot.as_ref().clone()));
        let _other_watcher =
            ConsentWatcher::start(&path, other.clone(), Duration::from_millis(1)).expect("watch");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while permits(&other.current()) {
            assert!(
                std::time::Instant::now() < deadline,
                "the watcher took the withdrawal"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(other.current().len(), 52, "only the new record was added");
        drop(watcher);
    }

    #[test]
    fn an_intact_log_verifies() {
        let (_dir, path) = registry_with_entries(5);
        let report = ConsentRegistry::open(&path)
            .expect("open")
            .verify_audit()
            .expect("verifies");
        assert_eq!(report.entries, 5);
    }

    #[test]
    fn a_modified_removed_or_truncated_log_fails() {
        type Expect = fn(&AuditError) -> bool;
        let cases: [(&str, Expect); 4] = [
            (
                "UPDATE audit SET body = replace(body, 'c2', 'c9') WHERE seq = 3",
                |e| matches!(e, AuditError::Modified { seq: 3 }),
            ),
            ("DELETE FROM audit WHERE seq = 2", |e| {
                matches!(
                    e,
                    AuditError::Gap {
                        expected: 2,
                        found: 3
                    }
                )
            }),
            ("DELETE FROM audit WHERE seq >= 4", |e| {
                matches!(
                    e,
                    AuditError::Truncated {
                        entries: 3,
                        checkpoint: 5
                    }
                )
            }),
            (
                // A forger who recomputes the edited entry's hash still breaks the chain.
                "UPDATE audit SET hash = zeroblob(32) WHERE seq = 2",
                |e| matches!(e, AuditError::Modified { seq: 2 }),
            ),
        ];
        for (sql, expected) in cases {
            let (_dir, path) = registry_with_entries(5);
            Connection::open(&path)
                .expect("open")
                .execute_batch(sql)
                .expect(sql);
            let err = ConsentRegistry::open(&path)
                .expect("open")
                .verify_audit()
                .expect_err(sql);
            assert!(expected(&err), "{sql}: {err}");
        }
    }
}
