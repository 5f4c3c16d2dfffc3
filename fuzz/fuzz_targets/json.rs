#![no_main]
//! The worker's JSON reader.
use libfuzzer_sys::fuzz_target;
use nixflare::core::json_read;

fuzz_target!(|data: &[u8]| {
    let _ = json_read::parse(data);
});
