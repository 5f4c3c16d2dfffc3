//! Content addresses (a narinfo's `CA:` field) and the store paths they make.
//!
//! A content-addressed path needs no signature: Nix recomputes its store path from the
//! `CA` field, its name and its references, and trusts it when they match
//! (`ValidPathInfo::isContentAddressed` in libstore/path-info.cc). This module does the
//! same computation, so the cache accepts an unsigned narinfo exactly where Nix would.
//!
//! Formats (`parseContentAddress` in libstore/content-address.cc):
//! - `text:sha256:<hash>`: `builtins.toFile`, derivations (`makeTextPath`);
//! - `fixed:r:<algo>:<hash>`: NAR-hashed (`nix-store --add`, recursive fixed outputs,
//!   floating CA derivations);
//! - `fixed:<algo>:<hash>`: flat file hash (`nix-store --add-fixed`, `fetchurl`).
//!
//! `<algo>` is md5, sha1, sha256 or sha512; `<hash>` base16, nix32 or base64 by length.
//! The path (`makeStorePath` in libstore/store-api.cc) is the nix32 of the SHA-256 of
//! `<type>:sha256:<hex of inner hash>:<store dir>:<name>`, folded to 20 bytes, where
//! `<type>` is `text` or `source` plus `:<reference>` per reference (sorted, full paths)
//! and `:self` for a self-reference (`source` only), or `output:out` with an inner hash
//! of `fixed:out:[r:]<algo>:<hex>:` for every other fixed hash, which may have no
//! references at all (Nix asserts it).

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use sha2::{Digest as _, Sha256 as Sha256Hasher};
use thiserror::Error;

use super::nix32;
use super::store_path::{StorePathBaseName, StorePathHash};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ContentAddressError {
    #[error("CA must be text:sha256:<hash>, fixed:r:<algo>:<hash> or fixed:<algo>:<hash>")]
    Shape,
    #[error("CA hash algorithm {0:?} is not md5, sha1, sha256 or sha512")]
    Algorithm(String),
    #[error("CA hash is not base16, nix32 or base64 of a {0} digest")]
    Digest(&'static str),
    #[error("a text content address uses sha256")]
    TextAlgorithm,
    #[error(
        "a flat or non-sha256 fixed content address cannot have references, not even to itself"
    )]
    References,
}

/// A hash algorithm a content address may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    fn parse(name: &str) -> Result<Self, ContentAddressError> {
        Ok(match name {
            "md5" => HashAlgo::Md5,
            "sha1" => HashAlgo::Sha1,
            "sha256" => HashAlgo::Sha256,
            "sha512" => HashAlgo::Sha512,
            _ => return Err(ContentAddressError::Algorithm(name.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    fn size(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }
}

/// A digest of one of the content-address algorithms (any of them: only its bytes are
/// used, never recomputed).
#[derive(Clone, PartialEq, Eq)]
pub struct CaHash {
    pub algo: HashAlgo,
    bytes: Vec<u8>,
}

impl CaHash {
    /// Nix's `Hash::parseNonSRIUnprefixed`: the encoding is told by the length.
    fn parse(algo: HashAlgo, text: &str) -> Result<Self, ContentAddressError> {
        let size = algo.size();
        let bad = || ContentAddressError::Digest(algo.name());
        let bytes = if text.len() == size * 2 {
            hex::decode(text).map_err(|_| bad())?
        } else if text.len() == nix32::encoded_len(size) {
            let mut bytes = vec![0; size];
            nix32::decode_into(text, &mut bytes).map_err(|_| bad())?;
            bytes
        } else if text.len() == size.div_ceil(3) * 4 {
            BASE64.decode(text).map_err(|_| bad())?
        } else {
            return Err(bad());
        };
        (bytes.len() == size)
            .then_some(Self { algo, bytes })
            .ok_or_else(bad)
    }

    /// `<algo>:<lowercase hex>`, Nix's `to_string(Base16, true)`.
    fn base16(&self) -> String {
        format!("{}:{}", self.algo.name(), hex::encode(&self.bytes))
    }
}

impl fmt::Debug for CaHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.base16())
    }
}

/// How the content was hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContentAddress {
    /// `text:sha256:…`
    Text(CaHash),
    /// `fixed:r:…` (the NAR serialisation hashed) or `fixed:…` (the flat file).
    Fixed { recursive: bool, hash: CaHash },
}

impl FromStr for ContentAddress {
    type Err = ContentAddressError;

    fn from_str(text: &str) -> Result<Self, ContentAddressError> {
        let (prefix, rest) = text.split_once(':').ok_or(ContentAddressError::Shape)?;
        match prefix {
            "text" => {
                let (algo, hash) = rest.split_once(':').ok_or(ContentAddressError::Shape)?;
                let algo = HashAlgo::parse(algo)?;
                if algo != HashAlgo::Sha256 {
                    return Err(ContentAddressError::TextAlgorithm);
                }
                Ok(ContentAddress::Text(CaHash::parse(algo, hash)?))
            }
            "fixed" => {
                let (recursive, rest) = match rest.strip_prefix("r:") {
                    Some(rest) => (true, rest),
                    None => (false, rest),
                };
                let (algo, hash) = rest.split_once(':').ok_or(ContentAddressError::Shape)?;
                let hash = CaHash::parse(HashAlgo::parse(algo)?, hash)?;
                Ok(ContentAddress::Fixed { recursive, hash })
            }
            _ => Err(ContentAddressError::Shape),
        }
    }
}

/// As Nix renders it in a narinfo (`renderContentAddress`): the digest in nix32.
impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (prefix, hash) = match self {
            ContentAddress::Text(hash) => ("text:", hash),
            ContentAddress::Fixed {
                recursive: true,
                hash,
            } => ("fixed:r:", hash),
            ContentAddress::Fixed {
                recursive: false,
                hash,
            } => ("fixed:", hash),
        };
        write!(
            f,
            "{prefix}{}:{}",
            hash.algo.name(),
            nix32::encode(&hash.bytes)
        )
    }
}

impl ContentAddress {
    /// The NAR hash this content address pins, when it pins one: `fixed:r:sha256` is the
    /// SHA-256 of the NAR itself, unless the path refers to itself (then it hashes the
    /// NAR with its own hash blanked, which only the content can check).
    pub fn nar_hash(&self, self_reference: bool) -> Option<[u8; 32]> {
        match self {
            ContentAddress::Fixed {
                recursive: true,
                hash,
            } if hash.algo == HashAlgo::Sha256 && !self_reference => {
                hash.bytes.clone().try_into().ok()
            }
            _ => None,
        }
    }

    /// The store path hash Nix computes for `path`'s name and `references` under this
    /// content address. An error where Nix itself would fail (assert) to compute one.
    pub fn store_path_hash(
        &self,
        path: &StorePathBaseName,
        references: &[StorePathBaseName],
        store_dir: &str,
    ) -> Result<StorePathHash, ContentAddressError> {
        // Nix's reference set is ordered by base name, which orders full paths too.
        let own = format!("{store_dir}/{path}");
        let mut refs: Vec<String> = references
            .iter()
            .map(|r| format!("{store_dir}/{r}"))
            .collect();
        refs.sort();
        refs.dedup();
        let name = path.name();
        match self {
            ContentAddress::Text(hash) => {
                let kind = with_references("text", &refs, false);
                Ok(make_store_path(&kind, &hash.base16(), store_dir, name))
            }
            ContentAddress::Fixed { recursive, hash } => {
                let self_reference = refs.contains(&own);
                refs.retain(|r| *r != own);
                if *recursive && hash.algo == HashAlgo::Sha256 {
                    let kind = with_references("source", &refs, self_reference);
                    return Ok(make_store_path(&kind, &hash.base16(), store_dir, name));
                }
                // Newer Nix refuses any reference here, its own included (older Nix
                // asserted on others): such a narinfo breaks the client either way.
                if self_reference || !refs.is_empty() {
                    return Err(ContentAddressError::References);
                }
                let method = if *recursive { "r:" } else { "" };
                let inner = sha256(&format!("fixed:out:{method}{}:", hash.base16()));
                let inner = format!("sha256:{}", hex::encode(inner));
                Ok(make_store_path("output:out", &inner, store_dir, name))
            }
        }
    }
}

/// Nix's `makeType`: the type, then `:<full path>` per reference, then `:self`.
fn with_references(kind: &str, refs: &[String], self_reference: bool) -> String {
    let mut out = kind.to_owned();
    for r in refs {
        out += ":";
        out += r;
    }
    if self_reference {
        out += ":self";
    }
    out
}

/// Nix's `makeStorePath`: SHA-256 of `<type>:<hash>:<store dir>:<name>`, folded to 20
/// bytes (`compressHash`).
fn make_store_path(kind: &str, hash: &str, store_dir: &str, name: &str) -> StorePathHash {
    let digest = sha256(&format!("{kind}:{hash}:{store_dir}:{name}"));
    let mut folded = [0u8; 20];
    for (i, byte) in digest.iter().enumerate() {
        folded[i % 20] ^= byte;
    }
    StorePathHash::from_bytes(folded)
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256Hasher::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "/nix/store";

    fn path(base: &str) -> StorePathBaseName {
        base.parse().unwrap()
    }

    #[test]
    fn parses_every_form_nix_writes_and_refuses_the_rest() {
        let nix32 = "1w3pjl8f4jzrmlz8a4d8bix6hzbi0i3dhjs3l005mhfcb6kpj1x8";
        assert!(format!("fixed:r:sha256:{nix32}")
            .parse::<ContentAddress>()
            .is_ok());
        assert!(format!("fixed:sha256:{nix32}")
            .parse::<ContentAddress>()
            .is_ok());
        assert!(format!("text:sha256:{nix32}")
            .parse::<ContentAddress>()
            .is_ok());
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(format!("fixed:sha256:{hex}")
            .parse::<ContentAddress>()
            .is_ok());
        let b64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        assert!(format!("fixed:r:sha256:{b64}")
            .parse::<ContentAddress>()
            .is_ok());
        assert!(format!("fixed:sha1:{}", "a".repeat(40))
            .parse::<ContentAddress>()
            .is_ok());
        for bad in [
            "x".to_owned(),
            "fixed".to_owned(),
            format!("fixed:sha256:{}", &nix32[1..]),
            format!("fixed:sha3:{nix32}"),
            format!("text:sha1:{}", "a".repeat(40)),
            format!("source:sha256:{nix32}"),
            format!("fixed:r:sha256:{}", "e".repeat(52)),
        ] {
            assert!(bad.parse::<ContentAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn flat_fixed_hashes_cannot_have_references() {
        let ca: ContentAddress = format!("fixed:sha256:{}", "0".repeat(52)).parse().unwrap();
        let me = path("n53himg5iqnraglx3h032wj3fqmhnnr3-x");
        let other = path("5bns4aqv0b555a4vmqnxaj6gq2zxvy1s-y");
        assert_eq!(
            ca.store_path_hash(&me, &[other], STORE),
            Err(ContentAddressError::References)
        );
        // Not even one to itself: newer Nix throws on it.
        assert_eq!(
            ca.store_path_hash(&me, std::slice::from_ref(&me), STORE),
            Err(ContentAddressError::References)
        );
        assert!(ca.store_path_hash(&me, &[], STORE).is_ok());
    }
}
