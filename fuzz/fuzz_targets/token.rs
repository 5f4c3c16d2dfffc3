#![no_main]
//! Authorization headers and the tokens in them.
use libfuzzer_sys::fuzz_target;
use nixflare::core::nix::keys::SecretKey;
use nixflare::core::token;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let key = SecretKey::from_seed("fuzz", [1; 32]).expect("a key").public_key();
    for candidate in [Some(text.to_owned()), token::from_authorization(text)].into_iter().flatten() {
        let _ = token::decode_unverified(&candidate);
        let _ = token::verify(&candidate, std::slice::from_ref(&key), 0);
    }
});
