//! What an upload must prove before it is published. Pure: the edge layer supplies
//! what storage knows (does the NAR exist, how big is it) and acts on the verdict.

use thiserror::Error;

use crate::core::config::CacheConfig;
use crate::core::nix::content_address::ContentAddressError;
use crate::core::nix::nar_file::{Compression, NarFile};
use crate::core::nix::narinfo::{NarInfo, NarInfoError};
use crate::core::nix::realisation::{Realisation, RealisationError, RealisationKey};
use crate::core::nix::side_file::{check_debuginfo, check_listing, SideFileError};
use crate::core::nix::store_path::StorePathHash;
use crate::core::route::Route;

/// Largest narinfo accepted. Real ones are a few hundred bytes; a path with thousands
/// of references stays well below this.
pub const MAX_NARINFO_BYTES: u64 = 1 << 20;
/// Narinfos one batch request publishes unless `MAX_BATCH_NARINFOS` says otherwise,
/// and the most it may say. A batch costs an R2 HEAD and one to three R2 operations per
/// narinfo plus two or three index calls, and a signature check of CPU per narinfo
/// (docs/index.md has the measured costs).
pub const DEFAULT_BATCH_NARINFOS: u32 = 64;
/// At most four R2 operations per narinfo (the NAR's HEAD; a narinfo already stored
/// with other bytes: put-if-absent, GET, conditional PUT) stay, with the lookups and the
/// index calls, below the 1,000 calls to Cloudflare's services one request may make.
pub const MAX_BATCH_NARINFOS: u32 = 200;
/// Most references the narinfos of one batch may name together: what the index
/// reserves and records for one request stays what one narinfo may bring (10,000).
pub const MAX_BATCH_REFERENCES: usize = 10_000;
/// Largest batch request body: whole in wasm memory while it is checked. A narinfo too
/// large to fit goes up with a PUT of its own.
pub const MAX_BATCH_BYTES: u64 = 4 << 20;

/// Largest NAR listing. A listing is read whole into the worker and parsed into a tree
/// there (a few times its size in memory, against the isolate's 128 MB); a tree of
/// 100,000 files lists in about 8 MB.
pub const MAX_LISTING_BYTES: u64 = 8 << 20;
/// Largest realisation or debuginfo pointer: a few hundred bytes in practice.
pub const MAX_POINTER_BYTES: u64 = 64 << 10;

/// A JSON side file the cache stores, by what its route says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SideFile {
    Listing,
    Realisation(RealisationKey),
    DebugInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SideFileRejection {
    #[error(transparent)]
    Shape(#[from] SideFileError),
    #[error(transparent)]
    Realisation(#[from] RealisationError),
}

impl SideFile {
    /// `None` for a route that is not a JSON side file.
    pub fn of(route: &Route) -> Option<SideFile> {
        Some(match route {
            Route::Listing(_) => SideFile::Listing,
            Route::DebugInfo(_) => SideFile::DebugInfo,
            Route::Realisation { drv_hash, output } => {
                SideFile::Realisation(RealisationKey::Legacy {
                    drv_hash: *drv_hash,
                    output: output.to_string(),
                })
            }
            Route::BuildTrace { drv, output } => {
                SideFile::Realisation(RealisationKey::BuildTrace {
                    drv: drv.to_string(),
                    output: output.to_string(),
                })
            }
            _ => return None,
        })
    }

    pub fn max_bytes(&self) -> u64 {
        match self {
            SideFile::Listing => MAX_LISTING_BYTES,
            SideFile::Realisation(_) | SideFile::DebugInfo => MAX_POINTER_BYTES,
        }
    }

    /// Checks the file's shape and, for a realisation, its signature: Nix does not
    /// check realisation signatures when it substitutes, so this is the only gate.
    pub fn check(&self, bytes: &[u8], config: &CacheConfig) -> Result<(), SideFileRejection> {
        match self {
            SideFile::Listing => Ok(check_listing(bytes)?),
            SideFile::DebugInfo => Ok(check_debuginfo(bytes)?),
            SideFile::Realisation(key) => {
                let realisation = Realisation::parse(bytes, key)?;
                match realisation.signed_by_any(&config.public_keys) {
                    true => Ok(()),
                    false => Err(RealisationError::Signature.into()),
                }
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarinfoRejection {
    #[error(transparent)]
    Parse(#[from] NarInfoError),
    #[error("narinfo StorePath hash {found} does not match the URL's {expected}")]
    HashMismatch { expected: String, found: String },
    #[error("narinfo URL must be nar/<filehash>.nar[.xz|.zst|.bz2|.br|.lz4|.lzip]")]
    NarUrl,
    #[error("narinfo Compression {field} does not match its URL's extension {extension:?}")]
    Compression {
        field: Compression,
        extension: &'static str,
    },
    #[error("narinfo has no {0}: the cache binds a narinfo to its NAR by FileHash and FileSize")]
    Missing(&'static str),
    #[error("narinfo FileHash does not match the hash in its URL")]
    FileHash,
    #[error("narinfo {0} is beyond 2^53 bytes: no NAR is that large")]
    Size(&'static str),
    #[error("narinfo says its NAR is uncompressed, but FileHash/FileSize are not NarHash/NarSize")]
    NarHash,
    #[error("no Sig verifies under this cache's public keys ({keys})")]
    Signature { keys: String },
    #[error("narinfo CA does not make its store path")]
    WrongContentAddress,
    #[error("narinfo NarHash is not the NAR hash its CA (fixed:r:sha256) names")]
    CaNarHash,
    #[error("narinfo CA: {0} (Nix could not check it)")]
    ContentAddress(#[from] ContentAddressError),
}

/// The largest NarSize or FileSize accepted: 2^53 - 1, the largest integer JSON readers
/// (JavaScript's, the index's) keep exact. R2 objects stop at 5 TiB anyway.
pub const MAX_SIZE: u64 = (1 << 53) - 1;

/// What an upload to a key that already holds an object does: the rule for every key
/// the cache stores (narinfos, side files, logs). The edge applies it with R2's
/// conditional writes, so no interleaving of requests can break it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExisting {
    /// The same bytes: a success that changes nothing.
    Unchanged,
    /// Different bytes, and the token may not replace them: 409.
    Conflict,
    /// Different bytes, and the token has `overwrite`: replace exactly the object that
    /// was compared (a concurrent change makes it a conflict instead).
    Replace,
}

impl OnExisting {
    pub fn decide(same_bytes: bool, may_overwrite: bool) -> OnExisting {
        match (same_bytes, may_overwrite) {
            (true, _) => OnExisting::Unchanged,
            (false, false) => OnExisting::Conflict,
            (false, true) => OnExisting::Replace,
        }
    }
}

/// A narinfo that passed every check that needs no storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedNarinfo {
    pub info: NarInfo,
    /// The NAR it points at, which must already be stored...
    pub nar: NarFile,
    /// ...with exactly this size.
    pub file_size: u64,
    /// A trusted key signed it (else it is trusted for its content address alone).
    pub signed: bool,
}

/// Whether the narinfo is trusted for its content address alone (no signature needed),
/// as Nix checks before it looks at signatures (`ValidPathInfo::isContentAddressed`). A
/// `CA` field must be right whether or not the narinfo is signed: newer Nix refuses a
/// path whose CA does not recompute it, and throws on one it cannot compute. Where the CA
/// pins the NAR's own hash (`fixed:r:sha256`, no self-reference), NarHash must be it, so
/// an unsigned narinfo cannot claim the path with other bytes.
fn content_addressed(info: &NarInfo, store_dir: &str) -> Result<bool, NarinfoRejection> {
    let Some(ca) = &info.ca else {
        return Ok(false);
    };
    let hash = ca.store_path_hash(&info.store_path, &info.references, store_dir)?;
    if &hash != info.store_path.hash() {
        return Err(NarinfoRejection::WrongContentAddress);
    }
    let self_reference = info.references.contains(&info.store_path);
    match ca.nar_hash(self_reference) {
        Some(pinned) if pinned != info.nar_hash.0 => Err(NarinfoRejection::CaNarHash),
        _ => Ok(true),
    }
}

/// True when `new` may replace the narinfo `existing` without `overwrite`: the existing
/// one was trusted only for its content address (a write token alone can publish that),
/// and the new one is signed by a trusted key. So whoever holds the signing key can always
/// take back a path an unsigned narinfo claimed first.
pub fn signed_replaces_unsigned(
    existing: &[u8],
    new: &CheckedNarinfo,
    config: &CacheConfig,
) -> bool {
    let signed = |info: &NarInfo| info.signed_by_any(&config.public_keys, &config.store_dir);
    match NarInfo::parse(existing, &config.store_dir) {
        Ok(old) => !signed(&old) && signed(&new.info),
        // What no longer parses (an older, laxer worker stored it) may be replaced too.
        Err(_) => signed(&new.info),
    }
}

/// Checks the narinfos of a batch, each as [`check_narinfo`] checks a PUT of it under
/// the name its own `StorePath` gives; a store path sent twice is refused the second
/// time. Answers in the order sent; a narinfo that names no store path has no hash.
pub fn check_batch(
    narinfos: &[String],
    config: &CacheConfig,
) -> Vec<(Option<StorePathHash>, Result<CheckedNarinfo, String>)> {
    let mut seen: Vec<StorePathHash> = Vec::with_capacity(narinfos.len());
    narinfos
        .iter()
        .map(|text| {
            if text.len() as u64 > MAX_NARINFO_BYTES {
                return (None, Err(format!("larger than {MAX_NARINFO_BYTES} bytes")));
            }
            let hash = match NarInfo::parse(text.as_bytes(), &config.store_dir) {
                Ok(info) => *info.store_path.hash(),
                Err(err) => return (None, Err(NarinfoRejection::from(err).to_string())),
            };
            if seen.contains(&hash) {
                return (
                    Some(hash),
                    Err(format!("{hash} is sent twice in this batch")),
                );
            }
            seen.push(hash);
            let checked = check_narinfo(text.as_bytes(), &hash, config).map_err(|e| e.to_string());
            (Some(hash), checked)
        })
        .collect()
}

/// Checks a narinfo uploaded as `<url_hash>.narinfo`.
pub fn check_narinfo(
    bytes: &[u8],
    url_hash: &StorePathHash,
    config: &CacheConfig,
) -> Result<CheckedNarinfo, NarinfoRejection> {
    let info = NarInfo::parse(bytes, &config.store_dir)?;
    if info.store_path.hash() != url_hash {
        return Err(NarinfoRejection::HashMismatch {
            expected: url_hash.to_string(),
            found: info.store_path.hash().to_string(),
        });
    }
    let nar = NarFile::parse_url(&info.url).ok_or(NarinfoRejection::NarUrl)?;
    if info.compression != nar.compression {
        return Err(NarinfoRejection::Compression {
            field: info.compression,
            extension: nar.compression.extension(),
        });
    }
    // FileHash and FileSize are not signed: they must name exactly the NAR in the URL
    // (whose stored size the edge checks), so a signed narinfo replayed with other
    // values cannot be bound to another stored NAR. An uncompressed NAR is the NAR
    // itself, so it must be the one NarHash names.
    let file_hash = info
        .file_hash
        .ok_or(NarinfoRejection::Missing("FileHash"))?;
    let file_size = info
        .file_size
        .ok_or(NarinfoRejection::Missing("FileSize"))?;
    if file_hash != nar.file_hash {
        return Err(NarinfoRejection::FileHash);
    }
    // Sizes travel through JSON to the index (and JavaScript numbers): keep them exact.
    for (name, size) in [("NarSize", info.nar_size), ("FileSize", file_size)] {
        if size > MAX_SIZE {
            return Err(NarinfoRejection::Size(name));
        }
    }
    if nar.compression == Compression::None
        && (info.nar_hash != file_hash || info.nar_size != file_size)
    {
        return Err(NarinfoRejection::NarHash);
    }
    let content_addressed = content_addressed(&info, &config.store_dir)?;
    let signed = (!content_addressed || !info.signatures.is_empty())
        && info.signed_by_any(&config.public_keys, &config.store_dir);
    if !content_addressed && !signed {
        let mut keys = String::new();
        for key in &config.public_keys {
            keys += if keys.is_empty() { "" } else { ", " };
            keys += key.name();
        }
        if keys.is_empty() {
            keys += "none configured";
        }
        return Err(NarinfoRejection::Signature { keys });
    }
    Ok(CheckedNarinfo {
        file_size,
        nar,
        info,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOP: &str = include_str!("nix/testdata/top.narinfo");
    const TOP_HASH: &str = "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7";
    const PUBLIC: &str = "test-1:lZK8TvdFo6yEOp1D7yQkeLwxrshDPF1iwDJ6pNX1xHE=";

    fn config() -> CacheConfig {
        CacheConfig {
            public_keys: vec![PUBLIC.parse().unwrap()],
            ..CacheConfig::default()
        }
    }

    fn check(text: &str) -> Result<CheckedNarinfo, NarinfoRejection> {
        check_narinfo(text.as_bytes(), &TOP_HASH.parse().unwrap(), &config())
    }

    /// `nix-store --add`, pushed unsigned (CA fixed:r:sha256, no references).
    const CA_RECURSIVE: &str = include_str!(
        "nix/testdata/corpus/content-addressed/qdg1s68vf8ldcvx113vglrj55mas8qaf.narinfo"
    );
    const CA_HASH: &str = "qdg1s68vf8ldcvx113vglrj55mas8qaf";

    fn check_ca(text: &str) -> Result<CheckedNarinfo, NarinfoRejection> {
        check_narinfo(text.as_bytes(), &CA_HASH.parse().unwrap(), &config())
    }

    /// A batch's narinfos are named by their own StorePath and checked as PUTs are; a
    /// path sent twice is refused the second time, garbage has no name.
    #[test]
    fn batches_are_checked_one_by_one() {
        let texts = vec![
            TOP.to_owned(),
            "StorePath: nonsense\n".to_owned(),
            TOP.to_owned(),
        ];
        let checked = check_batch(&texts, &config());
        let top: StorePathHash = TOP_HASH.parse().unwrap();
        assert_eq!(checked[0].0, Some(top));
        assert!(checked[0].1.is_ok());
        assert_eq!(checked[1].0, None);
        assert!(checked[1].1.is_err());
        assert!(checked[2].1.as_ref().unwrap_err().contains("twice"));
        // The signature no longer verifies: refused as a PUT of it would be.
        let tampered = vec![TOP.replace("NarSize: ", "NarSize: 1")];
        let checked = check_batch(&tampered, &config());
        assert_eq!(checked[0].0, Some(top));
        let why = checked[0].1.as_ref().unwrap_err();
        assert_eq!(
            *why,
            check(&tampered[0]).unwrap_err().to_string(),
            "the same reason as a PUT"
        );
    }

    #[test]
    fn a_recursive_ca_pins_the_nar_hash() {
        assert!(check_ca(CA_RECURSIVE).is_ok());
        let nar_hash = "NarHash: sha256:132iiy0jvf7hdchdmsvbnkjhhlbcsbm3cw7gcicqjr7q9hryj5i1";
        let other_bytes = CA_RECURSIVE.replace(
            nar_hash,
            "NarHash: sha256:0000000000000000000000000000000000000000000000000000",
        );
        assert_eq!(check_ca(&other_bytes), Err(NarinfoRejection::CaNarHash));
    }

    #[test]
    fn a_signed_narinfo_takes_a_path_back_from_an_unsigned_one() {
        let secret: crate::core::nix::keys::SecretKey =
            "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ=="
                .parse()
                .unwrap();
        let unsigned = check_ca(CA_RECURSIVE).unwrap();
        let sig = secret.sign(unsigned.info.fingerprint("/nix/store").as_bytes());
        let signed = check_ca(&CA_RECURSIVE.replace("CA: ", &format!("Sig: {sig}\nCA: "))).unwrap();
        assert!(signed_replaces_unsigned(
            CA_RECURSIVE.as_bytes(),
            &signed,
            &config()
        ));
        assert!(!signed_replaces_unsigned(
            CA_RECURSIVE.as_bytes(),
            &unsigned,
            &config()
        ));
        // A signed narinfo is not replaced that way (that takes `overwrite`).
        let signed_text = signed.info.to_text("/nix/store");
        assert!(!signed_replaces_unsigned(
            signed_text.as_bytes(),
            &signed,
            &config()
        ));
    }

    #[test]
    fn existing_objects_change_only_with_overwrite() {
        assert_eq!(OnExisting::decide(true, false), OnExisting::Unchanged);
        assert_eq!(OnExisting::decide(true, true), OnExisting::Unchanged);
        assert_eq!(OnExisting::decide(false, false), OnExisting::Conflict);
        assert_eq!(OnExisting::decide(false, true), OnExisting::Replace);
    }

    #[test]
    fn accepts_a_nix_written_narinfo() {
        let checked = check(TOP).unwrap();
        assert_eq!(
            checked.nar.url(),
            "nar/1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w.nar.xz"
        );
        assert_eq!(checked.file_size, 14724);
    }

    #[test]
    fn rejections() {
        let other_hash: StorePathHash = "0".repeat(32).parse().unwrap();
        assert!(matches!(
            check_narinfo(TOP.as_bytes(), &other_hash, &config()),
            Err(NarinfoRejection::HashMismatch { .. })
        ));
        let url = "nar/1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w.nar.xz";
        for bad_url in [
            "../secret",
            "nar/x.nar",
            "nix-cache-info",
            &format!("{url}/x"),
        ] {
            assert_eq!(
                check(&TOP.replace(url, bad_url)),
                Err(NarinfoRejection::NarUrl),
                "{bad_url}"
            );
        }
        assert!(matches!(
            check(&TOP.replace("Compression: xz", "Compression: zstd")),
            Err(NarinfoRejection::Compression { .. })
        ));
        assert!(matches!(
            check(&TOP.replace("Compression: xz\n", "")),
            Err(NarinfoRejection::Compression { .. })
        ));
        assert_eq!(
            check(&TOP.replace("FileHash: sha256:1ijb", "FileHash: sha256:0ijb")),
            Err(NarinfoRejection::FileHash)
        );
        assert_eq!(
            check(&TOP.replace("FileSize: 14724", "FileSize: 9007199254740992")),
            Err(NarinfoRejection::Size("FileSize"))
        );
        assert_eq!(
            check(&TOP.replace("NarSize: 1670328", "NarSize: 9007199254740992")),
            Err(NarinfoRejection::Size("NarSize"))
        );
        // Uncompressed: the file is the NAR, so FileHash must be NarHash.
        let nar_hash = "0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc";
        let file_hash = "1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w";
        let uncompressed = TOP
            .replace(".nar.xz", ".nar")
            .replace("Compression: xz", "Compression: none");
        assert_eq!(check(&uncompressed), Err(NarinfoRejection::NarHash));
        let named_by_nar_hash = uncompressed
            .replace(file_hash, nar_hash)
            .replace("FileSize: 14724", "FileSize: 1670328");
        assert!(check(&named_by_nar_hash).is_ok());
        for field in ["FileHash", "FileSize"] {
            let without: String = TOP
                .lines()
                .filter(|l| !l.starts_with(field))
                .map(|l| format!("{l}\n"))
                .collect();
            assert_eq!(check(&without), Err(NarinfoRejection::Missing(field)));
        }
        let unsigned = TOP
            .lines()
            .filter(|l| !l.starts_with("Sig:"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        assert_eq!(
            check(&unsigned),
            Err(NarinfoRejection::Signature {
                keys: "test-1".into()
            })
        );
        let err = check_narinfo(
            TOP.as_bytes(),
            &TOP_HASH.parse().unwrap(),
            &CacheConfig::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no Sig verifies under this cache's public keys (none configured)"
        );
        // A CA field alone proves nothing: it must make the store path, signed or not.
        let wrong_ca = "CA: fixed:r:sha256:1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w\n";
        assert_eq!(
            check(&format!("{unsigned}{wrong_ca}")),
            Err(NarinfoRejection::WrongContentAddress)
        );
        assert_eq!(
            check(&format!("{TOP}{wrong_ca}")),
            Err(NarinfoRejection::WrongContentAddress)
        );
        assert!(matches!(
            check(&format!("{unsigned}CA: x\n")),
            Err(NarinfoRejection::Parse(_))
        ));
        // A flat fixed CA with references would make Nix abort: refused even signed.
        assert_eq!(
            check(&format!(
                "{TOP}CA: fixed:sha256:1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w\n"
            )),
            Err(NarinfoRejection::ContentAddress(
                ContentAddressError::References
            ))
        );
    }
}
