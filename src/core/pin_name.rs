//! Pin names: what `nixflare pin add NAME` moves from one path to the next.

use core::fmt;
use core::str::FromStr;

use thiserror::Error;

/// The name of a pin: what `nixflare pin add NAME` moves from one path to the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PinName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a pin name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")]
pub struct BadPinName;

impl PinName {
    pub fn parse(text: &str) -> Option<PinName> {
        let valid = (1..=64).contains(&text.len())
            && !text.starts_with('.')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        valid.then(|| PinName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PinName {
    type Err = BadPinName;
    fn from_str(s: &str) -> Result<Self, BadPinName> {
        PinName::parse(s).ok_or(BadPinName)
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::core::serde_via_text!(PinName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_plain() {
        assert!(PinName::parse("release-24.05_x").is_some());
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(PinName::parse(bad).is_none(), "{bad:?}");
        }
    }
}
