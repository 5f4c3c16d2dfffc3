//! OIDC ID tokens (JWTs a CI provider issues: GitHub Actions, GitLab CI, any issuer with
//! OIDC discovery) as credentials, checked as the OIDC and JWT specs require and no
//! looser. Pure, so the host tests and fuzzes it:
//!
//! - [`jwt`]: the compact JWS, its header and claims, and the time checks;
//! - [`rules`]: the operator's rules (`OIDC_RULES`) mapping issuer, audience and claim
//!   patterns to permissions and a subject;
//! - [`jwks`]: the issuer's keys (discovery document, JWKS) and when to fetch them again.
//!
//! The order of the checks ([`screen`], then the key and signature, then [`admit`]) puts
//! everything that needs no network first: a token from an issuer no rule trusts, for
//! another audience, or out of its time never makes the worker fetch anything, so no
//! request can point the worker at a URL the operator did not name.
//!
//! The signature itself is the edge's (`crate::edge::oidc`): the runtime's WebCrypto
//! verifies it (RS256, ES256) with the key [`jwks`] names, so no RSA code enters the wasm.

pub mod jwks;
pub mod jwt;
pub mod rules;

use thiserror::Error;

use crate::core::credential::Credential;
use jwt::{Jwt, JwtError};
use rules::Rule;

/// Why an ID token is refused. 401, except [`OidcRefusal::NoRule`] (403: a genuine
/// identity this cache does not admit) and [`OidcRefusal::KeysUnavailable`] (503: the
/// issuer did not answer; try again).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OidcRefusal {
    #[error(transparent)]
    Jwt(#[from] JwtError),
    #[error("ID tokens are taken over https only (one sent in clear could be replayed until it expires)")]
    Insecure,
    #[error("no OIDC rule trusts ID tokens from the issuer {0:?}")]
    Issuer(String),
    #[error("the ID token's audience is not one an OIDC rule for its issuer names (request it with the cache's URL as its only audience)")]
    Audience,
    #[error("the ID token's key {0:?} is not among its issuer's keys")]
    UnknownKey(String),
    #[error("the ID token's key {0:?} is not for its algorithm")]
    KeyAlgorithm(String),
    #[error("the ID token's signature does not verify")]
    Signature,
    /// The details (URL, status) stay in the worker's log.
    #[error("the issuer's keys are being fetched or could not be: try again")]
    KeysUnavailable,
    #[error("no OIDC rule admits {0}")]
    NoRule(String),
}

/// The checks that need neither the issuer's keys nor the network: the token parses,
/// some rule trusts its issuer for each of its audiences, and it is within its time
/// (`now`: Unix seconds; `origin`: the request's `scheme://host[:port]`, the audience of
/// a rule that names none). What comes back still needs its signature checked.
pub fn screen(rules: &[Rule], text: &str, now: u64, origin: &str) -> Result<Jwt, OidcRefusal> {
    if !secure(origin) {
        return Err(OidcRefusal::Insecure);
    }
    let token = jwt::parse(text.trim())?;
    let claims = &token.claims;
    let for_issuer = || rules.iter().filter(|rule| rule.issuer == claims.iss);
    if for_issuer().next().is_none() {
        return Err(OidcRefusal::Issuer(claims.iss.chars().take(100).collect()));
    }
    // Every audience the token names must be one this cache answers to (OIDC Core
    // 3.1.3.7): a token also meant for another service could be replayed by it.
    let trusted = |aud: &String| for_issuer().any(|rule| rule.audience_for(origin) == aud);
    if !claims.aud.iter().all(trusted) {
        return Err(OidcRefusal::Audience);
    }
    claims.check_times(now)?;
    Ok(token)
}

/// Whether a request from `origin` kept its credential private: https, or plain http to
/// this machine (`wrangler dev`).
fn secure(origin: &str) -> bool {
    if origin.starts_with("https://") {
        return true;
    }
    let Some(authority) = origin.strip_prefix("http://") else {
        return false;
    };
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    matches!(host, "127.0.0.1" | "localhost" | "[::1]")
}

/// Who a token whose signature verified is, under `rules`.
pub fn admit(rules: &[Rule], token: &Jwt, origin: &str) -> Result<Credential, OidcRefusal> {
    let identity = rules::admit(rules, &token.claims, origin)
        .ok_or_else(|| OidcRefusal::NoRule(rules::subject(&token.claims)))?;
    Ok(Credential {
        subject: identity.subject,
        permissions: identity.permissions,
        expires_at: token.claims.exp,
        token_id: None,
    })
}

#[cfg(test)]
mod tests {
    use super::jwt::tests::{token, CLAIMS};
    use super::*;

    const RULES: &str = r#"[{"issuer": "https://token.actions.githubusercontent.com",
      "audience": "https://cache.example.org", "claims": {"repository": "owner/repo"},
      "permissions": "read,write"}]"#;

    /// Where the requests of these tests reach the cache.
    const ORIGIN: &str = "https://cache.example.org";

    fn jwt(claims: &str) -> String {
        token(r#"{"alg":"RS256","kid":"k"}"#, claims, 256)
    }

    #[test]
    fn screening_refuses_before_any_key_is_needed() {
        let rules = rules::parse_rules(RULES).unwrap();
        let good = screen(&rules, &jwt(CLAIMS), 1500, ORIGIN).unwrap();
        assert_eq!(good.kid, "k");
        let cases = [
            (
                CLAIMS.replace("githubusercontent.com", "githubusercontent.com.evil"),
                1500,
                "issuer",
            ),
            (
                CLAIMS.replace("https://cache.example.org", "https://other.example.org"),
                1500,
                "audience",
            ),
            (
                CLAIMS.replace(
                    r#""aud":"https://cache.example.org""#,
                    r#""aud":["https://cache.example.org","https://other.example.org"]"#,
                ),
                1500,
                "audience",
            ),
            (CLAIMS.to_owned(), 2000 + jwt::SKEW_SECONDS, "expired"),
            (
                CLAIMS.to_owned(),
                1000 - jwt::SKEW_SECONDS - 1,
                "not valid yet",
            ),
        ];
        for (claims, now, why) in cases {
            let refusal = screen(&rules, &jwt(&claims), now, ORIGIN).unwrap_err();
            assert!(refusal.to_string().contains(why), "{why}: {refusal}");
        }
        // Over plain http to anywhere but this machine: refused before anything else.
        for insecure in [
            "http://cache.example.org",
            "http://127.0.0.1.evil.org:80",
            "",
        ] {
            assert_eq!(
                screen(&rules, &jwt(CLAIMS), 1500, insecure).unwrap_err(),
                OidcRefusal::Insecure,
                "{insecure}"
            );
        }
        let local = rules::parse_rules(
            &RULES.replace("https://cache.example.org", "http://127.0.0.1:8787"),
        )
        .unwrap();
        let local_token =
            jwt(&CLAIMS.replace("https://cache.example.org", "http://127.0.0.1:8787"));
        assert!(screen(&local, &local_token, 1500, "http://127.0.0.1:8787").is_ok());
        // No rules: nothing is trusted.
        assert!(matches!(
            screen(&[], &jwt(CLAIMS), 1500, ORIGIN),
            Err(OidcRefusal::Issuer(_))
        ));
    }

    #[test]
    fn admitted_tokens_carry_their_rules_permissions_and_expiry() {
        let rules = rules::parse_rules(RULES).unwrap();
        let admitted = admit(
            &rules,
            &screen(&rules, &jwt(CLAIMS), 1500, ORIGIN).unwrap(),
            ORIGIN,
        )
        .unwrap();
        assert_eq!(admitted.subject, "github:owner/repo@refs/heads/main");
        assert_eq!(admitted.permissions.to_string(), "read,write");
        assert_eq!(admitted.expires_at, 2000);
        assert_eq!(admitted.token_id, None);
        let other = jwt(&CLAIMS.replace("owner/repo", "owner/other"));
        let refused = admit(
            &rules,
            &screen(&rules, &other, 1500, ORIGIN).unwrap(),
            ORIGIN,
        )
        .unwrap_err();
        assert_eq!(
            refused,
            OidcRefusal::NoRule("github:owner/other@refs/heads/main".into())
        );
    }

    /// A rule without an audience wants the URL the request reached the cache at.
    #[test]
    fn a_rule_without_an_audience_wants_the_caches_own_url() {
        let rules = rules::parse_rules(
            r#"[{"issuer": "https://token.actions.githubusercontent.com",
                 "claims": {"repository": "owner/repo"}, "permissions": "write"}]"#,
        )
        .unwrap();
        let token = jwt(CLAIMS);
        let here = screen(&rules, &token, 1500, ORIGIN).unwrap();
        assert_eq!(
            admit(&rules, &here, ORIGIN)
                .unwrap()
                .permissions
                .to_string(),
            "write"
        );
        assert_eq!(
            screen(&rules, &token, 1500, "https://other-cache.example.org").unwrap_err(),
            OidcRefusal::Audience
        );
        assert!(admit(&rules, &here, "https://other-cache.example.org").is_err());
    }
}
