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
use crate::store::{PersonalStore, StoreError};
use crate::wal::{self, Position, Wal, WalError};

/// Where a store file began when no base was ever noted (a store made by an older kenko):
/// the first segment a log ever has.
const FIRST: Position = Position {
    segment: 1,
    offset: 0,
};

/// A store the sink writes, opened, and whether its file held anything before it was.
pub struct Opened<'a> {
    /// The file's name in the data directory, e.g. `personal.db`.
    pub name: &'static str,
    pub store: &'a mut PersonalStore,
    pub existed: bool,
}

/// Whether `path` is a file with something in it (a file truncated to nothing is as good as
/// missing); call before opening it, which creates it.
pub fn has_contents(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
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

/// Checks the stores against the sink's checkpoint and prepares them; returns where the
/// sink reads from (before its checkpoint when a store is rebuilt).
pub fn prepare(
    wal: &Wal,
    wal_dir: &Path,
    sink: &str,
    stores: &mut [Opened<'_>],
    accept_loss: Option<&Path>,
) -> Result<Position, RebuildError> {
    let saved = wal::load_position(&wal_dir.join(format!("{sink}.checkpoint")))?;
    let checkpoint = wal.clamp(saved.unwrap_or_default());
    let mut start = checkpoint;
    let mut losses = Vec::new();
    let mut plans = Vec::new();
    for opened in stores.iter() {
        let base = wal::load_position(&base_path(wal_dir, opened.name))?;
        let position = opened.store.log_position()?;
        let plan = plan(wal, opened.existed, position, base, saved.map(|_| checkpoint));
        match plan {
            Plan::Sound => {}
            Plan::Rebuild { from } => {
                warn!(store = opened.name, segment = from.segment, offset = from.offset,
                    "store is behind the write-ahead log; rebuilding it from the log");
                start = start.min(from);
            }
            Plan::Lost { from, to } => losses.push(Loss {
                store: opened.name,
                from,
                to,
                missing: !opened.existed,
            }),
        }
        plans.push(plan);
    }
    if !losses.is_empty() {
        let Some(registry) = accept_loss else {
            return Err(RebuildError::Lost(losses));
        };
        record_accepted(registry, &losses)?;
    }
    for (opened, plan) in stores.iter_mut().zip(plans) {
        let lost = matches!(plan, Plan::Lost { .. });
        if lost {
            opened.store.set_log_position(checkpoint)?;
        }
        // A new file holds the log from where the sink starts writing it (or, rebuilt, from
        // where it began before).
        if !opened.existed && !matches!(plan, Plan::Rebuild { .. }) {
            opened.store.set_log_position(checkpoint)?;
            wal::save_position(&base_path(wal_dir, opened.name), checkpoint)?;
        }
    }
    Ok(start)
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
            wal.append(format!("record {i:08}").as_bytes()).expect("append");
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
            Plan::Lost { from: start, to: end }
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
        let mut store = PersonalStore::open(&dir.path().join("personal.db")).expect("open");
        let mut stores = [Opened {
            name: "personal.db",
            store: &mut store,
            existed: false,
        }];
        let err = prepare(&wal, &wal_dir, "store", &mut stores, None).expect_err("lost");
        let text = err.to_string();
        assert!(text.contains("personal.db is missing or empty"), "{text}");
        assert!(text.contains("--accept-data-loss"), "{text}");

        let registry = dir.path().join("registry.db");
        let from = prepare(&wal, &wal_dir, "store", &mut stores, Some(&registry))
            .expect("accepted");
        assert_eq!(from, end);
        assert_eq!(store.log_position().expect("position"), Some(end));
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
