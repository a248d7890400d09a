//! Write-ahead log throughput: appends/s and fsyncs/s with group commit, on this machine's
//! disk. `cargo bench -p kenko-ingest --bench wal -- [RECORDS [GROUP]]` (defaults 200000 256;
//! 300-byte records, the size of a bed-sensor message).

use std::time::Instant;

use kenko_ingest::wal::{Position, Wal, WalOptions};

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let records = args.first().copied().unwrap_or(200_000);
    let group = args.get(1).copied().unwrap_or(256).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut wal, _) = Wal::open(dir.path(), WalOptions::default()).expect("open");
    let payload = vec![0x5au8; 300];
    let started = Instant::now();
    let mut syncs = 0u64;
    for i in 0..records {
        wal.append(&payload).expect("append");
        if (i + 1) % group == 0 {
            wal.sync().expect("sync");
            syncs += 1;
        }
    }
    wal.sync().expect("sync");
    syncs += 1;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wal append: {records} records of 300 B in groups of {group}: {:.0} appends/s, {:.0} fsyncs/s, {:.1} MB/s",
        records as f64 / secs,
        syncs as f64 / secs,
        records as f64 * 308.0 / secs / 1e6
    );
    let started = Instant::now();
    let mut reader = wal.reader(Position::default());
    let mut buf = Vec::new();
    let mut read = 0u64;
    while reader.next_record(&mut buf).expect("read").is_some() {
        read += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(read, records, "every record reads back");
    println!("wal read: {:.0} records/s", read as f64 / secs);
}
