//! The write-ahead log: what the hub has accepted, on disk before it is acknowledged.
//!
//! Segment files `wal/{first:016x}.wal`, each a sequence of records
//! `[length u32 LE][crc32 u32 LE of the payload][payload]`. Appends are buffered and made
//! durable together by [`Wal::sync`] (group commit: one fsync for a whole batch). Readers
//! (the sinks) follow the log from their own checkpoint; segments every sink has passed are
//! deleted. On open the log is checked: a torn record at the very end of the newest segment
//! (a crash mid-write) is cut off; a damaged record anywhere else sets its segment aside as
//! `.corrupt` (counted, logged), and the log goes on without it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tracing::{error, warn};

const HEADER: usize = 8;
/// A record larger than this is refused (and a length field larger than this is damage).
pub const MAX_RECORD: usize = 16 * 1024 * 1024;

/// Where a record starts: segment id and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

/// Why the log could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the write-ahead log holds {used} bytes, its limit is {limit}; acknowledgements wait until the sinks catch up")]
    Full { used: u64, limit: u64 },
    #[error("a record of {0} bytes is larger than the write-ahead log accepts ({MAX_RECORD})")]
    TooLarge(usize),
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Sizes of the log.
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// A segment is closed and a new one started beyond this size.
    pub segment_bytes: u64,
    /// Appends are refused with [`WalError::Full`] while the log holds this much.
    pub max_bytes: u64,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

/// What opening the log found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    pub records: u64,
    /// Bytes cut off the end of the newest segment (a torn last write).
    pub torn_bytes: u64,
    /// Segments set aside as `.corrupt`.
    pub quarantined: Vec<PathBuf>,
}

/// The log, open for appending.
pub struct Wal {
    dir: PathBuf,
    options: WalOptions,
    /// Segment ids, oldest first; the last is the active one.
    segments: Vec<(u64, u64)>,
    active: File,
    active_path: PathBuf,
    buffer: Vec<u8>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.wal"))
}

impl Wal {
    /// Opens (creating) the log in `dir`, checking every segment.
    pub fn open(dir: &Path, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .collect();
        ids.sort_unstable();
        let mut recovery = Recovery::default();
        let mut segments = Vec::new();
        let newest = ids.last().copied();
        for id in ids {
            let path = segment_path(dir, id);
            let scan = scan(&path)?;
            match scan.damage {
                None => {
                    recovery.records += scan.records;
                    segments.push((id, scan.good_len));
                }
                Some(Damage::TornTail) if Some(id) == newest => {
                    let file = OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .map_err(io_err(&path))?;
                    file.set_len(scan.good_len).map_err(io_err(&path))?;
                    file.sync_all().map_err(io_err(&path))?;
                    recovery.torn_bytes = scan.file_len - scan.good_len;
                    recovery.records += scan.records;
                    warn!(segment = %path.display(), bytes = recovery.torn_bytes, "cut a torn record off the end of the write-ahead log");
                    segments.push((id, scan.good_len));
                }
                Some(_) => {
                    let aside = path.with_extension("corrupt");
                    fs::rename(&path, &aside).map_err(io_err(&path))?;
                    error!(segment = %aside.display(), good_records = scan.records, "damaged write-ahead log segment set aside");
                    recovery.quarantined.push(aside);
                }
            }
        }
        recovery.segments = segments.len();
        let (active_id, active_len) = match segments.last() {
            Some(&(id, len)) => (id, len),
            None => {
                let next = recovery.quarantined.len() as u64 + 1;
                segments.push((next, 0));
                (next, 0)
            }
        };
        let active_path = segment_path(dir, active_id);
        let mut active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(io_err(&active_path))?;
        active
            .seek(SeekFrom::End(0))
            .map_err(io_err(&active_path))?;
        debug_assert_eq!(active.stream_position().ok(), Some(active_len));
        sync_dir(dir)?;
        Ok((
            Wal {
                dir: dir.to_owned(),
                options,
                segments,
                active,
                active_path,
                buffer: Vec::with_capacity(1 << 20),
            },
            recovery,
        ))
    }

    /// Bytes held by the log, including what is buffered.
    pub fn used_bytes(&self) -> u64 {
        self.segments.iter().map(|&(_, len)| len).sum::<u64>() + self.buffer.len() as u64
    }

    /// Whether a record of `len` bytes fits under the size limit now.
    pub fn has_room(&self, len: usize) -> bool {
        self.used_bytes() + (HEADER + len) as u64 <= self.options.max_bytes
    }

    /// The position after the last record appended.
    pub fn end(&self) -> Position {
        let &(segment, len) = self
            .segments
            .last()
            .expect("the log always has an active segment");
        Position {
            segment,
            offset: len + self.buffer.len() as u64,
        }
    }

    /// Buffers a record; durable only after [`Wal::sync`]. Returns where it starts.
    pub fn append(&mut self, payload: &[u8]) -> Result<Position, WalError> {
        if payload.len() > MAX_RECORD {
            return Err(WalError::TooLarge(payload.len()));
        }
        let used = self.used_bytes();
        if used + (HEADER + payload.len()) as u64 > self.options.max_bytes {
            return Err(WalError::Full {
                used,
                limit: self.options.max_bytes,
            });
        }
        let &(_, len) = self.segments.last().expect("active segment");
        if len + (self.buffer.len() + HEADER + payload.len()) as u64 > self.options.segment_bytes
            && len + self.buffer.len() as u64 > 0
        {
            self.rotate()?;
        }
        let at = self.end();
        self.buffer
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buffer
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        self.buffer.extend_from_slice(payload);
        Ok(at)
    }

    /// Writes what is buffered and makes it durable (one fsync for the whole group).
    ///
    /// On failure (a full disk, an I/O error) the segment is cut back to its last durable
    /// length and the records stay buffered, so a later `sync` writes them whole; a failed
    /// write never leaves half a record in the middle of the log.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let path = self.active_path.clone();
        let durable = self.segments.last().map_or(0, |&(_, len)| len);
        let written = self
            .active
            .write_all(&self.buffer)
            .and_then(|()| self.active.sync_data());
        if let Err(e) = written {
            if let Err(cut) = self.active.set_len(durable) {
                error!(segment = %path.display(), error = %cut, "cannot cut a failed write off the write-ahead log; it is checked at the next start");
            }
            return Err(io_err(&path)(e));
        }
        if let Some(last) = self.segments.last_mut() {
            last.1 += self.buffer.len() as u64;
        }
        self.buffer.clear();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.sync()?;
        let &(id, _) = self.segments.last().expect("active segment");
        let next = id + 1;
        let path = segment_path(&self.dir, next);
        self.active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.active_path = path;
        self.segments.push((next, 0));
        sync_dir(&self.dir)
    }

    /// Deletes the segments wholly before `position` (every sink has passed them).
    pub fn release_before(&mut self, position: Position) -> Result<(), WalError> {
        while self.segments.len() > 1 && self.segments[0].0 < position.segment {
            let (id, _) = self.segments.remove(0);
            let path = segment_path(&self.dir, id);
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// `position` if it lies within the log, else the nearest place that does: a checkpoint
    /// past the end (the log was cut back after a crash) becomes the end; one before the
    /// oldest segment becomes its start.
    pub fn clamp(&self, position: Position) -> Position {
        let end = self.end();
        if position > end {
            return end;
        }
        match self
            .segments
            .iter()
            .find(|&&(id, _)| id == position.segment)
        {
            Some(&(_, len)) if position.offset > len => Position {
                segment: position.segment,
                offset: len,
            },
            Some(_) => position,
            None => {
                // The segment is gone (released or set aside): resume at the next one.
                self.segments
                    .iter()
                    .find(|&&(id, _)| id > position.segment)
                    .map_or(end, |&(id, _)| Position {
                        segment: id,
                        offset: 0,
                    })
            }
        }
    }

    /// Where the oldest record the log still holds starts.
    pub fn start(&self) -> Position {
        let &(segment, _) = self
            .segments
            .first()
            .expect("the log always has an active segment");
        Position { segment, offset: 0 }
    }

    /// Whether the log still holds every record from `position` to its end: the segment
    /// `position` lies in and every one after it (none released or set aside).
    pub fn holds(&self, position: Position) -> bool {
        if position == self.end() {
            return true;
        }
        let Some(i) = self.segments.iter().position(|&(id, len)| {
            id == position.segment && position.offset <= len + self.buffer.len() as u64
        }) else {
            return false;
        };
        self.segments[i..].windows(2).all(|w| w[1].0 == w[0].0 + 1)
    }

    /// A reader from `from` (a sink's checkpoint) over what is durable.
    pub fn reader(&self, from: Position) -> WalReader {
        WalReader {
            dir: self.dir.clone(),
            position: from,
            file: None,
            seek: true,
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Damage {
    /// The last record ends past the end of the file: a write cut short.
    TornTail,
    /// A record whose checksum or length is wrong with more data after it.
    Corrupt,
}

struct Scan {
    records: u64,
    good_len: u64,
    file_len: u64,
    damage: Option<Damage>,
}

fn scan(path: &Path) -> Result<Scan, WalError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let file_len = bytes.len() as u64;
    let mut at = 0usize;
    let mut records = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + HEADER) else {
            return Ok(Scan {
                records,
                good_len: at as u64,
                file_len,
                damage: Some(Damage::TornTail),
            });
        };
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len > MAX_RECORD {
            return Ok(Scan {
                records,
                good_len: at as u64,
                file_len,
                damage: Some(Damage::Corrupt),
            });
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            return Ok(Scan {
                records,
                good_len: at as u64,
                file_len,
                damage: Some(Damage::TornTail),
            });
        };
        if crc32fast::hash(payload) != crc {
            // A bad last record that ends exactly at the end of the file is a torn write too
            // (the length made it to disk, the payload did not).
            let damage = if at + HEADER + len == bytes.len() {
                Damage::TornTail
            } else {
                Damage::Corrupt
            };
            return Ok(Scan {
                records,
                good_len: at as u64,
                file_len,
                damage: Some(damage),
            });
        }
        at += HEADER + len;
        records += 1;
    }
    Ok(Scan {
        records,
        good_len: at as u64,
        file_len,
        damage: None,
    })
}

/// Reads records in order from a position, across segments.
pub struct WalReader {
    dir: PathBuf,
    position: Position,
    /// The open segment, read sequentially; `seek` when it must be repositioned first
    /// (after opening, or after finding the end of what is durable).
    file: Option<(u64, io::BufReader<File>)>,
    seek: bool,
}

impl WalReader {
    /// Where the next record starts (save it as the checkpoint after using a record).
    pub fn position(&self) -> Position {
        self.position
    }

    /// The next durable record, or `None` when the reader is at the end of what is written.
    pub fn next_record(&mut self, buf: &mut Vec<u8>) -> Result<Option<Position>, WalError> {
        let unbounded = Position {
            segment: u64::MAX,
            offset: u64::MAX,
        };
        self.next_record_before(buf, unbounded)
    }

    /// The next record that starts before `end` (the end of what the writer has synced),
    /// or `None`. A sink reads only what is durable, so nothing it stores can be cut off the
    /// log by a crash.
    pub fn next_record_before(
        &mut self,
        buf: &mut Vec<u8>,
        end: Position,
    ) -> Result<Option<Position>, WalError> {
        loop {
            if self.position >= end {
                return Ok(None);
            }
            let segment = self.position.segment;
            let path = segment_path(&self.dir, segment);
            if self.file.as_ref().map(|(id, _)| *id) != Some(segment) {
                match File::open(&path) {
                    Ok(f) => {
                        self.file = Some((segment, io::BufReader::with_capacity(256 * 1024, f)));
                        self.seek = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        // A later segment? (The one we were at was released or set aside.)
                        match self.next_segment_after(segment)? {
                            Some(next) => {
                                self.position = Position {
                                    segment: next,
                                    offset: 0,
                                };
                                continue;
                            }
                            None => return Ok(None),
                        }
                    }
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            let (_, file) = self.file.as_mut().expect("opened above");
            if self.seek {
                file.seek(SeekFrom::Start(self.position.offset))
                    .map_err(io_err(&path))?;
                self.seek = false;
            }
            let mut header = [0u8; HEADER];
            match read_full(file, &mut header).map_err(io_err(&path))? {
                HEADER => {}
                _ => {
                    self.seek = true;
                    // End of this segment: move on if a newer one exists.
                    match self.next_segment_after(segment)? {
                        Some(next) => {
                            self.position = Position {
                                segment: next,
                                offset: 0,
                            };
                            self.file = None;
                            continue;
                        }
                        None => return Ok(None),
                    }
                }
            }
            let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
            if len > MAX_RECORD {
                self.seek = true;
                return Ok(None);
            }
            buf.resize(len, 0);
            if read_full(file, buf).map_err(io_err(&path))? < len || crc32fast::hash(buf) != crc {
                // Not durable yet (being written), or damage found at the next open.
                self.seek = true;
                return Ok(None);
            }
            let at = self.position;
            self.position.offset += (HEADER + len) as u64;
            return Ok(Some(at));
        }
    }

    fn next_segment_after(&self, segment: u64) -> Result<Option<u64>, WalError> {
        let next = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                u64::from_str_radix(name.strip_suffix(".wal")?, 16).ok()
            })
            .filter(|&id| id > segment)
            .min();
        Ok(next)
    }
}

fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Saves a sink's checkpoint durably (write, fsync, rename).
pub fn save_checkpoint(dir: &Path, sink: &str, position: Position) -> Result<(), WalError> {
    save_position(&dir.join(format!("{sink}.checkpoint")), position)
}

/// A sink's checkpoint; the start of the log when it has none.
pub fn load_checkpoint(dir: &Path, sink: &str) -> Result<Position, WalError> {
    Ok(load_position(&dir.join(format!("{sink}.checkpoint")))?.unwrap_or_default())
}

/// A sink's checkpoint in `dir`, or `start` for a sink that has none yet.
pub fn load_checkpoint_or(dir: &Path, sink: &str, start: Position) -> Result<Position, WalError> {
    Ok(load_position(&dir.join(format!("{sink}.checkpoint")))?.unwrap_or(start))
}

/// Saves a position durably in a file of its own (write, fsync, rename).
pub fn save_position(path: &Path, position: Position) -> Result<(), WalError> {
    let tmp = path.with_extension("new");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(format!("{} {}\n", position.segment, position.offset).as_bytes())
            .map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// A position saved by [`save_position`]; `None` when there is no such file.
pub fn load_position(path: &Path) -> Result<Option<Position>, WalError> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let mut words = text.split_whitespace().map(str::parse::<u64>);
            match (words.next(), words.next()) {
                (Some(Ok(segment)), Some(Ok(offset))) => Ok(Some(Position { segment, offset })),
                _ => Err(WalError::Io {
                    path: path.to_owned(),
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        "checkpoint is not \"SEGMENT OFFSET\"",
                    ),
                }),
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> WalOptions {
        WalOptions {
            segment_bytes: 1024,
            max_bytes: 64 * 1024,
        }
    }

    fn read_all(wal: &Wal, from: Position) -> Vec<Vec<u8>> {
        let mut reader = wal.reader(from);
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while reader.next_record(&mut buf).expect("read").is_some() {
            out.push(buf.clone());
        }
        out
    }

    fn records(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("record {i:04} {}", "x".repeat(i % 50)).into_bytes())
            .collect()
    }

    #[test]
    fn appended_and_synced_records_read_back_across_segments_and_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, recovery) = Wal::open(dir.path(), small()).expect("open");
        assert_eq!(recovery, Recovery::default(), "a new log");
        let data = records(100);
        for r in &data[..3] {
            wal.append(r).expect("append");
        }
        assert!(
            read_all(&wal, Position::default()).is_empty(),
            "nothing is readable before sync"
        );
        wal.sync().expect("sync");
        // A reader that reached the end goes on from there when more becomes durable.
        let mut follower = wal.reader(Position::default());
        let mut buf = Vec::new();
        let mut followed = Vec::new();
        while follower.next_record(&mut buf).expect("read").is_some() {
            followed.push(buf.clone());
        }
        assert_eq!(followed.len(), 3);
        for r in &data[3..] {
            wal.append(r).expect("append");
        }
        wal.sync().expect("sync");
        while follower.next_record(&mut buf).expect("read").is_some() {
            followed.push(buf.clone());
        }
        assert_eq!(
            followed, data,
            "the follower saw every record once, in order"
        );
        assert_eq!(read_all(&wal, Position::default()), data);
        assert!(wal.segments.len() > 3, "rotated: {}", wal.segments.len());
        drop(wal);
        let (wal, recovery) = Wal::open(dir.path(), small()).expect("reopen");
        assert_eq!(recovery.records, 100);
        assert!(recovery.quarantined.is_empty() && recovery.torn_bytes == 0);
        assert_eq!(read_all(&wal, Position::default()), data);
    }

    #[test]
    fn a_reader_resumes_from_its_checkpoint_and_released_segments_go() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = Wal::open(dir.path(), small()).expect("open");
        let data = records(60);
        for r in &data {
            wal.append(r).expect("append");
        }
        wal.sync().expect("sync");
        let mut reader = wal.reader(Position::default());
        let mut buf = Vec::new();
        for _ in 0..30 {
            reader.next_record(&mut buf).expect("read").expect("record");
        }
        save_checkpoint(dir.path(), "personal", reader.position()).expect("save");
        let from = load_checkpoint(dir.path(), "personal").expect("load");
        assert_eq!(read_all(&wal, from), data[30..].to_vec());
        let before = wal.used_bytes();
        wal.release_before(from).expect("release");
        assert!(wal.used_bytes() < before);
        assert_eq!(
            read_all(&wal, from),
            data[30..].to_vec(),
            "nothing after the checkpoint is lost"
        );
        assert_eq!(
            load_checkpoint(dir.path(), "influx").expect("none"),
            Position::default()
        );
    }

    #[test]
    fn a_torn_tail_is_cut_back_to_the_last_good_record() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
        let data = records(10);
        for r in &data {
            wal.append(r).expect("append");
        }
        wal.sync().expect("sync");
        let path = wal.active_path.clone();
        drop(wal);
        // A crash in the middle of the next write: its header and half its payload.
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&100u32.to_le_bytes()).expect("w");
        f.write_all(&7u32.to_le_bytes()).expect("w");
        f.write_all(&[1u8; 40]).expect("w");
        drop(f);
        let (mut wal, recovery) = Wal::open(dir.path(), WalOptions::default()).expect("reopen");
        assert_eq!(recovery.torn_bytes, 48);
        assert_eq!(recovery.records, 10);
        assert!(recovery.quarantined.is_empty());
        assert_eq!(read_all(&wal, Position::default()), data);
        wal.append(b"after").expect("append");
        wal.sync().expect("sync");
        assert_eq!(
            read_all(&wal, Position::default())
                .last()
                .map(Vec::as_slice),
            Some(&b"after"[..])
        );
    }

    #[test]
    fn a_corrupt_middle_segment_is_set_aside_and_the_rest_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut wal, _) = Wal::open(dir.path(), small()).expect("open");
        for r in &records(100) {
            wal.append(r).expect("append");
        }
        wal.sync().expect("sync");
        let (second, _) = wal.segments[1];
        let third_on: usize = wal.segments[2..]
            .iter()
            .map(|&(id, _)| scan(&segment_path(dir.path(), id)).expect("scan").records as usize)
            .sum();
        drop(wal);
        let path = segment_path(dir.path(), second);
        let mut bytes = fs::read(&path).expect("read");
        bytes[20] ^= 0xff; // flip a payload byte of the first record
        fs::write(&path, bytes).expect("write");
        let (wal, recovery) = Wal::open(dir.path(), small()).expect("reopen: no crash loop");
        assert_eq!(recovery.quarantined, vec![path.with_extension("corrupt")]);
        assert!(path.with_extension("corrupt").exists());
        let read = read_all(&wal, Position::default());
        let first: usize = scan(&segment_path(dir.path(), wal.segments[0].0))
            .expect("scan")
            .records as usize;
        assert_eq!(
            read.len(),
            first + third_on,
            "every record of the good segments"
        );
    }

    #[test]
    fn a_full_log_refuses_appends_until_space_returns() {
        let dir = tempfile::tempdir().expect("dir");
        let options = WalOptions {
            segment_bytes: 1024,
            max_bytes: 4096,
        };
        let (mut wal, _) = Wal::open(dir.path(), options).expect("open");
        let mut appended = 0;
        let err = loop {
            match wal.append(&[7u8; 100]) {
                Ok(_) => appended += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, WalError::Full { .. }), "{err}");
        assert!(appended >= 30);
        wal.sync().expect("sync");
        let end = wal.end();
        wal.release_before(end).expect("release");
        wal.append(&[7u8; 100]).expect("space returned");
        assert!(matches!(
            wal.append(&vec![0u8; MAX_RECORD + 1]),
            Err(WalError::TooLarge(_))
        ));
    }
}
