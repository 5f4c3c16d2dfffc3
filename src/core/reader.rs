//! Readers of a private cache (`READ_ACCESS = "token"`): which tokens may read, and what
//! a worker isolate remembers between requests so that an admitted read costs neither an
//! R2 operation nor a signature check.
//!
//! - A token is admitted when it is signed by a token key, unexpired, carries `read`,
//!   and its revocation was looked up (one R2 HEAD) within `REVOCATION_CHECK_SECONDS`.
//!   So a token revoked now stops reading within that interval in every isolate; a
//!   token that was revoked before an isolate first sees it never reads there.
//! - [`ReadTokens`] remembers admitted tokens (and revoked ones: a revocation is for
//!   ever) under the SHA-256 of their text. The lookup compares digests, never the
//!   token text itself, so how long a lookup takes tells a guesser nothing about a
//!   valid token's bytes (finding a text whose digest shares a prefix with a known
//!   digest gives no grip on the text). Tokens that fail a check are not remembered:
//!   they cost a signature check each, as on the write path, and no R2 operation.
//! - At most [`MAX_REMEMBERED`] tokens per isolate (~200 bytes each): past it, stale
//!   entries go, then all of them; forgetting costs only a re-check.
//!
//! Every refusal of a read is decided before storage is touched, so a refused request
//! learns nothing of what the cache holds: the answer depends on the token alone.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::core::credential::Credential;
use crate::core::nix::keys::PublicKey;
use crate::core::oidc::OidcRefusal;
use crate::core::token::{self, Permissions, TokenError, TokenId, VerifiedToken};

/// Most tokens one isolate remembers.
pub const MAX_REMEMBERED: usize = 1024;

/// The SHA-256 of a token's text: what [`ReadTokens`] keys on.
pub type TokenDigest = [u8; 32];

/// The digest of a token as [`token::verify`] reads it (surrounding whitespace is not
/// part of a token), so one token has one entry however it is spelt in a header.
pub fn digest(token_text: &str) -> TokenDigest {
    Sha256::digest(token_text.trim().as_bytes()).into()
}

/// Why a token is refused, for a read or any guarded operation. The reason names the
/// token's problem, never the request's path, so every file kind gets the same answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenRefusal {
    /// Worded for reads and writes alike: guarded operations refuse with it too, so a
    /// private cache answers every request without a token the same.
    #[error("a token is required (Authorization: Bearer TOKEN, or the token as netrc password)")]
    NoToken,
    #[error("Authorization must be Bearer or Basic")]
    Scheme,
    #[error(transparent)]
    Invalid(#[from] TokenError),
    #[error("token {0} is revoked")]
    Revoked(TokenId),
    #[error("token for {subject:?} lacks {needs} permission")]
    Lacks { subject: String, needs: Permissions },
    /// A CI provider's ID token, refused (`crate::core::oidc`).
    #[error(transparent)]
    Oidc(#[from] OidcRefusal),
}

impl TokenRefusal {
    /// The refusal's HTTP status: 403 for a valid credential that may not do this, 503
    /// while an issuer's keys cannot be had (clients retry), 401 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            TokenRefusal::Lacks { .. } | TokenRefusal::Oidc(OidcRefusal::NoRule(_)) => 403,
            TokenRefusal::Oidc(OidcRefusal::KeysUnavailable) => 503,
            _ => 401,
        }
    }
}

/// The token a read request carries (`Authorization: Bearer`, or Basic as Nix sends
/// it from netrc).
pub fn token_text(authorization: Option<&str>) -> Result<String, TokenRefusal> {
    let header = authorization.ok_or(TokenRefusal::NoToken)?;
    token::from_authorization(header).ok_or(TokenRefusal::Scheme)
}

/// The checks of a token that need no storage: signature, expiry, and `needs`. What
/// remains is its revocation.
pub fn check(
    token_text: &str,
    keys: &[PublicKey],
    now_ms: u64,
    needs: Permissions,
) -> Result<VerifiedToken, TokenRefusal> {
    let token = token::verify(token_text, keys, now_ms / 1000)?;
    Credential::from(&token).require(needs)?;
    Ok(token)
}

/// What [`ReadTokens::lookup`] knows of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Verified, carries `read`, unexpired, and found unrevoked within its interval.
    Admitted,
    /// Verified before, but its revocation is due to be looked up again; then
    /// [`ReadTokens::remember`] what was found, with `recheck_ms`.
    Recheck {
        token: VerifiedToken,
        recheck_ms: u64,
    },
    /// Never seen (or forgotten): [`check`] it, look up its revocation, remember it.
    Unknown,
}

#[derive(Debug, Clone)]
struct Remembered {
    token: VerifiedToken,
    revoked: bool,
    checked_at_ms: u64,
    recheck_ms: u64,
}

impl Remembered {
    fn due(&self, now_ms: u64) -> bool {
        // A clock that went back counts as due: never trust a check from "the future".
        now_ms < self.checked_at_ms || now_ms - self.checked_at_ms >= self.recheck_ms
    }
}

/// Read tokens one isolate has checked (see the module's documentation).
#[derive(Debug, Default)]
pub struct ReadTokens {
    entries: HashMap<TokenDigest, Remembered>,
}

impl ReadTokens {
    pub fn lookup(&mut self, digest: &TokenDigest, now_ms: u64) -> Result<Lookup, TokenRefusal> {
        let Some(entry) = self.entries.get(digest) else {
            return Ok(Lookup::Unknown);
        };
        if entry.revoked {
            return Err(TokenRefusal::Revoked(entry.token.id));
        }
        if now_ms / 1000 >= entry.token.expires_at {
            self.entries.remove(digest);
            return Err(TokenRefusal::Invalid(TokenError::Expired));
        }
        if entry.due(now_ms) {
            return Ok(Lookup::Recheck {
                token: entry.token.clone(),
                recheck_ms: entry.recheck_ms,
            });
        }
        Ok(Lookup::Admitted)
    }

    /// Records a revocation lookup made at `now_ms` for a token [`check`] passed; the
    /// read is admitted if it was not revoked.
    pub fn remember(
        &mut self,
        digest: TokenDigest,
        token: VerifiedToken,
        revoked: bool,
        now_ms: u64,
        recheck_ms: u64,
    ) -> Result<(), TokenRefusal> {
        // Requests interleave: a slower look-up that found no revocation must not undo
        // a newer one that found it. A revocation is for ever.
        if let Some(known) = self.entries.get(&digest).filter(|known| known.revoked) {
            return Err(TokenRefusal::Revoked(known.token.id));
        }
        if !self.entries.contains_key(&digest) && self.entries.len() >= MAX_REMEMBERED {
            self.entries
                .retain(|_, entry| entry.revoked || !entry.due(now_ms));
            if self.entries.len() >= MAX_REMEMBERED {
                self.entries.clear();
            }
        }
        let id = token.id;
        self.entries.insert(
            digest,
            Remembered {
                token,
                revoked,
                checked_at_ms: now_ms,
                recheck_ms,
            },
        );
        if revoked {
            return Err(TokenRefusal::Revoked(id));
        }
        Ok(())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nix::keys::SecretKey;
    use crate::core::token::Claims;

    const ADMIN: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";
    const NOW_MS: u64 = 1_900_000_000_000;
    const MINUTE: u64 = 60_000;

    fn mint(id: u8, permissions: Permissions, expires_at: u64) -> String {
        let key: SecretKey = ADMIN.parse().unwrap();
        Claims {
            id: TokenId([id; 16]),
            subject: format!("reader-{id}"),
            permissions,
            expires_at,
        }
        .mint(&key)
        .unwrap()
    }

    fn keys() -> Vec<PublicKey> {
        let key: SecretKey = ADMIN.parse().unwrap();
        vec![key.public_key()]
    }

    /// What the edge does for one request: look up, else verify and check revocation
    /// (`revoked` says what R2 would answer). Returns the outcome and whether R2 was asked.
    fn read(
        tokens: &mut ReadTokens,
        text: &str,
        now_ms: u64,
        revoked: bool,
    ) -> (Result<(), TokenRefusal>, bool) {
        let digest = digest(text);
        let (token, recheck_ms) = match tokens.lookup(&digest, now_ms) {
            Err(refusal) => return (Err(refusal), false),
            Ok(Lookup::Admitted) => return (Ok(()), false),
            Ok(Lookup::Recheck { token, recheck_ms }) => (token, recheck_ms),
            Ok(Lookup::Unknown) => match check(text, &keys(), now_ms, Permissions::READ) {
                Ok(token) => (token, MINUTE),
                Err(refusal) => return (Err(refusal), false),
            },
        };
        (
            tokens.remember(digest, token, revoked, now_ms, recheck_ms),
            true,
        )
    }

    #[test]
    fn an_admitted_token_costs_one_revocation_lookup_per_interval() {
        let mut tokens = ReadTokens::default();
        let text = mint(1, Permissions::READ, 2_000_000_000);
        assert_eq!(read(&mut tokens, &text, NOW_MS, false), (Ok(()), true));
        for step in 1..60 {
            assert_eq!(
                read(&mut tokens, &text, NOW_MS + step * 1000, false),
                (Ok(()), false)
            );
        }
        // The interval is up: asked again. Revoked since: refused from then on, for ever.
        let (outcome, asked) = read(&mut tokens, &text, NOW_MS + MINUTE, true);
        assert!(asked);
        assert_eq!(outcome, Err(TokenRefusal::Revoked(TokenId([1; 16]))));
        assert_eq!(
            read(&mut tokens, &text, NOW_MS + 10 * MINUTE, false),
            (Err(TokenRefusal::Revoked(TokenId([1; 16]))), false)
        );
    }

    #[test]
    fn refusals_depend_on_the_token_alone() {
        let mut tokens = ReadTokens::default();
        assert_eq!(token_text(None), Err(TokenRefusal::NoToken));
        assert_eq!(token_text(Some("Digest abc")), Err(TokenRefusal::Scheme));
        let write_only = mint(2, Permissions::WRITE, 2_000_000_000);
        assert_eq!(
            read(&mut tokens, &write_only, NOW_MS, false),
            (
                Err(TokenRefusal::Lacks {
                    subject: "reader-2".into(),
                    needs: Permissions::READ
                }),
                false
            )
        );
        assert_eq!(
            read(&mut tokens, &write_only, NOW_MS, false)
                .0
                .unwrap_err()
                .to_string(),
            "token for \"reader-2\" lacks read permission"
        );
        let expired = mint(3, Permissions::READ, NOW_MS / 1000);
        assert_eq!(
            read(&mut tokens, &expired, NOW_MS, false),
            (Err(TokenRefusal::Invalid(TokenError::Expired)), false)
        );
        let mut forged = mint(4, Permissions::READ, 2_000_000_000);
        forged.pop();
        forged.push('A');
        assert!(read(&mut tokens, &forged, NOW_MS, false).0.is_err());
        // A token revoked before it was first seen never reads.
        let revoked = mint(5, Permissions::READ, 2_000_000_000);
        assert_eq!(
            read(&mut tokens, &revoked, NOW_MS, true),
            (Err(TokenRefusal::Revoked(TokenId([5; 16]))), true)
        );
        // Failed checks are not remembered; only the revoked token is.
        assert_eq!(tokens.len(), 1);
    }

    #[test]
    fn a_remembered_token_still_expires_and_a_clock_going_back_rechecks() {
        let mut tokens = ReadTokens::default();
        let expires_at = NOW_MS / 1000 + 30;
        let text = mint(6, Permissions::READ, expires_at);
        assert_eq!(read(&mut tokens, &text, NOW_MS, false), (Ok(()), true));
        assert_eq!(
            read(&mut tokens, &text, NOW_MS - 1, false),
            (Ok(()), true),
            "a check from the future is not trusted"
        );
        assert_eq!(
            read(&mut tokens, &text, expires_at * 1000, false),
            (Err(TokenRefusal::Invalid(TokenError::Expired)), false)
        );
        assert_eq!(tokens.len(), 0);
    }

    #[test]
    fn a_revocation_is_for_ever_and_one_token_is_one_entry() {
        let mut tokens = ReadTokens::default();
        let text = mint(9, Permissions::READ, 2_000_000_000);
        let token = check(&text, &keys(), NOW_MS, Permissions::READ).unwrap();
        let revoked = Err(TokenRefusal::Revoked(TokenId([9; 16])));
        // Two look-ups in flight: the newer finds the revocation, the older lands last.
        assert_eq!(
            tokens.remember(digest(&text), token.clone(), true, NOW_MS + 5, MINUTE),
            revoked
        );
        assert_eq!(
            tokens.remember(digest(&text), token, false, NOW_MS, MINUTE),
            revoked
        );
        assert_eq!(
            tokens.lookup(&digest(&text), NOW_MS + 10),
            Err(TokenRefusal::Revoked(TokenId([9; 16])))
        );
        // Whitespace around a token (a netrc password, a header) is the same token.
        assert_eq!(digest(&format!(" {text}\t")), digest(&text));
        assert_eq!(tokens.len(), 1);
    }

    #[test]
    fn memory_is_bounded() {
        let mut tokens = ReadTokens::default();
        let token = check(
            &mint(7, Permissions::READ, 2_000_000_000),
            &keys(),
            NOW_MS,
            Permissions::READ,
        )
        .unwrap();
        for n in 0..(MAX_REMEMBERED as u64 + 10) {
            let digest = digest(&n.to_string());
            tokens
                .remember(digest, token.clone(), false, NOW_MS + n, MINUTE)
                .unwrap();
            assert!(tokens.len() <= MAX_REMEMBERED);
        }
        // A zero interval looks revocations up on every read.
        let text = mint(8, Permissions::READ, 2_000_000_000);
        let mut every = ReadTokens::default();
        let digest = digest(&text);
        let verified = check(&text, &keys(), NOW_MS, Permissions::READ).unwrap();
        every.remember(digest, verified, false, NOW_MS, 0).unwrap();
        assert!(matches!(
            every.lookup(&digest, NOW_MS),
            Ok(Lookup::Recheck { recheck_ms: 0, .. })
        ));
    }

    proptest::proptest! {
        /// Reads by a few tokens at random times, each revoked (in R2) at a random
        /// moment or never: a read is admitted only if the token is unexpired and, at
        /// most one interval before, R2 had not revoked it; once an isolate has seen a
        /// revocation, that token never reads again.
        #[test]
        fn no_read_outlives_a_revocation_by_more_than_the_interval(
            revoked_at in proptest::collection::vec(proptest::option::of(0u64..600_000), 3),
            reads in proptest::collection::vec((0usize..3, 0u64..20_000, proptest::bool::ANY), 1..60),
        ) {
            let texts: Vec<String> = (0..3u8)
                .map(|n| mint(n, Permissions::READ, NOW_MS / 1000 + 300 + u64::from(n) * 100))
                .collect();
            let mut tokens = ReadTokens::default();
            let mut now = NOW_MS;
            let mut seen_revoked = [false; 3];
            for (which, step, clock_back) in reads {
                // The clock mostly moves on; now and then it steps back a little.
                now = if clock_back { now.saturating_sub(step / 10) } else { now + step };
                let revoked_now = revoked_at[which].is_some_and(|at| now >= NOW_MS + at);
                let (outcome, asked) = read(&mut tokens, &texts[which], now, revoked_now);
                if asked && revoked_now {
                    seen_revoked[which] = true;
                }
                if outcome.is_ok() {
                    let expires_at = NOW_MS / 1000 + 300 + which as u64 * 100;
                    proptest::prop_assert!(now / 1000 < expires_at, "an expired token read");
                    proptest::prop_assert!(!seen_revoked[which], "a revocation seen was undone");
                    if let Some(at) = revoked_at[which] {
                        proptest::prop_assert!(
                            now < NOW_MS + at + MINUTE,
                            "read {} ms after its revocation", now - (NOW_MS + at)
                        );
                    }
                }
            }
        }
    }
}
