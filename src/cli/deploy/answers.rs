//! The answers `nixflare init` asks for, each parsed and checked here (pure: unit
//! tested) so a bad answer is refused with its field named, on a terminal or from a
//! flag, before anything is created.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{anyhow, bail, Result};

use crate::core::oidc::rules::{GITHUB_ISSUER, GITLAB_ISSUER};

/// A Cloudflare Worker name: it becomes the workers.dev host label, so 1 to 63 of
/// a-z, 0-9 and '-', not starting or ending with '-'.
pub fn worker_name(text: &str) -> Result<String> {
    label(text, 1)
}

/// An R2 bucket name: the same characters, 3 to 63 of them (R2's rule).
pub fn bucket_name(text: &str) -> Result<String> {
    label(text, 3)
}

fn label(text: &str, min_len: usize) -> Result<String> {
    let ok = (min_len..=63).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !text.starts_with('-')
        && !text.ends_with('-');
    if !ok {
        bail!("{text:?}: use {min_len} to 63 of a-z, 0-9 and '-' (not first or last)");
    }
    Ok(text.to_owned())
}

/// The cache's name: the prefix of its keys' names (`NAME-1`), conventionally its host
/// name. Nix splits key text at the first ':' and lists keys separated by spaces.
pub fn cache_name(text: &str) -> Result<String> {
    let ok = (1..=200).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b':' | b'"' | b'\'' | b'\\'));
    // Stricter than Nix's own rule for key names (no ':', no whitespace).
    if !ok {
        bail!("{text:?}: a key name takes 1 to 200 visible characters, no spaces, quotes or ':' (e.g. cache.example.org)");
    }
    Ok(text.to_owned())
}

/// Who may read: public (anyone) or private (a token with read).
pub fn read_access(text: &str) -> Result<&'static str> {
    match text.trim().to_ascii_lowercase().as_str() {
        "public" => Ok("public"),
        "private" | "token" => Ok("token"),
        _ => bail!("{text:?}: answer public or private"),
    }
}

/// Days a pushed path stays a GC root: a whole number of days, or `forever` (empty).
pub fn retain_days(text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("forever") {
        return Ok(String::new());
    }
    match text.trim_end_matches('d').parse::<u64>() {
        Ok(days) if (1..=36500).contains(&days) => Ok(days.to_string()),
        _ => bail!("{text:?}: a number of days from 1 to 36500 (e.g. 90), or forever"),
    }
}

/// A budget for the NARs the cache keeps: bytes with an optional unit (K, M, G, T:
/// powers of 1000; KiB, MiB, GiB, TiB: of 1024), or `none` (empty).
pub fn size(text: &str) -> Result<String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(String::new());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KIB" => 1 << 10,
        "MIB" => 1 << 20,
        "GIB" => 1 << 30,
        "TIB" => 1 << 40,
        _ => 0,
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|&b| b > 0 && b <= 1 << 53);
    match bytes {
        Some(bytes) => Ok(bytes.to_string()),
        None => bail!("{text:?}: a size such as 500G, 2T or 750GiB, or none"),
    }
}

/// Upstream caches, space- or comma-separated URLs, or `none` (empty). Each URL's
/// rules are the worker's (checked with the whole configuration).
pub fn upstreams(text: &str) -> Result<String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(String::new());
    }
    let urls: Vec<&str> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|u| !u.is_empty())
        .collect();
    for url in &urls {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            bail!("{url:?} is not an http(s) URL (or answer none)");
        }
    }
    Ok(urls
        .iter()
        .map(|u| u.trim_end_matches('/'))
        .collect::<Vec<_>>()
        .join(" "))
}

/// `--ci`: `github:OWNER/REPO[@REF]` and `gitlab:GROUP/PROJECT[@REF]` entries as
/// `OIDC_RULES`, each admitting the jobs of that repository (not a fork's: it is another
/// repository), on refs matching REF if given, to push, and to read where the cache is
/// private. The audience is left out: the cache's own URL, which `nixflare` asks for.
/// Other rules (an event, ids) are edited into deployment.toml.
pub fn ci_rules(text: &str, private: bool) -> Result<String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(String::new());
    }
    let permissions = if private { "read,write" } else { "write" };
    let mut rules = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (repository, git_ref) = match entry.split_once('@') {
            Some((repository, git_ref)) => (repository, Some(git_ref)),
            None => (entry, None),
        };
        let (issuer, claim, path) = match repository.split_once(':') {
            Some(("github", path)) => (GITHUB_ISSUER, "repository", path),
            Some(("gitlab", path)) => (GITLAB_ISSUER, "project_path", path),
            _ => bail!("{entry:?} is not github:OWNER/REPO or gitlab:GROUP/PROJECT (or none)"),
        };
        let parts: Vec<&str> = path.split('/').collect();
        let plain = |part: &&str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        };
        if parts.len() < 2
            || !parts.iter().all(plain)
            || (claim == "repository" && parts.len() != 2)
        {
            bail!("{entry:?}: the repository must be named exactly, as OWNER/REPO (GitLab: GROUP/.../PROJECT)");
        }
        let mut claims = serde_json::json!({ claim: path });
        if let Some(git_ref) = git_ref {
            let valid = !git_ref.is_empty()
                && git_ref
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._/*-".contains(c));
            if !valid {
                bail!("{entry:?}: the ref after '@' is a branch or tag pattern such as refs/heads/main (GitLab: main)");
            }
            claims["ref"] = git_ref.into();
        }
        rules.push(serde_json::json!({
            "issuer": issuer,
            "claims": claims,
            "permissions": permissions,
        }));
    }
    if rules.is_empty() {
        bail!("name at least one repository (or answer none)");
    }
    Ok(serde_json::Value::Array(rules).to_string())
}

/// Asks the questions whose answers no flag gave: on a terminal, each with its default
/// and asked again until it parses; otherwise (CI, scripts) the default is taken.
pub struct Asker {
    interactive: bool,
}

impl Asker {
    pub fn new(assume_defaults: bool) -> Self {
        Self {
            interactive: !assume_defaults && std::io::stdin().is_terminal(),
        }
    }

    /// The answer to `question` for `field` (the flag that also gives it): from the
    /// flag if given, else asked, else `default`. Parsed by `parse`; a flag that does
    /// not parse is an error naming it.
    pub fn answer<T>(
        &self,
        field: &str,
        question: &str,
        flag: Option<&str>,
        default: &str,
        parse: impl Fn(&str) -> Result<T>,
    ) -> Result<T> {
        if let Some(given) = flag {
            return parse(given).map_err(|e| anyhow!("{field}: {e:#}"));
        }
        if !self.interactive {
            return parse(default).map_err(|e| anyhow!("{field} (default): {e:#}"));
        }
        loop {
            eprint!("{question} [{default}]: ");
            std::io::stderr().flush().ok();
            let mut line = String::new();
            if std::io::stdin().lock().read_line(&mut line)? == 0 {
                bail!("{field}: no answer (stdin closed)");
            }
            let line = line.trim();
            match parse(if line.is_empty() { default } else { line }) {
                Ok(value) => return Ok(value),
                Err(e) => eprintln!("  {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_repositories_become_rules_the_worker_accepts() {
        use crate::core::config::{var, CacheConfig};
        let rules = ci_rules("github:owner/repo, gitlab:group/sub/project", true).unwrap();
        let config =
            CacheConfig::from_vars(|name| (name == var::OIDC_RULES).then(|| rules.clone()))
                .unwrap();
        assert_eq!(config.oidc_rules.len(), 2);
        assert_eq!(config.oidc_rules[0].audience, None);
        assert_eq!(config.oidc_rules[0].permissions.to_string(), "read,write");
        assert_eq!(
            config.oidc_rules[1].claims,
            [("project_path".to_owned(), "group/sub/project".to_owned())]
        );
        assert_eq!(ci_rules("none", false).unwrap(), "");
        assert_eq!(
            ci_rules("github:owner/repo@refs/heads/*", false).unwrap(),
            r#"[{"claims":{"ref":"refs/heads/*","repository":"owner/repo"},"issuer":"https://token.actions.githubusercontent.com","permissions":"write"}]"#
        );
        for bad in [
            "owner/repo",
            "github:owner",
            "github:owner/*",
            "github:o/r/x",
            "bitbucket:o/r",
            "github:o w/r",
            ",",
        ] {
            assert!(ci_rules(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_follow_cloudflare_and_nix() {
        assert!(worker_name("nixflare-2").is_ok());
        for bad in ["", "-x", "x-", "Nix", "a_b", "a.b", &"a".repeat(64)] {
            assert!(worker_name(bad).is_err(), "{bad:?}");
        }
        assert!(bucket_name("abc").is_ok());
        for bad in ["ab", "-abc", "ABC", "a.bc"] {
            assert!(bucket_name(bad).is_err(), "{bad:?}");
        }
        assert!(cache_name("cache.example.org").is_ok());
        for bad in ["", "my cache", "a:b", "tab\there", "quote\"d", "ünï"] {
            assert!(cache_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sizes_and_days() {
        assert_eq!(size("500G").unwrap(), "500000000000");
        assert_eq!(size("2 TiB").unwrap(), (2u64 << 40).to_string());
        assert_eq!(size("123").unwrap(), "123");
        assert_eq!(size("none").unwrap(), "");
        assert_eq!(size("").unwrap(), "");
        for bad in ["lots", "1.5T", "5X", "0", "-3G", "99999999999T"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(retain_days("90").unwrap(), "90");
        assert_eq!(retain_days("30d").unwrap(), "30");
        assert_eq!(retain_days("forever").unwrap(), "");
        for bad in ["0", "soon", "-1", "36501"] {
            assert!(retain_days(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn access_and_upstreams() {
        assert_eq!(read_access("Private").unwrap(), "token");
        assert_eq!(read_access("public").unwrap(), "public");
        assert!(read_access("secret").is_err());
        assert_eq!(
            upstreams("https://a.org/, https://b.org").unwrap(),
            "https://a.org https://b.org"
        );
        assert_eq!(upstreams("none").unwrap(), "");
        assert!(upstreams("ftp://x").is_err());
    }
}
