#![no_main]
//! Range and If-None-Match headers.
use libfuzzer_sys::fuzz_target;
use nixflare::core::http::{if_none_match_matches, RangeRequest};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for size in [0, 1, 1000, u64::MAX] {
        if let RangeRequest::Partial { start, end } = RangeRequest::resolve(Some(text), size) {
            assert!(start <= end && end < size);
        }
    }
    let _ = if_none_match_matches(text, "\"etag\"");
});
