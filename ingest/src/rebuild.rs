//! At start: does each SQLite store hold what the store sink's checkpoint says it stored?
//!
//! The checkpoint lives next to the write-ahead log, so a store file that was deleted, or
//! restored from an older backup, is behind it. Each store notes in its own file how far into
//! the log it holds everything ([`PersonalStore::log_position`], written with its rows), and
//! the hub notes next to the log where each store file began (`wal/{store}.base`, the
//! position from which the log rebuilds it whole). A store behind its checkpoint is rebuilt
//! from the log when the log still holds the records it misses; otherwise the hub refuses to
//! start, saying what was lost, until the operator accepts the loss (recorded in the audit
//! log).

use std::fmt;
use std::path::{Path, PathBuf};

use tracing::warn;

use crate::consent::ConsentRegistry;
use crate::file_guard::damaged_in_place;
use crate::store::{PersonalStore, StoreError};
use crate::wal::{self, Position, Wal, WalError};

/// Where a store file began when no base was ever noted (a store made by an older kenko):
/// the first segment a log ever has.
const FIRST: Position = Position {
    segment: 1,
    offset: 0,
};

/// Readies a store file for opening; returns whether it holds anything. A file noted as
/// damaged in place while a hub held it is set aside (`{name}.damaged-{ms}`): SQLite would
/// make a store of whatever pages its journal put back. A file missing or empty (as good as
/// missing) loses its orphaned `-wal` and `-shm`, which would otherwise be replayed onto
/// nothing.
pub fn ready_file(path: &Path, wal_dir: &Path, name: &str) -> Result<bool, StoreError> {
    let note = damage_note(wal_dir, name);
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if damaged_in_place(path, &note) {
        let aside = path.with_extension(format!(
            "db.damaged-{}",
            jiff::Timestamp::now().as_millisecond()
        ));
        std::fs::rename(path, &aside).map_err(io)?;
        warn!(file = %path.display(), aside = %aside.display(), "store file damaged while the hub ran; set aside");
    }
    let _ = std::fs::remove_file(&note);
    let existed = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
    if !existed {
        for suffix in ["-wal", "-shm"] {
            let mut orphan = path.as_os_str().to_owned();
            orphan.push(suffix);
            match std::fs::remove_file(&orphan) {
                Ok(()) => {
                    warn!(file = %PathBuf::from(&orphan).display(), "removed the journal of a store file that is gone")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
    }
    Ok(existed)
}

/// Where the guard of store `name` notes that it was damaged in place.
pub fn damage_note(wal_dir: &Path, name: &str) -> PathBuf {
    let stem = name.strip_suffix(".db").unwrap_or(name);
    wal_dir.join(format!("{stem}.damaged"))
}

/// What a store needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// It holds everything up to the checkpoint.
    Sound,
    /// It misses records the log still holds: the sink reads again from `from`.
    Rebuild { from: Position },
    /// It misses records the log no longer holds.
    Lost { from: Position, to: Position },
}

/// What a store misses, for the refusal and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub store: &'static str,
    pub from: Position,
    pub to: Position,
    pub missing: bool,
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.missing {
            "is missing or empty"
        } else {
            "is behind its checkpoint (restored from an older copy?)"
        };
        write!(
            f,
            "{} {what}: it lacks the write-ahead log records from segment {} offset {} to segment {} offset {}, which the log no longer holds",
            self.store, self.from.segment, self.from.offset, self.to.segment, self.to.offset
        )
    }
}

/// Why the stores cannot be used as they are.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{}; acknowledged readings are lost: restore the file from a backup, or start with `kenko serve --accept-data-loss` to go on without them (recorded in the audit log)", join(.0))]
    Lost(Vec<Loss>),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Wal(#[from] WalError),
}

fn join(losses: &[Loss]) -> String {
    losses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// What a store needs, from what its file holds (`existed`, `position`), where it began
/// (`base`) and the sink's `checkpoint` (`None` when the sink has none).
pub fn plan(
    wal: &Wal,
    existed: bool,
    position: Option<Position>,
    base: Option<Position>,
    checkpoint: Option<Position>,
) -> Plan {
    let Some(checkpoint) = checkpoint else {
        return Plan::Sound;
    };
    let from = match (existed, position) {
        (false, _) => base.unwrap_or(FIRST),
        // A store of an older kenko notes no position: trusted.
        (true, None) => return Plan::Sound,
        (true, Some(at)) => at,
    };
    if from >= checkpoint {
        Plan::Sound
    } else if wal.holds(from) {
        Plan::Rebuild { from }
    } else {
        Plan::Lost {
            from,
            to: checkpoint,
        }
    }
}

fn base_path(wal_dir: &Path, store: &str) -> PathBuf {
    let stem = store.strip_suffix(".db").unwrap_or(store);
    wal_dir.join(format!("{stem}.base"))
}

/// The stores of one sink, checked and opened for writing.
pub struct Prepared {
    /// In the order their names were given.
    pub stores: Vec<PersonalStore>,
    /// Where the sink reads from: before its checkpoint when a store is rebuilt.
    pub start: Position,
}

/// Checks the stores `names` in `data_dir` against the checkpoint of `sink` and opens them
/// for writing. Nothing is created when the start is refused. `accept_loss`: the registry in
/// which to record an accepted loss, when the operator accepts one.
pub fn prepare(
    wal: &Wal,
    wal_dir: &Path,
    sink: &str,
    data_dir: &Path,
    names: &[&'static str],
    accept_loss: Option<&Path>,
) -> Result<Prepared, RebuildError> {
    let saved = wal::load_position(&wal_dir.join(format!("{sink}.checkpoint")))?;
    let checkpoint = wal.clamp(saved.unwrap_or_default());
    let mut start = checkpoint;
    let mut losses = Vec::new();
    let mut found = Vec::new();
    for &name in names {
        let path = data_dir.join(name);
        let existed = ready_file(&path, wal_dir, name)?;
        let position = match existed {
            true => PersonalStore::open_read_only(&path)?.log_position()?,
            false => None,
        };
        let base = wal::load_position(&base_path(wal_dir, name))?;
        let plan = plan(wal, existed, position, base, saved.map(|_| checkpoint));
        match plan {
            Plan::Sound => {}
            Plan::Rebuild { from } => {
                warn!(
                    store = name,
                    segment = from.segment,
                    offset = from.offset,
                    "store is behind the write-ahead log; rebuilding it from the log"
                );
                start = start.min(from);
            }
            Plan::Lost { from, to } => losses.push(Loss {
                store: name,
                from,
                to,
                missing: !existed,
            }),
        }
        found.push((name, path, existed, plan));
    }
    if !losses.is_empty() {
        let Some(registry) = accept_loss else {
            return Err(RebuildError::Lost(losses));
        };
        record_accepted(registry, &losses)?;
    }
    let mut stores = Vec::new();
    for (name, path, existed, plan) in found {
        let mut store = PersonalStore::open(&path)?;
        let rebuilt = matches!(plan, Plan::Rebuild { .. });
        // A file that lost what the log no longer holds, or a new one, holds the log from
        // the checkpoint on; a new one rebuilt holds it from where it began before.
        if matches!(plan, Plan::Lost { .. }) || (!existed && !rebuilt) {
            store.set_log_position(checkpoint)?;
        }
        if !existed && !rebuilt {
            wal::save_position(&base_path(wal_dir, name), checkpoint)?;
        }
        stores.push(store);
    }
    Ok(Prepared { stores, start })
}

/// Notes in the audit log that the operator accepted each loss, before the hub goes on.
fn record_accepted(registry: &Path, losses: &[Loss]) -> Result<(), StoreError> {
    let mut registry = ConsentRegistry::open(registry)?;
    let now = jiff::Timestamp::now().as_millisecond();
    for loss in losses {
        let body = serde_json::json!({
            "store": loss.store,
            "missing": loss.missing,
            "from": [loss.from.segment, loss.from.offset],
            "to": [loss.to.segment, loss.to.offset],
        })
        .to_string();
        registry.audit(now, "store.data_loss_accepted", &body)?;
        warn!(%loss, "data loss accepted (--accept-data-loss); recorded in the audit log");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::WalOptions;

    fn small() -> WalOptions {
        WalOptions {
            segment_bytes: 256,
            max_bytes: 1 << 20,
        }
    }

    fn filled(dir: &Path) -> Wal {
        let (mut wal, _) = Wal::open(dir, small()).expect("open");
        for i in 0..40u32 {
            wal.append(format!("record {i:08}").as_bytes())
                .expect("append");
        }
        wal.sync().expect("sync");
        wal
    }

    #[test]
    fn a_store_is_rebuilt_while_the_log_holds_what_it_misses_and_lost_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut wal = filled(dir.path());
        let end = wal.end();
        let start = wal.start();
        assert_eq!(plan(&wal, false, None, None, None), Plan::Sound, "new hub");
        assert_eq!(plan(&wal, true, Some(end), None, Some(end)), Plan::Sound);
        assert_eq!(
            plan(&wal, true, None, None, Some(end)),
            Plan::Sound,
            "a store of an older kenko is trusted"
        );
        assert_eq!(
            plan(&wal, false, None, Some(start), Some(end)),
            Plan::Rebuild { from: start },
            "deleted: rebuilt from where it began"
        );
        assert_eq!(
            plan(&wal, false, None, None, Some(end)),
            Plan::Rebuild { from: FIRST },
            "deleted, no base noted: from the first segment"
        );
        let middle = Position {
            segment: start.segment + 2,
            offset: 0,
        };
        assert_eq!(
            plan(&wal, true, Some(middle), None, Some(end)),
            Plan::Rebuild { from: middle },
            "restored from an older copy"
        );
        wal.release_before(Position {
            segment: start.segment + 3,
            offset: 0,
        })
        .expect("release");
        assert_eq!(
            plan(&wal, true, Some(middle), None, Some(end)),
            Plan::Lost {
                from: middle,
                to: end
            }
        );
        assert_eq!(
            plan(&wal, false, None, Some(start), Some(end)),
            Plan::Lost {
                from: start,
                to: end
            }
        );
    }

    #[test]
    fn a_loss_is_refused_with_what_was_lost_or_accepted_and_audited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wal_dir = dir.path().join("wal");
        let mut wal = filled(&wal_dir);
        let end = wal.end();
        wal::save_checkpoint(&wal_dir, "store", end).expect("checkpoint");
        wal.release_before(end).expect("release");
        let names = ["personal.db"];
        let err = prepare(&wal, &wal_dir, "store", dir.path(), &names, None)
            .err()
            .expect("lost");
        let text = err.to_string();
        assert!(text.contains("personal.db is missing or empty"), "{text}");
        assert!(text.contains("--accept-data-loss"), "{text}");
        assert!(
            !dir.path().join("personal.db").exists(),
            "a refused start creates nothing"
        );

        let registry = dir.path().join("registry.db");
        let prepared = prepare(&wal, &wal_dir, "store", dir.path(), &names, Some(&registry))
            .expect("accepted");
        assert_eq!(prepared.start, end);
        assert_eq!(
            prepared.stores[0].log_position().expect("position"),
            Some(end)
        );
        let audit = ConsentRegistry::open(&registry)
            .expect("registry")
            .verify_audit()
            .expect("verifies");
        assert_eq!(audit.entries, 1, "the acceptance is audited");
        assert_eq!(
            wal::load_position(&base_path(&wal_dir, "personal.db")).expect("base"),
            Some(end)
        );
    }
}
