//! Store path pieces: the 20-byte hash part and the `<hash>-<name>` base name.
//!
//! Rules from NixOS/nix `src/libstore/path.cc` (`checkName`): the hash part is 32
//! nix32 digits; a name is 1..=211 characters of `A-Za-z0-9+-._?=` and does not
//! start with a dot.

use core::fmt;
use core::str::FromStr;

use thiserror::Error;

use super::nix32;

/// Longest store path name Nix accepts.
const MAX_NAME_LEN: usize = 211;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("invalid store path hash: {0}")]
    Hash(#[from] nix32::Nix32Error),
    #[error("store path base name has no '-' after the hash")]
    MissingDash,
    #[error("store path name is empty")]
    EmptyName,
    #[error("store path name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("store path name starts with '.'")]
    LeadingDot,
    #[error("invalid character {0:?} in store path name")]
    NameCharacter(char),
}

/// The hash part of a store path (`/nix/store/<this>-name`): what `.narinfo` files
/// are named after.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathHash([u8; 20]);

impl StorePathHash {
    const TEXT_LEN: usize = nix32::encoded_len(20);

    /// The hash a store path computation produced (`content_address`).
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }
}

impl FromStr for StorePathHash {
    type Err = nix32::Nix32Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        nix32::decode(s).map(Self)
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nix32::encode(&self.0))
    }
}

crate::core::serde_via_text!(StorePathHash);

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({self})")
    }
}

/// Checks a store path name (also used for derivation output names, which follow
/// the same character rules).
pub fn check_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong);
    }
    if name.starts_with('.') {
        return Err(StorePathError::LeadingDot);
    }
    match name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c)))
    {
        Some(c) => Err(StorePathError::NameCharacter(c)),
        None => Ok(()),
    }
}

/// A store path's last component, `<hash>-<name>`, e.g. `7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathBaseName {
    hash: StorePathHash,
    name: String,
}

impl StorePathBaseName {
    pub fn hash(&self) -> &StorePathHash {
        &self.hash
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for StorePathBaseName {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hash_text = s
            .get(..StorePathHash::TEXT_LEN)
            .ok_or(nix32::Nix32Error::Length {
                expected: StorePathHash::TEXT_LEN,
                actual: s.len(),
            })?;
        let hash = hash_text.parse()?;
        let name = s[StorePathHash::TEXT_LEN..]
            .strip_prefix('-')
            .ok_or(StorePathError::MissingDash)?;
        check_name(name)?;
        Ok(Self {
            hash,
            name: name.to_owned(),
        })
    }
}

crate::core::serde_via_text!(StorePathBaseName);

impl fmt::Display for StorePathBaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePathBaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathBaseName({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm-hello-2.12";

    #[test]
    fn base_name_round_trips() {
        let parsed: StorePathBaseName = HELLO.parse().unwrap();
        assert_eq!(parsed.name(), "hello-2.12");
        assert_eq!(
            parsed.hash().to_string(),
            "7rjj86a15146cq1d3qy068lml7n8ykzm"
        );
        assert_eq!(parsed.to_string(), HELLO);
    }

    #[test]
    fn names_nix_accepts() {
        for name in ["a", "foo.drv", "x+y-1.0_rc?=", &"n".repeat(MAX_NAME_LEN)] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects() {
        let hash = "7rjj86a15146cq1d3qy068lml7n8ykzm";
        let cases: &[(&str, StorePathError)] = &[
            (hash, StorePathError::MissingDash),
            (&format!("{hash}-"), StorePathError::EmptyName),
            (&format!("{hash}_x"), StorePathError::MissingDash),
            (&format!("{hash}-.hidden"), StorePathError::LeadingDot),
            (&format!("{hash}-a/b"), StorePathError::NameCharacter('/')),
            (&format!("{hash}-a%2fb"), StorePathError::NameCharacter('%')),
            (&format!("{hash}-a b"), StorePathError::NameCharacter(' ')),
            (
                &format!("{hash}-{}", "n".repeat(212)),
                StorePathError::NameTooLong,
            ),
        ];
        for (text, err) in cases {
            assert_eq!(
                text.parse::<StorePathBaseName>().as_ref(),
                Err(err),
                "{text}"
            );
        }
        assert!("short-x".parse::<StorePathBaseName>().is_err());
        assert!("7rjj86a15146cq1d3qy068lml7n8ykzé-x"
            .parse::<StorePathBaseName>()
            .is_err());
        // Upper case is not nix32.
        assert!("7RJJ86A15146CQ1D3QY068LML7N8YKZM-x"
            .parse::<StorePathBaseName>()
            .is_err());
    }
}
