#![no_main]
//! A realisation upload, in both formats.
use libfuzzer_sys::fuzz_target;
use nixflare::core::nix::hash::Sha256;
use nixflare::core::nix::realisation::{Realisation, RealisationKey};

fuzz_target!(|data: &[u8]| {
    let legacy = RealisationKey::Legacy { drv_hash: Sha256([7; 32]), output: "out".into() };
    let trace = RealisationKey::BuildTrace { drv: "x.drv".into(), output: "out".into() };
    for key in [legacy, trace] {
        if let Ok(realisation) = Realisation::parse(data, &key) {
            let _ = realisation.signed_by_any(&[]);
        }
    }
});
