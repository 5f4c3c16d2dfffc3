#![no_main]
//! A narinfo's CA field, and the store path it makes.
use libfuzzer_sys::fuzz_target;
use nixflare::core::nix::content_address::ContentAddress;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(ca) = text.parse::<ContentAddress>() {
        let path = "7rjj86a15146cq1d3qy068lml7n8ykzm-fuzz".parse().expect("a base name");
        let _ = ca.store_path_hash(&path, std::slice::from_ref(&path), "/nix/store");
        // Nix's rendering reads back as the same content address.
        assert_eq!(ca.to_string().parse::<ContentAddress>().as_ref(), Ok(&ca));
    }
});
