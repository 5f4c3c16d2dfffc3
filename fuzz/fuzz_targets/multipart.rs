#![no_main]
//! Multipart part lists and queries.
use libfuzzer_sys::fuzz_target;
use nixflare::core::http::{query_pairs, Method};
use nixflare::core::multipart::{parse_part_list, render_part_list, Action};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parts) = parse_part_list(text) {
        assert_eq!(parse_part_list(&render_part_list(&parts)), Ok(parts));
    }
    for method in [Method::Post, Method::Put, Method::Delete] {
        let _ = Action::parse(method, &query_pairs(text));
    }
});
