//! SHA-256 hashes as narinfos spell them.
//!
//! Nix writes `sha256:<nix32>`, but also accepts base16 (`sha256:<hex>`) and SRI
//! (`sha256-<base64>`) on input (`Hash::parseAnyPrefixed` in libutil/hash.cc); other
//! producers use those. Display is always the canonical `sha256:<nix32>`, which is
//! what a fingerprint signs.

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use thiserror::Error;

use super::nix32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("hash {0:?} is not sha256 (sha256:<nix32|hex> or sha256-<base64>)")]
    Algorithm(String),
    #[error("sha256 hash has a malformed digest")]
    Digest,
}

/// A SHA-256 digest: what names a NAR file (FileHash), what a narinfo's NarHash is,
/// what a realisation id holds. One type, whatever it hashes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The bare nix32 digest (52 characters), as in a NAR file name.
    pub fn nix32(&self) -> String {
        nix32::encode(&self.0)
    }

    /// The bare lowercase hex digest (64 characters), as in a realisation id.
    pub fn lower_hex(&self) -> String {
        crate::core::lower_hex::encode(&self.0)
    }

    pub fn from_lower_hex(text: &str) -> Option<Self> {
        crate::core::lower_hex::decode(text).map(Sha256)
    }
}

// JSON and spool records carry the canonical text, `sha256:<nix32>`.
crate::core::serde_via_text!(Sha256);

impl FromStr for Sha256 {
    type Err = HashError;
    fn from_str(s: &str) -> Result<Self, HashError> {
        if let Some(b64) = s.strip_prefix("sha256-") {
            let bytes = BASE64.decode(b64).map_err(|_| HashError::Digest)?;
            return bytes.try_into().map(Sha256).map_err(|_| HashError::Digest);
        }
        let digest = s
            .strip_prefix("sha256:")
            .ok_or_else(|| HashError::Algorithm(s.chars().take(16).collect()))?;
        match digest.len() {
            52 => nix32::decode(digest)
                .map(Sha256)
                .map_err(|_| HashError::Digest),
            64 => {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(digest, &mut bytes).map_err(|_| HashError::Digest)?;
                Ok(Sha256(bytes))
            }
            _ => Err(HashError::Digest),
        }
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", nix32::encode(&self.0))
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256 of the empty string in the three spellings.
    const NIX32: &str = "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const HEX: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const SRI: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn all_spellings_agree_and_print_as_nix32() {
        let a: Sha256 = NIX32.parse().unwrap();
        assert_eq!(HEX.parse::<Sha256>().unwrap(), a);
        assert_eq!(SRI.parse::<Sha256>().unwrap(), a);
        assert_eq!(a.to_string(), NIX32);
    }

    #[test]
    fn rejects() {
        assert!(matches!(
            "md5:abc".parse::<Sha256>(),
            Err(HashError::Algorithm(_))
        ));
        assert!(matches!(
            "sha512-AAAA".parse::<Sha256>(),
            Err(HashError::Algorithm(_))
        ));
        assert_eq!("sha256:abc".parse::<Sha256>(), Err(HashError::Digest));
        assert_eq!("sha256-AAAA".parse::<Sha256>(), Err(HashError::Digest));
        let bad_hex = format!("sha256:{}", "g".repeat(64));
        assert_eq!(bad_hex.parse::<Sha256>(), Err(HashError::Digest));
        let plus_hex = format!("sha256:+{}", "0".repeat(63));
        assert_eq!(plus_hex.parse::<Sha256>(), Err(HashError::Digest));
        let multibyte = format!("sha256:é{}", "0".repeat(62));
        assert_eq!(multibyte.parse::<Sha256>(), Err(HashError::Digest));
    }
}
