//! Tests over `core/nix/testdata/corpus/`: binary-cache files written by stock Nix
//! (`scripts/make-corpus.sh`), one folder per kind of cache or upload. Every narinfo must
//! parse, render back byte for byte and pass the publish rules; every side file must be a
//! route the worker serves, under the key Nix wrote.
#![cfg(test)]

use std::path::{Path, PathBuf};

use crate::core::config::CacheConfig;
use crate::core::nix::nar_file::{Compression, NarFile};
use crate::core::nix::narinfo::{NarInfo, NarInfoError};
use crate::core::publish::check_narinfo;
use crate::core::route::{Kind, Route};

const STORE: &str = "/nix/store";
/// The `test-1` key the corpus is signed with (`core::nix::keys` tests).
const PUBLIC: &str = "test-1:lZK8TvdFo6yEOp1D7yQkeLwxrshDPF1iwDJ6pNX1xHE=";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core/nix/testdata/corpus")
}

/// Every file under `dir`, as (path relative to its cache folder, bytes).
fn files(dir: &Path, cache: &Path, out: &mut Vec<(String, String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, cache, out);
        } else {
            let key = path
                .strip_prefix(cache)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let folder = cache.file_name().unwrap().to_str().unwrap().to_owned();
            out.push((folder, key, std::fs::read(&path).unwrap()));
        }
    }
}

/// (cache folder, key, bytes) of every file in the corpus.
fn all_files() -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for cache in std::fs::read_dir(corpus()).unwrap() {
        let cache = cache.unwrap().path();
        if cache.is_dir() {
            files(&cache, &cache, &mut out);
        }
    }
    out.sort();
    assert!(out.len() >= 60, "corpus missing: {} files", out.len());
    out
}

fn config() -> CacheConfig {
    CacheConfig {
        public_keys: vec![PUBLIC.parse().unwrap()],
        ..CacheConfig::default()
    }
}

#[test]
fn every_narinfo_parses_renders_back_and_passes_the_publish_rules() {
    let mut seen = 0;
    let mut compressions = Vec::new();
    let mut content_addresses = Vec::new();
    let mut unsigned_refused = 0;
    let mut self_references = 0;
    for (folder, key, bytes) in all_files() {
        let Some(Route::Narinfo(hash)) = Route::parse(&format!("/{key}")) else {
            continue;
        };
        if folder == "compression-gzip" {
            continue; // below
        }
        let info = NarInfo::parse(&bytes, STORE).unwrap_or_else(|e| panic!("{folder}/{key}: {e}"));
        assert_eq!(info.to_text(STORE).as_bytes(), bytes, "{folder}/{key}");
        assert_eq!(info.store_path.hash(), &hash, "{folder}/{key}");
        let nar = NarFile::parse_url(&info.url).unwrap();
        assert_eq!(
            (nar.compression, Some(nar.file_hash)),
            (info.compression, info.file_hash)
        );
        // Nix signs whatever it copies with a key, content-addressed paths too. Without
        // one, only content-addressed paths are publishable: the unsigned
        // input-addressed dependency copied along with a CA derivation must be refused.
        let checked = check_narinfo(&bytes, &hash, &config());
        if info.signatures.is_empty() && info.ca.is_none() {
            assert!(
                checked.is_err(),
                "{folder}/{key}: unsigned, not content-addressed"
            );
            unsigned_refused += 1;
            continue;
        }
        let checked = checked.unwrap_or_else(|e| panic!("{folder}/{key}: {e}"));
        assert_eq!(checked.nar, nar);
        if !info.signatures.is_empty() {
            assert!(
                info.signed_by_any(&config().public_keys, STORE),
                "{folder}/{key}"
            );
        }
        if let Some(ca) = &info.ca {
            // Nix's own computation gives back the path Nix wrote.
            let recomputed = ca.store_path_hash(&info.store_path, &info.references, STORE);
            self_references += usize::from(info.references.contains(&info.store_path));
            assert_eq!(recomputed.as_ref(), Ok(&hash), "{folder}/{key}: {ca}");
            let text = ca.to_string();
            content_addresses.push(text.split(':').take(2).collect::<Vec<_>>().join(":"));
        }
        compressions.push(info.compression);
        seen += 1;
    }
    assert!(seen >= 30, "{seen} narinfos");
    assert_eq!(unsigned_refused, 1);
    assert_eq!(self_references, 1, "a CA path that refers to itself");
    compressions.sort_by_key(|c| c.narinfo_name());
    compressions.dedup();
    assert_eq!(
        compressions.len(),
        7,
        "every compression but gzip: {compressions:?}"
    );
    content_addresses.sort();
    content_addresses.dedup();
    assert_eq!(
        content_addresses,
        ["fixed:r", "fixed:sha256", "text:sha256"]
    );
}

#[test]
fn a_narinfo_with_many_references_signs_them_sorted_as_full_paths() {
    let bytes = all_files()
        .into_iter()
        .map(|(_, _, bytes)| bytes)
        .find(|bytes| bytes.windows(16).any(|w| w == b"corpus-many-refs"))
        .unwrap();
    let info = NarInfo::parse(&bytes, STORE).unwrap();
    assert_eq!(info.references.len(), 25, "24 leaves and itself");
    assert!(info.references.contains(&info.store_path));
    assert!(info.deriver.is_some());
    assert!(info.signed_by_any(&config().public_keys, STORE));
}

#[test]
fn gzip_is_written_by_nix_but_has_no_file_name_here() {
    let (_, _, bytes) = all_files()
        .into_iter()
        .find(|(folder, key, _)| folder == "compression-gzip" && key.ends_with(".narinfo"))
        .unwrap();
    assert_eq!(
        NarInfo::parse(&bytes, STORE),
        Err(NarInfoError::Invalid {
            field: "Compression",
            reason: "\"gzip\" is not supported".into()
        })
    );
    assert!(Compression::from_narinfo_name("gzip").is_none());
}

#[test]
fn every_side_file_is_a_route_under_the_key_nix_wrote() {
    let mut kinds = Vec::new();
    for (folder, key, bytes) in all_files() {
        if key.ends_with(".narinfo") {
            continue;
        }
        let route = Route::parse(&format!("/{key}"))
            .unwrap_or_else(|| panic!("{folder}/{key} is not a route"));
        assert_eq!(route.to_string(), key, "{folder}/{key}");
        let kind = match &route {
            Route::Listing(_) => "listing",
            Route::Realisation { .. } => "realisation",
            Route::DebugInfo(_) => "debuginfo",
            Route::Log(_) => "log",
            other => panic!("{folder}/{key}: unexpected {other:?}"),
        };
        if route.kind() == Kind::Json {
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .unwrap_or_else(|e| panic!("{folder}/{key}: {e}"));
        }
        kinds.push(kind);
    }
    kinds.sort();
    kinds.dedup();
    assert_eq!(kinds, ["debuginfo", "listing", "log", "realisation"]);
}

#[test]
fn nix_signed_realisations_verify_over_our_fingerprint() {
    use crate::core::nix::realisation::{Realisation, RealisationKey};
    let (mut signed, mut unsigned, mut with_dependents) = (0, 0, 0);
    for (folder, key, bytes) in all_files() {
        let Some(Route::Realisation { drv_hash, output }) = Route::parse(&format!("/{key}")) else {
            continue;
        };
        let realisation_key = RealisationKey::Legacy {
            drv_hash,
            output: output.to_string(),
        };
        let realisation = Realisation::parse(&bytes, &realisation_key)
            .unwrap_or_else(|e| panic!("{folder}/{key}: {e}"));
        with_dependents += usize::from(
            !realisation
                .fingerprint()
                .contains("\"dependentRealisations\":{}"),
        );
        if realisation.signatures.is_empty() {
            assert!(!realisation.signed_by_any(&config().public_keys));
            unsigned += 1;
        } else {
            // Nix signed it (at build time); our fingerprint is the bytes it signed.
            assert!(
                realisation.signed_by_any(&config().public_keys),
                "{folder}/{key}"
            );
            signed += 1;
        }
    }
    assert_eq!(signed, 2);
    assert!(with_dependents >= 1, "a realisation that lists another");
    assert!(unsigned >= 2);
}
