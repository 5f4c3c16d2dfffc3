//! Property tests: what the core writes it reads back unchanged (nix32, routes,
//! narinfos), and no parser that sees request data panics on any input. The fuzz
//! targets (`fuzz/`, `make fuzz`) push the second kind much further; these keep it in
//! `cargo test`.
#![cfg(test)]

use proptest::prelude::*;

use crate::core::config::CacheConfig;
use crate::core::http::{query_pairs, Method, RangeRequest};
use crate::core::index::passes::publish::references_first;
use crate::core::json_read;
use crate::core::multipart::{parse_part_list, Action};
use crate::core::nix::content_address::ContentAddress;
use crate::core::nix::hash::Sha256;
use crate::core::nix::keys::SecretKey;
use crate::core::nix::nar_file::{Compression, NarFile};
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::nix32;
use crate::core::nix::realisation::{Realisation, RealisationKey};
use crate::core::nix::side_file::{check_debuginfo, check_listing};
use crate::core::nix::store_path::StorePathBaseName;
use crate::core::publish::{check_batch, check_narinfo};
use crate::core::route::Route;
use crate::core::token;

const STORE: &str = "/nix/store";

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        Just(Compression::Xz),
        Just(Compression::Bzip2),
        Just(Compression::Zstd),
        Just(Compression::Brotli),
        Just(Compression::Lz4),
        Just(Compression::Lzip),
    ]
}

/// Store path names: Nix's characters, not starting with a dot.
fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9+_?=-][a-zA-Z0-9+._?=-]{0,40}"
}

fn base_name() -> impl Strategy<Value = StorePathBaseName> {
    (any::<[u8; 20]>(), name()).prop_map(|(hash, name)| {
        format!("{}-{name}", nix32::encode(&hash))
            .parse()
            .expect("a valid base name")
    })
}

fn sha256() -> impl Strategy<Value = Sha256> {
    any::<[u8; 32]>().prop_map(Sha256)
}

fn narinfo() -> impl Strategy<Value = NarInfo> {
    (
        base_name(),
        (sha256(), compression()),
        (1..u64::MAX, 1..u64::MAX, sha256()),
        proptest::collection::vec(base_name(), 0..8),
        proptest::option::of(base_name()),
        proptest::option::of("[a-z0-9_-]{1,20}"),
        proptest::collection::vec(any::<[u8; 32]>(), 0..3),
    )
        .prop_map(
            |(
                store_path,
                (file_hash, compression),
                (nar_size, file_size, nar_hash),
                mut references,
                deriver,
                system,
                seeds,
            )| {
                references.sort_by_key(|r| r.to_string());
                let nar = NarFile {
                    file_hash,
                    compression,
                };
                NarInfo {
                    store_path,
                    url: nar.url(),
                    compression,
                    file_hash: Some(file_hash),
                    file_size: Some(file_size),
                    nar_hash,
                    nar_size,
                    references,
                    deriver,
                    system,
                    signatures: seeds
                        .iter()
                        .enumerate()
                        .map(|(i, seed)| {
                            SecretKey::from_seed(&format!("key-{i}"), *seed)
                                .expect("a valid name")
                                .sign(b"fingerprint")
                        })
                        .collect(),
                    ca: None,
                }
            },
        )
}

fn drv() -> impl Strategy<Value = String> {
    (any::<[u8; 20]>(), name()).prop_map(|(h, n)| format!("{}-{n}.drv", nix32::encode(&h)))
}

fn route() -> impl Strategy<Value = Route> {
    let paths: BoxedStrategy<String> = prop_oneof![
        any::<[u8; 20]>().prop_map(|h| format!("/{}.narinfo", nix32::encode(&h))),
        any::<[u8; 20]>().prop_map(|h| format!("/{}.ls", nix32::encode(&h))),
        (sha256(), compression()).prop_map(|(file_hash, compression)| format!(
            "/nar/{}",
            NarFile {
                file_hash,
                compression
            }
        )),
        (sha256(), compression()).prop_map(|(file_hash, compression)| format!(
            "/_nixflare/uploads/nar/{}",
            NarFile {
                file_hash,
                compression
            }
        )),
        drv().prop_map(|d| format!("/log/{d}")),
        (sha256(), name())
            .prop_map(|(h, o)| format!("/realisations/sha256:{}!{o}.doi", h.lower_hex())),
        (drv(), name()).prop_map(|(d, o)| format!("/build-trace-v2/{d}/{o}.doi")),
        ("[0-9a-f]{2,128}", proptest::bool::ANY).prop_map(|(id, suffix)| format!(
            "/debuginfo/{id}{}",
            if suffix { ".debug" } else { "" }
        )),
        any::<[u8; 16]>().prop_map(|id| format!("/_nixflare/revocations/{}", hex::encode(id))),
    ]
    .boxed();
    paths.prop_map(|path: String| {
        Route::parse(&path).unwrap_or_else(|| panic!("{path} should parse"))
    })
}

proptest! {
    #[test]
    fn nix32_round_trips(bytes in any::<[u8; 32]>(), short in any::<[u8; 20]>()) {
        prop_assert_eq!(nix32::decode::<32>(&nix32::encode(&bytes)), Ok(bytes));
        prop_assert_eq!(nix32::decode::<20>(&nix32::encode(&short)), Ok(short));
    }

    #[test]
    fn nix32_text_that_decodes_encodes_back(text in "[0-9a-z]{52}") {
        if let Ok(bytes) = nix32::decode::<32>(&text) {
            prop_assert_eq!(nix32::encode(&bytes), text);
        }
    }

    #[test]
    fn routes_round_trip(route in route()) {
        let text = format!("/{route}");
        prop_assert_eq!(Route::parse(&text), Some(route));
    }

    #[test]
    fn narinfos_round_trip(info in narinfo()) {
        let text = info.to_text(STORE);
        prop_assert_eq!(NarInfo::parse(text.as_bytes(), STORE), Ok(info.clone()));
        // And every spelling of NarHash signs the same fingerprint.
        let sri = text.replace(&info.nar_hash.to_string(), &format!("sha256:{}", hex::encode(info.nar_hash.0)));
        prop_assert_eq!(NarInfo::parse(sri.as_bytes(), STORE).map(|i| i.fingerprint(STORE)), Ok(info.fingerprint(STORE)));
    }

    #[test]
    fn request_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), text in ".{0,200}") {
        let config = CacheConfig::default();
        let hash = "7rjj86a15146cq1d3qy068lml7n8ykzm".parse().expect("a hash");
        let _ = NarInfo::parse(&bytes, STORE);
        let _ = check_narinfo(&bytes, &hash, &config);
        let _ = json_read::parse(&bytes);
        let _ = check_listing(&bytes);
        let _ = check_debuginfo(&bytes);
        let key = RealisationKey::BuildTrace { drv: "d".into(), output: "out".into() };
        let _ = Realisation::parse(&bytes, &key);
        let _ = Route::parse(&text);
        let _ = text.parse::<ContentAddress>();
        let _ = token::from_authorization(&text);
        let _ = token::decode_unverified(&text);
        let _ = crate::core::reader::token_text(Some(&text));
        let _ = crate::core::config::ReadAccess::parse(Some(&text));
        let _ = RangeRequest::resolve(Some(&text), 1000);
        let _ = parse_part_list(&text);
        let _ = Action::parse(Method::Put, &query_pairs(&text));
        let _ = check_batch(&[text.clone(), String::from_utf8_lossy(&bytes).into_owned()], &config);
    }

    /// Whatever references a batch names among itself (cycles included), the order is
    /// every item once, each after the items it references unless they form a cycle.
    #[test]
    fn batches_order_references_first(refs in proptest::collection::vec(proptest::collection::vec(0usize..12, 0..4), 0..12)) {
        let n = refs.len();
        let inside: Vec<Vec<usize>> = refs
            .iter()
            .enumerate()
            .map(|(i, r)| r.iter().copied().filter(|&j| j < n && j != i).collect())
            .collect();
        let order = references_first(&inside);
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..n).collect::<Vec<_>>());
        // Acyclic inputs (every reference to a lower index) come out references first.
        if inside.iter().enumerate().all(|(i, r)| r.iter().all(|&j| j < i)) {
            let position = |i: usize| order.iter().position(|&k| k == i).unwrap_or(usize::MAX);
            for (i, r) in inside.iter().enumerate() {
                for &j in r {
                    prop_assert!(position(j) < position(i));
                }
            }
        }
    }
}
