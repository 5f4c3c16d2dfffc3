#![no_main]
//! A narinfo upload: parsed, then checked as the worker checks it.
use libfuzzer_sys::fuzz_target;
use nixflare::core::config::CacheConfig;
use nixflare::core::nix::narinfo::NarInfo;
use nixflare::core::publish::check_narinfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = NarInfo::parse(data, "/nix/store") {
        // What parses renders and parses back to the same value.
        let text = info.to_text("/nix/store");
        assert_eq!(NarInfo::parse(text.as_bytes(), "/nix/store").as_ref(), Ok(&info));
        let _ = check_narinfo(data, info.store_path.hash(), &CacheConfig::default());
    }
});
