#![no_main]
//! JWTs, JWKS documents and OIDC rules: never a panic, a parsed JWT's signing input is
//! exactly its first two parts, and a token the screening passes is one some rule names
//! for its issuer and audience.
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nixflare::core::oidc::{self, jwks, jwt, rules};

const RULES: &str = r#"[{"issuer": "https://token.actions.githubusercontent.com",
  "claims": {"repository": "owner/*"}, "permissions": "read,write"}]"#;

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
        static PARSED: OnceLock<Vec<rules::Rule>> = OnceLock::new();
        let rules = PARSED.get_or_init(|| rules::parse_rules(RULES).unwrap());
        let origin = "https://cache.example.org";
        if let Ok(screened) = oidc::screen(rules, text, token.claims.exp.saturating_sub(1), origin) {
            assert_eq!(screened.claims.iss, rules[0].issuer);
            assert!(screened.claims.aud.iter().all(|aud| aud == rules[0].audience_for(origin)));
            if let Ok(admitted) = oidc::admit(rules, &screened, origin) {
                assert!(admitted.subject.len() <= rules::MAX_SUBJECT && admitted.token_id.is_none());
            }
        }
    }
});
