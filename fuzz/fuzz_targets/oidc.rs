#![no_main]
//! JWTs, JWKS documents and OIDC rules: never a panic, and a parsed JWT's signing input
//! is exactly its first two parts.
use libfuzzer_sys::fuzz_target;
use nixflare::core::oidc::{jwks, jwt, rules};

fuzz_target!(|data: &[u8]| {
    let _ = jwks::parse_jwks(data);
    let _ = jwks::jwks_uri(data, "https://token.actions.githubusercontent.com");
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(rules) = rules::parse_rules(text) {
        assert!(rules.len() <= rules::MAX_RULES);
    }
    if let Ok(token) = jwt::parse(text) {
        assert!(text.starts_with(&token.signing_input));
        let _ = token.claims.check_times(u64::MAX);
        let _ = rules::subject(&token.claims);
    }
});
