#![no_main]
//! A narinfo upload: parsed, then checked as the worker checks it.
use libfuzzer_sys::fuzz_target;
use nixflare::core::config::CacheConfig;
use nixflare::core::nix::narinfo::NarInfo;
use nixflare::core::publish::{check_batch, check_narinfo};

fuzz_target!(|data: &[u8]| {
    // The same text in a batch (named by its own StorePath).
    let _ = check_batch(&[String::from_utf8_lossy(data).into_owned()], &CacheConfig::default());
    if let Ok(info) = NarInfo::parse(data, "/nix/store") {
        // What parses renders and parses back to the same value.
        let text = info.to_text("/nix/store");
        assert_eq!(NarInfo::parse(text.as_bytes(), "/nix/store").as_ref(), Ok(&info));
        let _ = check_narinfo(data, info.store_path.hash(), &CacheConfig::default());
    }
});
