//! Guards over the files the hub writes (`personal.db`, `shared.db`, `registry.db`,
//! `deadletter.db`): each is held open and checked, before each commit, to still be the file
//! at its path, as long as it was, and an SQLite file. SQLite keeps writing to a file that
//! was deleted or replaced under it (its descriptor still points at the old one), so without
//! this check the hub would acknowledge into a file nobody can read again.
//!
//! [`Health`] collects what the guards found, for the writer (which withholds verdicts while
//! a file is at fault), the store sink, `GET /readyz` and the metrics.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{error, info};

use crate::stats::IngestStats;

/// The first bytes of every SQLite database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What is wrong with a guarded file.
#[derive(Debug, thiserror::Error)]
pub enum FileFault {
    #[error("{path} is gone (deleted or moved away while the hub runs); put the file back, or stop the hub and start it again to rebuild it from the write-ahead log")]
    Missing { path: PathBuf },
    #[error("{path} is another file than the one the hub opened (device/inode {found:?}, expected {expected:?}); put the original back, or stop the hub and start it again")]
    Replaced {
        path: PathBuf,
        expected: (u64, u64),
        found: (u64, u64),
    },
    #[error("{path} was truncated to {len} bytes while it held {expected}; restore it from a backup, or stop the hub and start it again")]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
    },
    #[error("{path} no longer starts with an SQLite header (overwritten); restore it from a backup, or stop the hub and start it again")]
    NotSqlite { path: PathBuf },
    #[error("cannot check {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

impl FileFault {
    /// What went wrong, naming the file but not where it lives: for answers to clients
    /// (`/readyz`, a refused request); the log has the whole story.
    pub fn summary(&self) -> String {
        let (path, what) = match self {
            FileFault::Missing { path } => (path, "is gone"),
            FileFault::Replaced { path, .. } => (path, "was replaced by another file"),
            FileFault::Truncated { path, .. } => (path, "was truncated"),
            FileFault::NotSqlite { path } => (path, "was overwritten"),
            FileFault::Io { path, .. } => (path, "cannot be checked"),
        };
        let name = path.file_name().unwrap_or(path.as_os_str());
        format!("{} {what}", name.to_string_lossy())
    }
}

/// One file the hub writes, held open, with the identity and length it had.
#[derive(Debug)]
pub struct FileGuard {
    path: PathBuf,
    /// Held open so that the (device, inode) pair cannot be handed to another file.
    held: File,
    identity: (u64, u64),
    /// The longest the file has been seen: these SQLite files never shrink (no VACUUM).
    len: AtomicU64,
    /// Where to note that this very file was damaged in place (truncated, overwritten), so
    /// that the next start sets it aside instead of trusting what SQLite makes of it.
    damage_note: Option<PathBuf>,
    noted: AtomicBool,
}

impl FileGuard {
    /// Opens `path` (which must exist) and notes what it is now.
    pub fn open(path: &Path) -> Result<Arc<FileGuard>, FileFault> {
        FileGuard::new(path, None)
    }

    /// As [`FileGuard::open`], noting damage in place in `note` (see [`damaged_in_place`]).
    pub fn open_noting_damage(path: &Path, note: &Path) -> Result<Arc<FileGuard>, FileFault> {
        FileGuard::new(path, Some(note.to_owned()))
    }

    fn new(path: &Path, damage_note: Option<PathBuf>) -> Result<Arc<FileGuard>, FileFault> {
        let io = |source| FileFault::Io {
            path: path.to_owned(),
            source,
        };
        let held = File::open(path).map_err(io)?;
        let meta = held.metadata().map_err(io)?;
        Ok(Arc::new(FileGuard {
            path: path.to_owned(),
            held,
            identity: identity(&meta),
            len: AtomicU64::new(meta.len()),
            damage_note,
            noted: AtomicBool::new(false),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path still names the file opened, no shorter than it was, still SQLite:
    /// one `stat` and, for a file long enough to have it, a read of its 16-byte header.
    pub fn check(&self) -> Result<(), FileFault> {
        let result = self.inspect();
        self.note_damage(&result);
        result
    }

    fn note_damage(&self, result: &Result<(), FileFault>) {
        let Some(note) = &self.damage_note else {
            return;
        };
        let damaged = matches!(
            result,
            Err(FileFault::Truncated { .. } | FileFault::NotSqlite { .. })
        );
        if damaged && !self.noted.swap(true, Ordering::Relaxed) {
            let (dev, ino) = self.identity;
            if let Err(e) = std::fs::write(note, format!("{dev} {ino}\n")) {
                error!(error = %e, "cannot note a damaged store file; check it before the next start");
            }
        } else if result.is_ok() && self.noted.swap(false, Ordering::Relaxed) {
            let _ = std::fs::remove_file(note);
        }
    }

    fn inspect(&self) -> Result<(), FileFault> {
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FileFault::Missing {
                    path: self.path.clone(),
                })
            }
            Err(source) => {
                return Err(FileFault::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let found = identity(&meta);
        if found != self.identity {
            return Err(FileFault::Replaced {
                path: self.path.clone(),
                expected: self.identity,
                found,
            });
        }
        let expected = self.len.load(Ordering::Relaxed);
        if meta.len() < expected {
            return Err(FileFault::Truncated {
                path: self.path.clone(),
                len: meta.len(),
                expected,
            });
        }
        self.len.fetch_max(meta.len(), Ordering::Relaxed);
        if meta.len() >= SQLITE_MAGIC.len() as u64 && !self.has_sqlite_header()? {
            return Err(FileFault::NotSqlite {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn has_sqlite_header(&self) -> Result<bool, FileFault> {
        let mut head = [0u8; 16];
        read_at(&self.held, &mut head).map_err(|source| FileFault::Io {
            path: self.path.clone(),
            source,
        })?;
        Ok(&head == SQLITE_MAGIC)
    }
}

/// Whether `note` says the file now at `path` is one damaged in place while a hub held it.
pub fn damaged_in_place(path: &Path, note: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(note) else {
        return false;
    };
    let mut words = text.split_whitespace().map(str::parse::<u64>);
    let noted = match (words.next(), words.next()) {
        (Some(Ok(dev)), Some(Ok(ino))) => (dev, ino),
        _ => return false,
    };
    std::fs::metadata(path).is_ok_and(|meta| identity(&meta) == noted)
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_meta: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8]) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, 0)
}

#[cfg(not(unix))]
fn read_at(file: &File, buf: &mut [u8]) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = file;
    file.seek(SeekFrom::Start(0))?;
    file.read_exact(buf)
}

/// What the guards have found, by file: the faults in force now.
#[derive(Debug)]
pub struct Health {
    /// By file: the fault as logged, and its [`FileFault::summary`].
    faults: Mutex<BTreeMap<PathBuf, (String, String)>>,
    stats: Arc<IngestStats>,
    /// Every guarded file, for a check on demand (`/readyz`) while no batch comes.
    watched: Mutex<Vec<Arc<FileGuard>>>,
}

impl Health {
    pub fn new(stats: Arc<IngestStats>) -> Arc<Health> {
        Arc::new(Health {
            faults: Mutex::default(),
            stats,
            watched: Mutex::default(),
        })
    }

    /// Adds `guards` to the files [`Health::fault_now`] checks.
    pub fn watch(&self, guards: &[Arc<FileGuard>]) {
        self.watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(guards.iter().cloned());
    }

    /// Checks every watched file now (a `stat` each) and says why the hub is not ready,
    /// or `None` when it is.
    pub fn fault_now(&self) -> Option<String> {
        let watched = self
            .watched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.check(&watched);
        self.fault()
    }

    /// Checks `guards`, notes what changed (logged and counted once per fault, not per
    /// check) and returns whether all of them are sound.
    pub fn check(&self, guards: &[Arc<FileGuard>]) -> bool {
        let mut sound = true;
        for guard in guards {
            let result = guard.check();
            sound &= result.is_ok();
            self.note(guard.path(), result);
        }
        sound
    }

    fn note(&self, path: &Path, result: Result<(), FileFault>) {
        let mut faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(()) => {
                if faults.remove(path).is_some() {
                    info!(file = %path.display(), "store file is sound again; acknowledging resumes");
                }
            }
            Err(fault) => {
                let reason = fault.to_string();
                if faults.get(path).is_none_or(|(known, _)| *known != reason) {
                    error!(error = %reason, "store file at fault: withholding acknowledgements");
                    self.stats.store_faults.fetch_add(1, Ordering::Relaxed);
                    faults.insert(path.to_owned(), (reason, fault.summary()));
                }
            }
        }
        self.stats
            .stores_unavailable
            .store(faults.len() as u64, Ordering::Relaxed);
    }

    /// Why the hub is not ready (the summary of every fault in force, without paths), or
    /// `None` when it is.
    pub fn fault(&self) -> Option<String> {
        let faults = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if faults.is_empty() {
            return None;
        }
        let summaries: Vec<&str> = faults.values().map(|(_, s)| s.as_str()).collect();
        Some(format!(
            "{}; the hub's log says what to do",
            summaries.join("; ")
        ))
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn sqlite_file(path: &Path) {
        let conn = rusqlite::Connection::open(path).expect("open");
        conn.execute_batch("CREATE TABLE t (x INTEGER); INSERT INTO t VALUES (1);")
            .expect("write");
    }

    #[test]
    fn a_sound_file_passes_and_each_kind_of_loss_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.db");
        sqlite_file(&path);
        let guard = FileGuard::open(&path).expect("guard");
        guard.check().expect("sound");

        let aside = dir.path().join("aside.db");
        std::fs::rename(&path, &aside).expect("move away");
        assert!(matches!(guard.check(), Err(FileFault::Missing { .. })));
        std::fs::rename(&aside, &path).expect("move back");
        guard.check().expect("the same file is back");

        std::fs::copy(&path, &aside).expect("copy");
        std::fs::rename(&aside, &path).expect("replace");
        let err = guard.check().expect_err("replaced");
        assert!(matches!(err, FileFault::Replaced { .. }), "{err}");

        let path = dir.path().join("q.db");
        sqlite_file(&path);
        let guard = FileGuard::open(&path).expect("guard");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_len(0))
            .expect("truncate");
        let err = guard.check().expect_err("truncated");
        assert!(err.to_string().contains("truncated to 0 bytes"), "{err}");

        let path = dir.path().join("r.db");
        sqlite_file(&path);
        let guard = FileGuard::open(&path).expect("guard");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"not a database!!", 0))
            .expect("overwrite");
        assert!(matches!(guard.check(), Err(FileFault::NotSqlite { .. })));
    }

    #[test]
    fn health_counts_a_fault_once_and_clears_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.db");
        sqlite_file(&path);
        let stats = Arc::new(IngestStats::default());
        let health = Health::new(stats.clone());
        let guards = [FileGuard::open(&path).expect("guard")];
        assert!(health.check(&guards));
        assert_eq!(health.fault(), None);
        let aside = dir.path().join("aside.db");
        std::fs::rename(&path, &aside).expect("move away");
        assert!(!health.check(&guards));
        assert!(!health.check(&guards));
        let reason = health.fault().expect("a fault");
        assert!(reason.contains("p.db is gone"), "{reason}");
        assert!(!reason.contains('/'), "no path for clients: {reason}");
        assert_eq!(stats.store_faults.load(Ordering::Relaxed), 1);
        assert_eq!(stats.stores_unavailable.load(Ordering::Relaxed), 1);
        std::fs::rename(&aside, &path).expect("move back");
        assert!(health.check(&guards));
        assert_eq!(health.fault(), None);
        assert_eq!(stats.stores_unavailable.load(Ordering::Relaxed), 0);
    }
}
