//! A TCP connection's bytes as kenko's listener reads them: the CONNECT sniffed for the
//! protocol level (`codec::sniff`), then every whole packet through that level's codec, as
//! `connection::handshake` and `Session::on_bytes` do. Never a panic, never unbounded memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kenko_fuzz::bounded(data.len(), || kenko_fuzz::mqtt::connection(data));
});
