//! Nix's base-32 encoding ("nix32").
//!
//! Not RFC 4648: the alphabet drops `e o t u` (to avoid accidental words), and the
//! bytes are read from the *end*, least significant bits first. See
//! `src/libutil/hash.cc` (`printHash32` / `parseHash32`) in NixOS/nix.

use thiserror::Error;

/// The 32 digits, in value order.
const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nix32Error {
    #[error("nix32 text has length {actual}, expected {expected}")]
    Length { expected: usize, actual: usize },
    #[error("invalid nix32 character {0:?}")]
    Character(char),
    #[error("nix32 text has bits beyond the decoded length")]
    Overflow,
}

/// Number of nix32 characters for `byte_len` bytes.
pub const fn encoded_len(byte_len: usize) -> usize {
    if byte_len == 0 {
        0
    } else {
        (byte_len * 8 - 1) / 5 + 1
    }
}

fn digit_value(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() {
            // j may be 0, where nothing spills over from the next byte.
            ((bytes[i + 1] as u16) << (8 - j)) as u8
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes exactly `N` bytes; the text must be exactly `encoded_len(N)` digits.
pub fn decode<const N: usize>(text: &str) -> Result<[u8; N], Nix32Error> {
    let mut out = [0u8; N];
    decode_into(text, &mut out)?;
    Ok(out)
}

/// Decodes into all of `out`; one function for every length keeps the worker small.
pub fn decode_into(text: &str, out: &mut [u8]) -> Result<(), Nix32Error> {
    let text = text.as_bytes();
    let expected = encoded_len(out.len());
    if text.len() != expected {
        return Err(Nix32Error::Length {
            expected,
            actual: text.len(),
        });
    }
    out.fill(0);
    for (k, &c) in text.iter().enumerate() {
        let digit = digit_value(c).ok_or(Nix32Error::Character(c as char))?;
        let n = expected - 1 - k;
        let bit = n * 5;
        let (i, j) = (bit / 8, bit % 8);
        out[i] |= digit << j;
        let carry = ((digit as u16) >> (8 - j)) as u8;
        if i + 1 < out.len() {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Nix32Error::Overflow);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // sha256("") in nix32, as printed by `nix hash file --type sha256 --base32 /dev/null`.
    const EMPTY_SHA256_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_SHA256_HEX: &str =
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_sha256_vector() {
        let bytes: [u8; 32] = decode(EMPTY_SHA256_NIX32).unwrap();
        assert_eq!(hex(&bytes), EMPTY_SHA256_HEX);
        assert_eq!(encode(&bytes), EMPTY_SHA256_NIX32);
    }

    #[test]
    fn lengths() {
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(1), 2);
        assert_eq!(encoded_len(0), 0);
    }

    #[test]
    fn round_trips_every_byte_pattern() {
        for seed in 0u8..=255 {
            let bytes: [u8; 20] =
                core::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7));
            let text = encode(&bytes);
            assert_eq!(text.len(), 32);
            assert_eq!(decode::<20>(&text).unwrap(), bytes);
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode::<20>("abc"),
            Err(Nix32Error::Length {
                expected: 32,
                actual: 3
            })
        );
        // 'e', 'o', 'u', 't' and upper case are not digits.
        for bad in ['e', 'o', 'u', 't', 'A', '/', '%'] {
            let text = format!("{bad}{}", "0".repeat(31));
            assert_eq!(decode::<20>(&text), Err(Nix32Error::Character(bad)));
        }
        // Multi-byte UTF-8 never decodes (and never panics).
        assert!(decode::<20>(&"é".repeat(16)).is_err());
        // 52 digits carry 260 bits; a 32-byte hash has 256, so the top digit is < 16.
        let overflow = format!("z{}", "0".repeat(51));
        assert_eq!(decode::<32>(&overflow), Err(Nix32Error::Overflow));
    }
}
