#![no_main]
//! Request paths.
use libfuzzer_sys::fuzz_target;
use nixflare::core::route::Route;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some(route) = Route::parse(text) {
        // The canonical form (the storage key) parses to the same route.
        assert_eq!(Route::parse(&format!("/{route}")), Some(route));
    }
});
