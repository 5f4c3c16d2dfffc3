#![no_main]
//! NAR listings and debuginfo pointers.
use libfuzzer_sys::fuzz_target;
use nixflare::core::nix::side_file::{check_debuginfo, check_listing};

fuzz_target!(|data: &[u8]| {
    let _ = check_listing(data);
    let _ = check_debuginfo(data);
});
