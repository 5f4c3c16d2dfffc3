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
//! one of its `aud` (a rule without one: the URL the request reached the cache at, which
//! is what `nixflare` asks for, so a rule holds on workers.dev and a custom domain
//! alike), and whose every claim pattern matches (`*` stands for any run of
//! characters, nothing else is special). It gets the union of their permissions. A rule
//! must pin the owner (`pins_owner`: `owner/*` is fine, `owner*`, `*` or a rule on `ref`
//! alone are not): a rule for "any repository on GitHub" is refused, not deployed.

use thiserror::Error;

use super::jwt::Claims;
use crate::core::json_read::{self, Value};
use crate::core::token::Permissions;

/// Most rules a cache may hold (each token is matched against all).
pub const MAX_RULES: usize = 64;
/// GitHub Actions' issuer (its subjects read `github:REPOSITORY@REF`).
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";
/// GitLab.com's issuer (its subjects read `gitlab:PROJECT_PATH@REF`).
pub const GITLAB_ISSUER: &str = "https://gitlab.com";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub issuer: String,
    /// `None`: the cache's own URL, as the request reached it.
    pub audience: Option<String>,
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
        .map(|a| {
            a.as_str().filter(|a| valid_audience(a)).ok_or(
                "audience must be the cache's URL as clients use it (https://host[:port], no path or trailing '/'), or left out",
            )
        })
        .transpose()?;
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
    if claims
        .iter()
        .any(|(name, _)| ["iss", "aud", "exp", "nbf", "iat"].contains(&name.as_str()))
    {
        return Err("claims may not name iss, aud, exp, nbf or iat (the rule's issuer and audience, and the time checks, cover them)");
    }
    if !claims
        .iter()
        .any(|(name, pattern)| pins_owner(name, pattern))
    {
        return Err(PIN_THE_OWNER);
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
        audience: audience.map(str::to_owned),
        claims,
        permissions,
    })
}

const PIN_THE_OWNER: &str = "claims must pin down whose jobs these are: repository or project_path with a literal owner (e.g. \"owner/*\"), sub starting repo:OWNER/ or project_path:GROUP/, or repository_owner(_id), repository_id, namespace_path/_id, project_id without '*'";

/// Whether a claim pattern names one owner (a GitHub user or organisation, a GitLab
/// group): every workflow can ask for a token with any audience, so the claims are all
/// that tell this cache's CI from anyone else's. Ids and owner names must be exact;
/// paths (`owner/repo`) may have `*` only after the owner's `/`, so `owner*` (which
/// `owner-evil` matches) does not count. `sub` counts only in the forms whose first part
/// the provider fixes (GitHub's `repo:OWNER/...`, GitLab's `project_path:GROUP/...`): a
/// repository's admin may customise the rest of it. `job_workflow_ref` never counts: it
/// names the reusable workflow's repository, which any other repository may call.
fn pins_owner(claim: &str, pattern: &str) -> bool {
    let literal_owner = |path: &str| {
        path.split_once('/')
            .is_some_and(|(owner, _)| !owner.is_empty() && !owner.contains('*'))
    };
    match claim {
        "repository_id"
        | "repository_owner"
        | "repository_owner_id"
        | "namespace_path"
        | "namespace_id"
        | "project_id" => !pattern.contains('*'),
        "repository" | "project_path" => literal_owner(pattern),
        "sub" => pattern
            .strip_prefix("repo:")
            .or_else(|| pattern.strip_prefix("project_path:"))
            .is_some_and(literal_owner),
        _ => false,
    }
}

/// What `nixflare` asks for and the worker's origin reads: `scheme://host[:port]`.
fn valid_audience(audience: &str) -> bool {
    let rest = audience
        .strip_prefix("https://")
        .or_else(|| audience.strip_prefix("http://"));
    rest.is_some_and(|host| {
        !host.is_empty()
            && !host.contains(['/', '?', '#', '@', ' '])
            && !host.contains(char::is_control)
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

impl Rule {
    /// The audience this rule wants, `origin` (`scheme://host[:port]` of the request)
    /// when it names none.
    pub fn audience_for<'a>(&'a self, origin: &'a str) -> &'a str {
        self.audience.as_deref().unwrap_or(origin)
    }
}

/// The identity `claims` (already verified and in time) have under `rules`, if any rule
/// admits them; `origin` is the request's.
pub fn admit(rules: &[Rule], claims: &Claims, origin: &str) -> Option<Identity> {
    let permissions = rules
        .iter()
        .filter(|rule| {
            rule.issuer == claims.iss
                && claims
                    .aud
                    .iter()
                    .any(|aud| aud == rule.audience_for(origin))
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

/// `github:REPOSITORY@REF`, `gitlab:PROJECT_PATH@REF` (GitLab's short ref made full by
/// its `ref_type`, so branch `v1` and tag `v1` differ, as on GitHub), else
/// `ISSUER_HOST:SUB`. Printable ASCII only (a token subject's rule): anything else, and
/// `%`, percent-encoded; at most [`MAX_SUBJECT`] characters.
pub fn subject(claims: &Claims) -> String {
    let host = claims.iss.trim_start_matches("https://");
    let issuer = claims.iss.as_str();
    let gitlab_ref = |short: &str| match claims.get("ref_type") {
        Some("branch") => format!("refs/heads/{short}"),
        Some("tag") => format!("refs/tags/{short}"),
        _ => short.to_owned(),
    };
    let text = match (
        issuer,
        claims.get("repository"),
        claims.get("project_path"),
        claims.get("ref"),
    ) {
        (GITHUB_ISSUER, Some(repo), _, Some(r)) => format!("github:{repo}@{r}"),
        (GITLAB_ISSUER, _, Some(project), Some(r)) => {
            format!("gitlab:{project}@{}", gitlab_ref(r))
        }
        _ => format!("{host}:{}", claims.sub),
    };
    let mut subject = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            subject.push(char::from(byte));
        } else {
            subject.push_str(&format!("%{byte:02X}"));
        }
    }
    subject.truncate(MAX_SUBJECT);
    subject
}

/// Longest subject recorded (the index and logs show it).
pub const MAX_SUBJECT: usize = 160;

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
        let identity = admit(&rules, &claims(CLAIMS), "https://elsewhere").unwrap();
        assert_eq!(identity.permissions.to_string(), "read,write,pin");
        assert_eq!(identity.subject, "github:owner/repo@refs/heads/main");
        let tag = claims(&CLAIMS.replace("refs/heads/main", "refs/tags/v1"));
        assert_eq!(
            admit(&rules, &tag, "https://elsewhere")
                .unwrap()
                .permissions
                .to_string(),
            "pin"
        );
        for other in [
            CLAIMS.replace("owner/repo", "evil/repo"),
            CLAIMS.replace("https://cache.example.org", "https://other.example.org"),
            CLAIMS.replace("githubusercontent.com", "githubusercontent.com.evil.org"),
        ] {
            assert_eq!(
                admit(&rules, &claims(&other), "https://elsewhere"),
                None,
                "{other}"
            );
        }
    }

    #[test]
    fn rules_that_admit_too_much_or_make_no_sense_are_refused() {
        assert_eq!(parse_rules("").unwrap(), Vec::new());
        for (bad, why) in [
            (r#"{"issuer": "x"}"#, "not a list"),
            (
                r#"[{"issuer": "http://gh", "audience": "https://c", "claims": {"repository": "o/r"}, "permissions": "write"}]"#,
                "http",
            ),
            (
                r#"[{"issuer": "https://gh/", "audience": "https://c", "claims": {"repository": "o/r"}, "permissions": "write"}]"#,
                "slash",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "", "claims": {"repository": "o/r"}, "permissions": "write"}]"#,
                "aud",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://cache.example.org/", "claims": {"repository": "o/r"}, "permissions": "write"}]"#,
                "aud with a trailing slash: never what a client asks for",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "cache.example.org", "claims": {"repository": "o/r"}, "permissions": "write"}]"#,
                "aud not a URL",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://c", "claims": {}, "permissions": "write"}]"#,
                "no claims",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://c", "claims": {"repository": "*"}, "permissions": "write"}]"#,
                "any",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://c", "claims": {"repository": "o/r"}, "permissions": "fly"}]"#,
                "perm",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://c", "claims": {"repository": "o/r"}, "permissions": "revoke"}]"#,
                "revoke",
            ),
            (
                r#"[{"issuer": "https://gh", "audience": "https://c", "claims": {"repository": "o/r"}, "permissions": "read", "x": 1}]"#,
                "field",
            ),
        ] {
            assert!(parse_rules(bad).is_err(), "{why}: {bad}");
        }
    }

    /// Any workflow on GitHub can get a token for any audience: a rule must name whose
    /// jobs it admits, with the owner exact.
    #[test]
    fn a_rule_must_pin_the_owner() {
        let parses = |claims: &str| {
            parse_rules(&format!(
                r#"[{{"issuer": "https://gh", "audience": "https://c", "claims": {claims}, "permissions": "write"}}]"#
            ))
            .is_ok()
        };
        for admits_anyone in [
            r#"{"ref": "refs/heads/main"}"#,
            r#"{"event_name": "push", "ref": "refs/heads/main"}"#,
            r#"{"repository_visibility": "public"}"#,
            r#"{"sub": "repo:*"}"#,
            r#"{"sub": "repo:owner*/x"}"#,
            r#"{"repository": "owner*"}"#,
            r#"{"repository": "*/repo"}"#,
            r#"{"repository_owner": "own*"}"#,
            r#"{"repository_owner_id": "*"}"#,
            r#"{"iss": "https://gh", "repository": "o/r"}"#,
            r#"{"aud": "a", "repository": "o/r"}"#,
            // The reusable workflow's repository, not the caller's.
            r#"{"job_workflow_ref": "owner/workflows/.github/workflows/push.yml@refs/heads/main"}"#,
            // A customised subject: its first part is the repository admin's choice.
            r#"{"sub": "ref:refs/heads/main"}"#,
            r#"{"sub": "job_workflow_ref:owner/workflows/x.yml@refs/heads/main"}"#,
            r#"{"sub": "repo:/x"}"#,
        ] {
            assert!(!parses(admits_anyone), "{admits_anyone}");
        }
        for pinned in [
            r#"{"repository": "owner/repo"}"#,
            r#"{"repository": "owner/*", "ref": "refs/heads/*"}"#,
            r#"{"repository_owner_id": "12345"}"#,
            r#"{"sub": "repo:owner/repo:ref:refs/heads/main"}"#,
            r#"{"project_path": "group/sub/project"}"#,
            r#"{"namespace_id": "42", "ref_protected": "true"}"#,
            r#"{"sub": "project_path:group/project:ref_type:branch:ref:main"}"#,
        ] {
            assert!(parses(pinned), "{pinned}");
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
        // GitLab's claims: its issuer, project_path for repository, short refs.
        let gitlab = |project_and_ref: &str, git_ref: &str| {
            claims(
                &CLAIMS
                    .replace(
                        "https://token.actions.githubusercontent.com",
                        "https://gitlab.com",
                    )
                    .replace(r#""repository":"owner/repo","#, project_and_ref)
                    .replace("refs/heads/main", git_ref),
            )
        };
        let branch = gitlab(r#""project_path":"group/proj","#, "refs/heads/main");
        assert_eq!(subject(&branch), "gitlab:group/proj@refs/heads/main");
        let tag = gitlab(r#""project_path":"group/proj","ref_type":"tag","#, "v1");
        assert_eq!(subject(&tag), "gitlab:group/proj@refs/tags/v1");
        let other =
            claims(&CLAIMS.replace("token.actions.githubusercontent.com", "ci.example.org"));
        assert_eq!(
            subject(&other),
            "ci.example.org:repo:owner/repo:ref:refs/heads/main"
        );
        let odd = claims(&CLAIMS.replace("refs/heads/main", "refs/heads/ma\u{e9}n x%"));
        assert!(
            subject(&odd).ends_with("ma%C3%A9n%20x%25"),
            "{}",
            subject(&odd)
        );
    }
}
