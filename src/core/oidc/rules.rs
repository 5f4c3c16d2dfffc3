//! `OIDC_RULES`: which CI identities may do what. A JSON array of rules:
//!
//! ```json
//! [{"issuer": "https://token.actions.githubusercontent.com",
//!   "audience": "https://cache.example.org",
//!   "claims": {"repository": "owner/repo", "ref": "refs/heads/*"},
//!   "permissions": "read,write"}]
//! ```
//!
//! A token is admitted by every rule whose issuer is its `iss` exactly, whose audience is
//! one of its `aud`, and whose every claim pattern matches (`*` stands for any run of
//! characters, nothing else is special). It gets the union of their permissions. A rule
//! must name at least one claim with a literal start (`owner/*` is fine, `*` alone is
//! not): a rule for "any repository on GitHub" is refused, not deployed.

use thiserror::Error;

use super::jwt::Claims;
use crate::core::json_read::{self, Value};
use crate::core::token::Permissions;

/// Most rules a cache may hold (each token is matched against all).
pub const MAX_RULES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub issuer: String,
    pub audience: String,
    pub claims: Vec<(String, String)>,
    pub permissions: Permissions,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    #[error("OIDC_RULES is not a JSON array of rules")]
    NotAList,
    #[error("OIDC_RULES holds more than {MAX_RULES} rules")]
    TooMany,
    #[error("OIDC_RULES rule {0}: {1}")]
    Rule(usize, &'static str),
}

/// Parses `OIDC_RULES` (empty or unset: no rules, no CI identity admitted).
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let Ok(Value::Array(items)) = json_read::parse(text.as_bytes()) else {
        return Err(RuleError::NotAList);
    };
    if items.len() > MAX_RULES {
        return Err(RuleError::TooMany);
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| rule(item).map_err(|why| RuleError::Rule(index, why)))
        .collect()
}

fn rule(item: &Value) -> Result<Rule, &'static str> {
    let entries = item.as_object().ok_or("not an object")?;
    for (key, _) in entries {
        if !["issuer", "audience", "claims", "permissions"].contains(&key.as_str()) {
            return Err("unknown field (issuer, audience, claims, permissions)");
        }
    }
    let issuer = item
        .get("issuer")
        .and_then(Value::as_str)
        .filter(|i| valid_issuer(i))
        .ok_or("issuer must be an https URL without query, fragment or trailing '/'")?;
    let audience = item
        .get("audience")
        .and_then(Value::as_str)
        .filter(|a| !a.is_empty())
        .ok_or("audience must be a non-empty string (the cache's URL)")?;
    let claims: Vec<(String, String)> = item
        .get("claims")
        .and_then(Value::as_object)
        .ok_or("claims must be an object of claim patterns")?
        .iter()
        .map(|(name, pattern)| {
            pattern
                .as_str()
                .filter(|p| !p.is_empty())
                .map(|p| (name.clone(), p.to_owned()))
                .ok_or("each claim pattern must be a non-empty string")
        })
        .collect::<Result<_, _>>()?;
    if !claims.iter().any(|(_, pattern)| !pattern.starts_with('*')) {
        return Err(
            "claims must pin down the identity: at least one pattern not starting with '*'",
        );
    }
    let permissions = item
        .get("permissions")
        .and_then(Value::as_str)
        .and_then(|p| Permissions::parse_list(p).ok())
        .filter(|p| *p != Permissions::NONE)
        .ok_or("permissions must be a list such as \"read,write\"")?;
    if permissions.contains(Permissions::REVOKE) {
        return Err("revoke is for tokens, not CI identities");
    }
    Ok(Rule {
        issuer: issuer.to_owned(),
        audience: audience.to_owned(),
        claims,
        permissions,
    })
}

fn valid_issuer(issuer: &str) -> bool {
    issuer
        .strip_prefix("https://")
        .is_some_and(|rest| !rest.is_empty() && !rest.ends_with('/'))
        && !issuer.contains(['?', '#', ' '])
}

/// `*` matches any run of characters; everything else matches itself. Linear time.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Who a CI token is, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// What the index records as the publisher, e.g. `github:owner/repo@refs/heads/main`.
    pub subject: String,
    pub permissions: Permissions,
}

/// The identity `claims` (already verified and in time) have under `rules`, if any rule
/// admits them.
pub fn admit(rules: &[Rule], claims: &Claims) -> Option<Identity> {
    let permissions = rules
        .iter()
        .filter(|rule| {
            rule.issuer == claims.iss
                && claims.aud.contains(&rule.audience)
                && rule
                    .claims
                    .iter()
                    .all(|(name, pattern)| claims.get(name).is_some_and(|v| glob(pattern, v)))
        })
        .fold(Permissions::NONE, |acc, rule| acc.union(rule.permissions));
    (permissions != Permissions::NONE).then(|| Identity {
        subject: subject(claims),
        permissions,
    })
}

/// `github:REPOSITORY@REF`, `gitlab:PROJECT_PATH@REF`, else `ISSUER_HOST:SUB`: printable
/// ASCII only (a token subject's rule), at most 128 characters.
pub fn subject(claims: &Claims) -> String {
    let host = claims.iss.trim_start_matches("https://");
    let text = match (
        host,
        claims.get("repository"),
        claims.get("project_path"),
        claims.get("ref"),
    ) {
        ("token.actions.githubusercontent.com", Some(repo), _, Some(r)) => {
            format!("github:{repo}@{r}")
        }
        ("gitlab.com", _, Some(project), Some(r)) => format!("gitlab:{project}@{r}"),
        _ => format!("{host}:{}", claims.sub),
    };
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .take(128)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::oidc::jwt::{
        self,
        tests::{token, CLAIMS},
    };

    const RULES: &str = r#"[
      {"issuer": "https://token.actions.githubusercontent.com", "audience": "https://cache.example.org",
       "claims": {"repository": "owner/repo", "ref": "refs/heads/*"}, "permissions": "read,write"},
      {"issuer": "https://token.actions.githubusercontent.com", "audience": "https://cache.example.org",
       "claims": {"repository": "owner/*"}, "permissions": "pin"}
    ]"#;

    fn claims(text: &str) -> Claims {
        jwt::parse(&token(r#"{"alg":"RS256","kid":"k"}"#, text, 256))
            .unwrap()
            .claims
    }

    #[test]
    fn matching_rules_add_up_and_name_the_ci_identity() {
        let rules = parse_rules(RULES).unwrap();
        let identity = admit(&rules, &claims(CLAIMS)).unwrap();
        assert_eq!(identity.permissions.to_string(), "read,write,pin");
        assert_eq!(identity.subject, "github:owner/repo@refs/heads/main");
        let tag = claims(&CLAIMS.replace("refs/heads/main", "refs/tags/v1"));
        assert_eq!(admit(&rules, &tag).unwrap().permissions.to_string(), "pin");
        for other in [
            CLAIMS.replace("owner/repo", "evil/repo"),
            CLAIMS.replace("https://cache.example.org", "https://other.example.org"),
            CLAIMS.replace("githubusercontent.com", "githubusercontent.com.evil.org"),
        ] {
            assert_eq!(admit(&rules, &claims(&other)), None, "{other}");
        }
    }

    #[test]
    fn rules_that_admit_too_much_or_make_no_sense_are_refused() {
        assert_eq!(parse_rules("").unwrap(), Vec::new());
        for (bad, why) in [
            (r#"{"issuer": "x"}"#, "not a list"),
            (
                r#"[{"issuer": "http://gh", "audience": "a", "claims": {"r": "x"}, "permissions": "write"}]"#,
                "http",
            ),
            (
                r#"[{"issuer": "https://gh/", "audience": "a", "claims": {"r": "x"}, "permissions": "write"}]"#,
                "slash",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "", "claims": {"r": "x"}, "permissions": "write"}]"#,
                "aud",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "a", "claims": {}, "permissions": "write"}]"#,
                "no claims",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "a", "claims": {"r": "*"}, "permissions": "write"}]"#,
                "any",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "a", "claims": {"r": "x"}, "permissions": "fly"}]"#,
                "perm",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "a", "claims": {"r": "x"}, "permissions": "revoke"}]"#,
                "revoke",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "a", "claims": {"r": "x"}, "permissions": "read", "x": 1}]"#,
                "field",
            ),
        ] {
            assert!(parse_rules(bad).is_err(), "{why}: {bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob("refs/heads/*", "refs/heads/main"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbc"));
        assert!(!glob("a*b", "aXbc"));
        assert!(!glob("owner/repo", "owner/repo2"));
        assert!(glob("owner/*/x", "owner/a/b/x"));
        // Linear: a pathological pattern ends quickly.
        assert!(!glob(&"*a".repeat(200), &"a".repeat(199)));
    }

    #[test]
    fn subjects_are_printable_and_bounded() {
        let gitlab = claims(
            &CLAIMS
                .replace(
                    "https://token.actions.githubusercontent.com",
                    "https://gitlab.com",
                )
                .replace(
                    r#""repository":"owner/repo","#,
                    r#""project_path":"group/proj","#,
                ),
        );
        assert_eq!(subject(&gitlab), "gitlab:group/proj@refs/heads/main");
        let other =
            claims(&CLAIMS.replace("token.actions.githubusercontent.com", "ci.example.org"));
        assert_eq!(
            subject(&other),
            "ci.example.org:repo:owner/repo:ref:refs/heads/main"
        );
        let odd = claims(&CLAIMS.replace("refs/heads/main", "refs/heads/ma\u{e9}n x"));
        assert!(subject(&odd).ends_with("ma?n?x"));
    }
}
