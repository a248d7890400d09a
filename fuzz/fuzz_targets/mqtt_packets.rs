//! The packets a client sends after its CONNECT, as the session reads them: the first byte
//! picks the connection's protocol level (odd: MQTT 5, even: 3.1.1), the rest is the stream.
//! Unlike `mqtt_stream`, the fuzzer needs no valid CONNECT in front to reach every decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&level, stream)) = data.split_first() else {
        return;
    };
    kenko_fuzz::bounded(data.len(), || {
        kenko_fuzz::mqtt::packets(level & 1 == 1, stream, false)
    });
});
