//! Lowercase hexadecimal, the one spelling used where hex names things (token ids,
//! realisation ids): Nix prints lowercase, and one spelling keeps storage keys canonical.

/// Decodes exactly `N` bytes; `None` for uppercase digits, a wrong length or a non-hex
/// character.
pub fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

/// Encodes as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowercase_only() {
        assert_eq!(super::decode::<2>("0aff"), Some([0x0a, 0xff]));
        assert_eq!(super::decode::<2>("0AFF"), None);
        assert_eq!(super::decode::<2>("0af"), None);
        assert_eq!(super::decode::<2>("+aff"), None);
        assert_eq!(super::encode(&[0x0a, 0xff]), "0aff");
    }
}
