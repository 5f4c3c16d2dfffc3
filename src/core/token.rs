//! Upload tokens: what they are, how they are encoded, how the worker checks them.
//!
//! A token is a bearer credential minted *offline* by the cache's admin with an ed25519
//! key in Nix's key-file format (`nixflare keygen` makes it, like a narinfo signing
//! key; use a different key for each job). The worker holds only the public halves, in
//! the `TOKEN_PUBLIC_KEYS` variable (several, so a key can be rotated), so a leaked
//! worker configuration mints nothing.
//!
//! # Wire format, version 1
//!
//! `nixflare1_` followed by unpadded base64url of `payload ‖ signature`:
//!
//! | bytes | field |
//! |---|---|
//! | 1 | version, `1` |
//! | 16 | token id (random; what a revocation names) |
//! | 8 | expiry, Unix seconds, big-endian |
//! | 1 | permission bits: read 1, write 2, overwrite 4, delete 8, revoke 16 |
//! | 1 | subject length `n`, 1..=64 |
//! | n | subject, printable ASCII (who the token is for; shown in logs) |
//! | 64 | ed25519 signature over `"nixflare-token-v1\0" ‖ payload` |
//!
//! The domain prefix keeps a token signature from ever being valid as a narinfo
//! signature, or the reverse. The whole token is URL- and netrc-safe.
//!
//! # Using a token
//!
//! `Authorization: Bearer <token>`, or HTTP Basic with the token as the password and
//! any user name. Basic is what Nix sends from a netrc file:
//!
//! ```text
//! machine cache.example.org login nixflare password nixflare1_AQ…
//! ```

use core::fmt;

use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE_NO_PAD as BASE64URL};
use base64::Engine as _;
use thiserror::Error;

use crate::core::nix::keys::{PublicKey, SecretKey};

const PREFIX: &str = "nixflare1_";
const VERSION: u8 = 1;
const DOMAIN: &[u8] = b"nixflare-token-v1\0";
const MAX_SUBJECT: usize = 64;
/// Fixed part of the payload: version, id, expiry, permissions, subject length.
const FIXED_LEN: usize = 1 + 16 + 8 + 1 + 1;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    #[error("token does not start with {PREFIX:?}")]
    Prefix,
    #[error("token is not valid base64url")]
    Base64,
    #[error("token is truncated or has trailing bytes")]
    Length,
    #[error("token version {0} is not supported")]
    Version(u8),
    #[error("token subject must be 1 to {MAX_SUBJECT} printable ASCII characters")]
    Subject,
    #[error("token has unknown permission bits")]
    Permissions,
    #[error("token signature is not valid for any of the cache's token keys")]
    Signature,
    #[error("token expired")]
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown permission {0:?} (read, write, overwrite, delete, revoke, pin, metrics)")]
pub struct UnknownPermission(pub String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a token id is 32 lowercase hex digits")]
pub struct BadTokenId;

/// A permission set.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Permissions(u8);

impl Permissions {
    /// No permission: what any valid token has (e.g. to ask the worker who it is).
    pub const NONE: Permissions = Permissions(0);
    pub const READ: Permissions = Permissions(1);
    pub const WRITE: Permissions = Permissions(2);
    /// Replace a narinfo that already exists with a different one.
    pub const OVERWRITE: Permissions = Permissions(4);
    pub const DELETE: Permissions = Permissions(8);
    /// Revoke other tokens.
    pub const REVOKE: Permissions = Permissions(16);
    /// Add, move and remove GC pins (`nixflare pin`).
    pub const PIN: Permissions = Permissions(32);
    /// Scrape `_nixflare/metrics` (what the index holds and does, as numbers).
    pub const METRICS: Permissions = Permissions(64);

    const NAMES: [(Permissions, &'static str); 7] = [
        (Self::READ, "read"),
        (Self::WRITE, "write"),
        (Self::OVERWRITE, "overwrite"),
        (Self::DELETE, "delete"),
        (Self::REVOKE, "revoke"),
        (Self::PIN, "pin"),
        (Self::METRICS, "metrics"),
    ];
    const ALL_BITS: u8 = 127;

    pub fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// Parses a comma-separated list such as `read,write` (what `Display` writes).
    pub fn parse_list(text: &str) -> Result<Permissions, UnknownPermission> {
        text.split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .try_fold(Permissions::default(), |acc, name| {
                Self::NAMES
                    .iter()
                    .find(|(_, n)| *n == name)
                    .map(|(p, _)| acc.union(*p))
                    .ok_or_else(|| UnknownPermission(name.to_owned()))
            })
    }
}

impl fmt::Display for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Self::NAMES.iter().filter(|(p, _)| self.contains(*p));
        if let Some((_, first)) = names.next() {
            f.write_str(first)?;
        }
        names.try_for_each(|(_, name)| write!(f, ",{name}"))
    }
}

impl core::str::FromStr for Permissions {
    type Err = UnknownPermission;
    fn from_str(s: &str) -> Result<Self, UnknownPermission> {
        Self::parse_list(s)
    }
}

crate::core::serde_via_text!(Permissions);

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Permissions({self})")
    }
}

/// The 16-byte id a revocation names; shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub [u8; 16]);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = [0u8; 32];
        hex::encode_to_slice(self.0, &mut hex).map_err(|_| fmt::Error)?;
        f.write_str(core::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

impl core::str::FromStr for TokenId {
    type Err = BadTokenId;
    fn from_str(s: &str) -> Result<Self, BadTokenId> {
        crate::core::lower_hex::decode(s)
            .map(TokenId)
            .ok_or(BadTokenId)
    }
}

crate::core::serde_via_text!(TokenId);

/// What a token says. Not secret; the token text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub id: TokenId,
    pub subject: String,
    pub permissions: Permissions,
    /// Unix seconds after which the token is refused.
    pub expires_at: u64,
}

fn valid_subject(subject: &str) -> bool {
    (1..=MAX_SUBJECT).contains(&subject.len()) && subject.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl Claims {
    fn payload(&self) -> Result<Vec<u8>, TokenError> {
        if !valid_subject(&self.subject) {
            return Err(TokenError::Subject);
        }
        let mut payload = Vec::with_capacity(FIXED_LEN + self.subject.len());
        payload.push(VERSION);
        payload.extend_from_slice(&self.id.0);
        payload.extend_from_slice(&self.expires_at.to_be_bytes());
        payload.push(self.permissions.0);
        payload.push(self.subject.len() as u8);
        payload.extend_from_slice(self.subject.as_bytes());
        Ok(payload)
    }

    /// Signs the claims into token text. Runs on the admin's machine.
    pub fn mint(&self, key: &SecretKey) -> Result<String, TokenError> {
        let mut bytes = self.payload()?;
        let signature = key.sign_raw(&[DOMAIN, &bytes].concat());
        bytes.extend_from_slice(&signature);
        Ok(format!("{PREFIX}{}", BASE64URL.encode(bytes)))
    }
}

/// Decodes a token without checking its signature or expiry: for `nixflare token
/// inspect`, never for access decisions.
pub fn decode_unverified(token: &str) -> Result<Claims, TokenError> {
    decode(token).map(|(claims, _, _)| claims)
}

fn decode(token: &str) -> Result<(Claims, Vec<u8>, [u8; 64]), TokenError> {
    let body = token
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(TokenError::Prefix)?;
    let bytes = BASE64URL.decode(body).map_err(|_| TokenError::Base64)?;
    if bytes.len() < FIXED_LEN + 64 {
        return Err(TokenError::Length);
    }
    if bytes[0] != VERSION {
        return Err(TokenError::Version(bytes[0]));
    }
    let subject_len = bytes[FIXED_LEN - 1] as usize;
    let payload_len = FIXED_LEN + subject_len;
    if bytes.len() != payload_len + 64 {
        return Err(TokenError::Length);
    }
    let (payload, signature) = bytes.split_at(payload_len);
    let mut id = [0u8; 16];
    id.copy_from_slice(&payload[1..17]);
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&payload[17..25]);
    let permissions = payload[25];
    if permissions & !Permissions::ALL_BITS != 0 {
        return Err(TokenError::Permissions);
    }
    let subject = core::str::from_utf8(&payload[FIXED_LEN..])
        .ok()
        .filter(|s| valid_subject(s))
        .ok_or(TokenError::Subject)?;
    let mut sig = [0u8; 64];
    sig.copy_from_slice(signature);
    let claims = Claims {
        id: TokenId(id),
        subject: subject.to_owned(),
        permissions: Permissions(permissions),
        expires_at: u64::from_be_bytes(expiry),
    };
    Ok((claims, payload.to_vec(), sig))
}

/// Claims whose token passed [`verify`]: signed by a trusted key and unexpired. Only
/// `verify` makes one, so a value of this type is proof of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken(Claims);

impl core::ops::Deref for VerifiedToken {
    type Target = Claims;
    fn deref(&self) -> &Claims {
        &self.0
    }
}

/// Checks signature (against any of `keys`) and expiry; revocation is the caller's
/// job (it needs storage).
pub fn verify(token: &str, keys: &[PublicKey], now_unix: u64) -> Result<VerifiedToken, TokenError> {
    let (claims, payload, signature) = decode(token)?;
    let message = [DOMAIN, &payload].concat();
    if !keys
        .iter()
        .any(|key| key.verifies_raw(&message, &signature))
    {
        return Err(TokenError::Signature);
    }
    if now_unix >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(VerifiedToken(claims))
}

/// The token in an `Authorization` header: `Bearer <token>`, or Basic with the token
/// as password (any user name), which is what Nix sends from netrc.
pub fn from_authorization(header: &str) -> Option<String> {
    let (scheme, value) = header.trim().split_once(' ')?;
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(value.to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = BASE64.decode(value).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_user, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Nix-made test key of `nix::keys`; a token key has the same format.
    const ADMIN: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";

    fn admin() -> SecretKey {
        ADMIN.parse().unwrap()
    }

    fn claims() -> Claims {
        Claims {
            id: TokenId([7; 16]),
            subject: "ci@example".into(),
            permissions: Permissions::READ.union(Permissions::WRITE),
            expires_at: 2_000_000_000,
        }
    }

    #[test]
    fn mint_then_verify() {
        let token = claims().mint(&admin()).unwrap();
        assert!(token.starts_with("nixflare1_"));
        assert!(token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
        let keys = [admin().public_key()];
        assert_eq!(
            verify(&token, &keys, 1_900_000_000).map(|v| v.0),
            Ok(claims())
        );
        assert_eq!(decode_unverified(&token), Ok(claims()));
    }

    #[test]
    fn refusals() {
        let token = claims().mint(&admin()).unwrap();
        let keys = [admin().public_key()];
        assert_eq!(
            verify(&token, &keys, 2_000_000_000),
            Err(TokenError::Expired)
        );
        let other = SecretKey::from_seed("other", [9; 32]).unwrap();
        assert_eq!(
            verify(&token, &[other.public_key()], 0),
            Err(TokenError::Signature)
        );
        assert_eq!(verify(&token, &[], 0), Err(TokenError::Signature));

        // Any changed byte breaks the signature (or the framing).
        let mut bytes = BASE64URL.decode(&token[PREFIX.len()..]).unwrap();
        bytes[25] |= Permissions::DELETE.0; // grant itself delete
        let forged = format!("{PREFIX}{}", BASE64URL.encode(&bytes));
        assert_eq!(verify(&forged, &keys, 0), Err(TokenError::Signature));

        assert_eq!(verify("Bearer x", &keys, 0), Err(TokenError::Prefix));
        assert_eq!(verify("nixflare1_!!", &keys, 0), Err(TokenError::Base64));
        assert_eq!(verify("nixflare1_AQ", &keys, 0), Err(TokenError::Length));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert_eq!(
            verify(&format!("{PREFIX}{}", BASE64URL.encode(&v2)), &keys, 0),
            Err(TokenError::Version(2))
        );
        let mut extra = bytes;
        extra.push(0);
        assert_eq!(
            verify(&format!("{PREFIX}{}", BASE64URL.encode(&extra)), &keys, 0),
            Err(TokenError::Length)
        );
    }

    #[test]
    fn a_narinfo_signature_is_not_a_token_signature() {
        let c = claims();
        let payload = c.payload().unwrap();
        // Signed without the domain prefix, as a narinfo fingerprint would be.
        let sig = admin().sign_raw(&payload);
        let token = format!(
            "{PREFIX}{}",
            BASE64URL.encode([payload, sig.to_vec()].concat())
        );
        assert_eq!(
            verify(&token, &[admin().public_key()], 0),
            Err(TokenError::Signature)
        );
    }

    #[test]
    fn subjects() {
        let mut c = claims();
        c.subject = String::new();
        assert_eq!(c.mint(&admin()), Err(TokenError::Subject));
        c.subject = "x".repeat(65);
        assert_eq!(c.mint(&admin()), Err(TokenError::Subject));
        c.subject = "new\nline".into();
        assert_eq!(c.mint(&admin()), Err(TokenError::Subject));
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(from_authorization("Bearer abc").as_deref(), Some("abc"));
        assert_eq!(from_authorization("bearer  abc ").as_deref(), Some("abc"));
        // "nix:tok" as sent by curl from netrc.
        let basic = format!("Basic {}", BASE64.encode("nix:nixflare1_xyz"));
        assert_eq!(from_authorization(&basic).as_deref(), Some("nixflare1_xyz"));
        let colon_in_password = format!("Basic {}", BASE64.encode("u:a:b"));
        assert_eq!(
            from_authorization(&colon_in_password).as_deref(),
            Some("a:b")
        );
        assert_eq!(from_authorization("Basic !!!"), None);
        assert_eq!(from_authorization("Digest x"), None);
        assert_eq!(from_authorization("Bearer"), None);
    }

    #[test]
    fn permission_lists() {
        let p = Permissions::parse_list("read, write,delete").unwrap();
        assert!(p.contains(Permissions::WRITE) && p.contains(Permissions::DELETE));
        assert!(!p.contains(Permissions::OVERWRITE));
        assert_eq!(p.to_string(), "read,write,delete");
        assert_eq!(
            Permissions::parse_list("read,root"),
            Err(UnknownPermission("root".into()))
        );
    }

    #[test]
    fn token_ids() {
        let id: TokenId = "07070707070707070707070707070707".parse().unwrap();
        assert_eq!(id, TokenId([7; 16]));
        assert_eq!(id.to_string(), "07070707070707070707070707070707");
        assert_eq!("0707".parse::<TokenId>(), Err(BadTokenId));
        assert!("0707070707070707070707070707070G"
            .parse::<TokenId>()
            .is_err());
        assert!("+7070707070707070707070707070707"
            .parse::<TokenId>()
            .is_err());
    }
}
