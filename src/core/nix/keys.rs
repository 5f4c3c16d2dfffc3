//! Nix signing keys and narinfo signatures, in Nix's text formats.
//!
//! - secret key: `name:base64(seed[32] ++ public[32])` (`nix key generate-secret`)
//! - public key: `name:base64(public[32])` (`nix key convert-secret-to-public`)
//! - signature:  `name:base64(ed25519 signature[64])` (a narinfo `Sig:` value)
//!
//! See NixOS/nix `src/libutil/signature/local-keys.cc`. ed25519-compact's 64-byte
//! `SecretKey` has exactly Nix's layout, so no conversion is needed.
//!
//! Secret keys never print by accident: `Debug` is redacted, errors never carry key
//! text, and the only way out is [`SecretKey::to_nix_text`].

use core::fmt;
use core::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{kind} has no ':' between name and key")]
    MissingColon { kind: &'static str },
    #[error("{kind} has an empty name")]
    EmptyName { kind: &'static str },
    #[error("{kind} is not valid base64")]
    Base64 { kind: &'static str },
    #[error("{kind} decodes to {actual} bytes, expected {expected}")]
    Length {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("secret key's public half does not match its seed")]
    Inconsistent,
    #[error("key name must be non-empty, without ':' or white space")]
    Name,
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes.
fn split_named<const N: usize>(
    kind: &'static str,
    text: &str,
) -> Result<(String, [u8; N]), KeyError> {
    let (name, data) = text
        .split_once(':')
        .ok_or(KeyError::MissingColon { kind })?;
    if name.is_empty() {
        return Err(KeyError::EmptyName { kind });
    }
    let bytes = BASE64
        .decode(data.trim_end())
        .map_err(|_| KeyError::Base64 { kind })?;
    let array: [u8; N] = bytes.as_slice().try_into().map_err(|_| KeyError::Length {
        kind,
        expected: N,
        actual: bytes.len(),
    })?;
    Ok((name.to_owned(), array))
}

/// A public key a cache trusts: `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_compact::PublicKey,
    /// `name:base64`, kept from parsing (strict base64 has one spelling per key), so
    /// the worker, which only ever parses keys, needs no base64 encoder.
    text: String,
}

impl PublicKey {
    fn new(name: String, key: ed25519_compact::PublicKey) -> Self {
        let text = format!("{name}:{}", BASE64.encode(*key));
        Self { name, key, text }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when both are the same ed25519 key, whatever their names.
    pub fn same_key(&self, other: &PublicKey) -> bool {
        self.key == other.key
    }

    /// True when the 64 signature bytes verify over `message` (name not involved: for
    /// signatures that carry no key name, such as upload tokens).
    pub fn verifies_raw(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        self.key
            .verify(message, &ed25519_compact::Signature::new(*signature))
            .is_ok()
    }

    /// True when `signature` is by this key (same name) and verifies over `message`.
    pub fn verifies(&self, message: &[u8], signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify(message, &ed25519_compact::Signature::new(signature.bytes))
                .is_ok()
    }
}

/// Most signatures a narinfo or realisation may carry. Nix adds one per signing key;
/// a handful is plenty.
pub const MAX_SIGNATURES: usize = 16;

/// True when one of `signatures` verifies over `message` under one of `keys`. Only the
/// first signature naming each trusted key is tried, so a body costs at most one ed25519
/// verification per trusted key however many signatures it carries. (Nix tries them
/// all; a cache whose key was rotated under the same name should rotate the name too.)
pub fn any_verifies(keys: &[PublicKey], signatures: &[Signature], message: &[u8]) -> bool {
    keys.iter().any(|key| {
        signatures
            .iter()
            .find(|sig| sig.key_name == key.name)
            .is_some_and(|sig| key.verifies(message, sig))
    })
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_named::<32>("public key", s)?;
        // What split_named decoded: the name, a ':', and canonical base64.
        let text = s.trim_end().to_owned();
        Ok(Self {
            name,
            key: ed25519_compact::PublicKey::new(bytes),
            text,
        })
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

crate::core::serde_via_text!(PublicKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A signing key. Lives only in client-side tooling, never in the worker.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_compact::SecretKey,
}

impl SecretKey {
    /// The key whose ed25519 seed is `seed`. Key generation (`nixflare keygen`) supplies
    /// 32 random bytes; the core itself never needs entropy.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        // Nix splits key text at the first ':', and key names sit in nix.conf lists.
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
            return Err(KeyError::Name);
        }
        Ok(Self {
            name: name.to_owned(),
            key: ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(seed)).sk,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::new(self.name.clone(), self.key.public_key())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.sign_raw(message),
        }
    }

    /// The bare 64-byte ed25519 signature.
    pub fn sign_raw(&self, message: &[u8]) -> [u8; 64] {
        *self.key.sign(message, None)
    }

    /// The secret in Nix's key-file format. Named explicitly so that it is never
    /// written by accident (there is no `Display`).
    pub fn to_nix_text(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(*self.key))
    }
}

impl FromStr for SecretKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = split_named::<64>("secret key", s)?;
        let key = ed25519_compact::SecretKey::new(bytes);
        // The file stores the public half too; a corrupt one would sign with a key
        // nobody trusts, so check it against the seed.
        let from_seed =
            ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(*key.seed()));
        if from_seed.pk != key.public_key() {
            return Err(KeyError::Inconsistent);
        }
        Ok(Self { name, key })
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

/// A narinfo `Sig:` value.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    key_name: String,
    bytes: [u8; 64],
}

impl Signature {
    pub fn key_name(&self) -> &str {
        &self.key_name
    }
}

impl FromStr for Signature {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key_name, bytes) = split_named::<64>("signature", s)?;
        Ok(Self { key_name, bytes })
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `nix key generate-secret --key-name test-1` and
    // `nix key convert-secret-to-public` (Nix 2.8), for tests only.
    const SECRET: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";
    const PUBLIC: &str = "test-1:lZK8TvdFo6yEOp1D7yQkeLwxrshDPF1iwDJ6pNX1xHE=";

    #[test]
    fn nix_made_key_pair_matches() {
        let secret: SecretKey = SECRET.parse().unwrap();
        assert_eq!(secret.public_key().to_string(), PUBLIC);
        assert_eq!(secret.to_nix_text(), SECRET);
        let public: PublicKey = PUBLIC.parse().unwrap();
        assert_eq!(public, secret.public_key());
        assert_eq!(
            format!("{PUBLIC}\n")
                .parse::<PublicKey>()
                .unwrap()
                .to_string(),
            PUBLIC
        );
        // Base64 with the same bytes but other trailing bits is not a second spelling.
        assert!(PUBLIC.replace("E=", "F=").parse::<PublicKey>().is_err());
    }

    #[test]
    fn sign_and_verify() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let public = secret.public_key();
        let sig = secret.sign(b"1;/nix/store/x;sha256:0;1;");
        assert!(public.verifies(b"1;/nix/store/x;sha256:0;1;", &sig));
        assert!(!public.verifies(b"1;/nix/store/y;sha256:0;1;", &sig));
        let reparsed: Signature = sig.to_string().parse().unwrap();
        assert_eq!(reparsed, sig);
        // Same bytes under another key name do not count.
        let renamed: Signature = sig
            .to_string()
            .replacen("test-1", "test-2", 1)
            .parse()
            .unwrap();
        assert!(!public.verifies(b"1;/nix/store/x;sha256:0;1;", &renamed));
    }

    #[test]
    fn keys_from_a_seed_work() {
        let secret = SecretKey::from_seed("gen-1", [7; 32]).unwrap();
        let reparsed: SecretKey = secret.to_nix_text().parse().unwrap();
        assert_eq!(reparsed.public_key(), secret.public_key());
        // Nix's layout: the seed, then the public half.
        let nix: SecretKey = SECRET.parse().unwrap();
        let seed: [u8; 32] = nix.key.seed().as_ref().try_into().unwrap();
        assert_eq!(
            SecretKey::from_seed("test-1", seed).unwrap().to_nix_text(),
            SECRET
        );
        for bad in ["", "a:b", "a b", "a\tb"] {
            assert_eq!(
                SecretKey::from_seed(bad, [7; 32]).err(),
                Some(KeyError::Name),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn one_verification_per_trusted_key_name() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let good = secret.sign(b"m");
        let stale = SecretKey::from_seed("test-1", [3; 32]).unwrap().sign(b"m");
        let keys = [secret.public_key()];
        assert!(any_verifies(&keys, std::slice::from_ref(&good), b"m"));
        assert!(!any_verifies(&keys, std::slice::from_ref(&good), b"other"));
        // Only the first signature under a trusted name counts.
        assert!(!any_verifies(&keys, &[stale.clone(), good.clone()], b"m"));
        assert!(any_verifies(&keys, &[good, stale], b"m"));
        assert!(!any_verifies(&[], &[], b"m"));
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let debug = format!("{secret:?}");
        assert_eq!(debug, "SecretKey(test-1:<redacted>)");
        // A corrupt key's error names the problem, not the key.
        let corrupt = SECRET.replace('X', "Y");
        let err = corrupt.parse::<SecretKey>().unwrap_err().to_string();
        assert!(!err.contains("tXPUe") && !err.contains("PUeHf"), "{err}");
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(
            "nocolon".parse::<PublicKey>(),
            Err(KeyError::MissingColon { kind: "public key" })
        );
        assert_eq!(
            ":Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=".parse::<PublicKey>(),
            Err(KeyError::EmptyName { kind: "public key" })
        );
        assert!(matches!(
            "k:!!!".parse::<PublicKey>(),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            "k:AAAA".parse::<PublicKey>(),
            Err(KeyError::Length {
                expected: 32,
                actual: 3,
                ..
            })
        ));
        // A public key is not a secret key.
        assert!(PUBLIC.parse::<SecretKey>().is_err());
    }
}
