//! The cache's configuration, read from worker variables (`[vars]` in wrangler.toml,
//! `.dev.vars` locally). Everything here is public: the worker holds no secret.

use thiserror::Error;

use crate::core::nix::keys::{KeyError, PublicKey};
use crate::core::oidc::rules::{parse_rules, Rule, RuleError};
use crate::core::token::Permissions;

/// Variable names, in one place for the worker, wrangler.toml and the dev script.
pub mod var {
    pub const STORE_DIR: &str = "STORE_DIR";
    pub const WANT_MASS_QUERY: &str = "WANT_MASS_QUERY";
    pub const PRIORITY: &str = "PRIORITY";
    /// Nix public keys (`name:base64`), separated by spaces or commas.
    pub const PUBLIC_KEYS: &str = "PUBLIC_KEYS";
    /// Public keys whose upload tokens the cache accepts (same format).
    pub const TOKEN_PUBLIC_KEYS: &str = "TOKEN_PUBLIC_KEYS";
    /// Largest request body, in bytes: Cloudflare's plan limit (100 MB on Free/Pro).
    pub const MAX_REQUEST_BYTES: &str = "MAX_REQUEST_BYTES";
    /// Age in seconds after which the cron aborts an unfinished multipart upload.
    pub const ABANDONED_UPLOAD_SECONDS: &str = "ABANDONED_UPLOAD_SECONDS";
    /// Most multipart uploads open at once (default 1000).
    pub const MAX_OPEN_UPLOADS: &str = "MAX_OPEN_UPLOADS";
    /// Most narinfos one `POST /_nixflare/narinfos` may publish (default 64, at most
    /// 200; 0: no batches, one PUT per narinfo).
    pub const MAX_BATCH_NARINFOS: &str = "MAX_BATCH_NARINFOS";
    /// Binary caches (http/https URLs, space-separated) whose paths a published
    /// narinfo may reference without this cache holding them, e.g.
    /// `https://cache.nixos.org`. Empty: this cache must hold every closure whole.
    pub const UPSTREAM_CACHES: &str = "UPSTREAM_CACHES";
    /// Days a pushed path stays a GC root (its closure kept) after its last push.
    /// Unset: roots never expire (only `MAX_CACHE_BYTES` and orphans remove anything).
    pub const RETAIN_DAYS: &str = "RETAIN_DAYS";
    /// Most bytes of NAR files the kept closures may take; past it the newest roots that
    /// fit are kept and the others' closures go. Unset: no budget.
    pub const MAX_CACHE_BYTES: &str = "MAX_CACHE_BYTES";
    /// Hours between removing a path's narinfo and removing its NAR and side files
    /// (and before an unreferenced object counts as an orphan). At least
    /// [`super::MIN_GC_GRACE_HOURS`]: longer than a narinfo lives in the edge cache.
    pub const GC_GRACE_HOURS: &str = "GC_GRACE_HOURS";
    /// Who may read: `public` (default: anyone, served from the edge cache) or `token`
    /// (a private cache: every read needs a valid, unrevoked token with `read`).
    pub const READ_ACCESS: &str = "READ_ACCESS";
    /// A private cache looks up a read token's revocation at most this often per token
    /// and isolate (default 60, 0 to 3600): how long a revoked read token may still read.
    pub const REVOCATION_CHECK_SECONDS: &str = "REVOCATION_CHECK_SECONDS";
    /// CI identities admitted by their OIDC ID tokens: a JSON array of rules (issuer,
    /// audience, claim patterns, permissions; `crate::core::oidc::rules`). Unset: none.
    pub const OIDC_RULES: &str = "OIDC_RULES";
    /// Tests only: seconds added to the time the cron sees (never to token expiry), so a
    /// test can age what the cron cleans up. Unset in a deployment.
    pub const TEST_CLOCK_OFFSET_SECONDS: &str = "TEST_CLOCK_OFFSET_SECONDS";
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{name} must be an absolute path without a trailing '/'")]
    StoreDir { name: &'static str },
    #[error("{name} must be 0, 1, true or false")]
    Bool { name: &'static str },
    #[error("{name} must be a whole number")]
    Number { name: &'static str },
    #[error("{name} must be a whole number of at least {minimum}")]
    AtLeast { name: &'static str, minimum: u64 },
    #[error("{name} must be at most {maximum}")]
    AtMost { name: &'static str, maximum: u64 },
    #[error("{name} entry {index}: {source}")]
    Key {
        name: &'static str,
        index: usize,
        source: KeyError,
    },
    #[error("{name} lists the key name {key:?} twice (a rotated key needs a new name)")]
    DuplicateName { name: &'static str, key: String },
    #[error("{name} entry {index}: must be an http:// or https:// URL without spaces, query or fragment")]
    Upstream { name: &'static str, index: usize },
    #[error("{name} lists more than {MAX_UPSTREAM_CACHES} caches")]
    TooManyUpstreams { name: &'static str },
    #[error("{name} must be public or token")]
    ReadAccess { name: &'static str },
    #[error("READ_ACCESS=token needs TOKEN_PUBLIC_KEYS or an OIDC rule with read: otherwise no reader could ever be admitted")]
    PrivateWithoutTokenKeys,
    #[error("PUBLIC_KEYS and TOKEN_PUBLIC_KEYS share the key {key:?}: a narinfo signature could pass as a token signature's key and the reverse; use separate keys")]
    SharedKey { key: String },
    #[error(transparent)]
    OidcRules(#[from] RuleError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub store_dir: String,
    pub want_mass_query: bool,
    pub priority: u32,
    /// Keys whose narinfo signatures the cache accepts, and that it advertises.
    pub public_keys: Vec<PublicKey>,
    /// Keys whose upload tokens the cache accepts.
    pub token_keys: Vec<PublicKey>,
    /// Bodies above this are refused with 413 before a byte is read.
    pub max_request_bytes: u64,
    /// Unfinished multipart uploads older than this are aborted by the cron.
    pub abandoned_upload_seconds: u64,
    /// New multipart uploads are refused (429) while this many are open.
    pub max_open_uploads: u32,
    /// Most narinfos one batch request may publish.
    pub max_batch_narinfos: u32,
    /// Added to the cron's clock (tests only).
    pub test_clock_offset_seconds: u64,
    /// Caches a narinfo's references may come from (no trailing '/').
    pub upstream_caches: Vec<String>,
    pub retain_days: Option<u64>,
    pub max_cache_bytes: Option<u64>,
    pub gc_grace_hours: u64,
    pub read_access: ReadAccess,
    /// `REVOCATION_CHECK_SECONDS`, in milliseconds.
    pub revocation_check_ms: u64,
    /// `OIDC_RULES`: which CI identities may do what.
    pub oidc_rules: Vec<Rule>,
}

/// Who may read the cache's files (`READ_ACCESS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadAccess {
    /// Anyone: reads take no token and the edge cache keeps public copies.
    #[default]
    Public,
    /// A private cache: every read needs a token with `read` (`crate::core::reader`).
    Token,
}

impl ReadAccess {
    /// `READ_ACCESS` as the worker holds it (unset or empty: public). The read path
    /// parses only this variable; anything but the two words fails closed (500).
    pub fn parse(value: Option<&str>) -> Result<ReadAccess, ConfigError> {
        match value.map(str::trim).unwrap_or_default() {
            "" | "public" => Ok(ReadAccess::Public),
            "token" => Ok(ReadAccess::Token),
            _ => Err(ConfigError::ReadAccess {
                name: var::READ_ACCESS,
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ReadAccess::Public => "public",
            ReadAccess::Token => "token",
        }
    }
}

impl core::str::FromStr for ReadAccess {
    type Err = ConfigError;
    fn from_str(text: &str) -> Result<Self, ConfigError> {
        Self::parse(Some(text))
    }
}

impl core::fmt::Display for ReadAccess {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

crate::core::serde_via_text!(ReadAccess);

/// Default `REVOCATION_CHECK_SECONDS`: a minute of reads for a revoked read token, one
/// R2 HEAD per token and isolate per minute.
pub const DEFAULT_REVOCATION_CHECK_SECONDS: u64 = 60;
/// Largest `REVOCATION_CHECK_SECONDS`: an hour.
pub const MAX_REVOCATION_CHECK_SECONDS: u64 = 3600;

/// Most upstream caches: each missing reference costs a HEAD per upstream.
pub const MAX_UPSTREAM_CACHES: usize = 4;

/// The shortest grace between a narinfo's removal and its NAR's: a narinfo lives a day
/// in the edge cache (`Kind::Narinfo`'s Cache-Control), and no client may be told about
/// a path whose NAR is gone.
pub const MIN_GC_GRACE_HOURS: u64 = crate::core::gc::EDGE_HOLD_MS / crate::core::gc::HOUR_MS;
/// Two days: a day of edge cache, and a day for a push that uploaded a NAR but not yet
/// its narinfo.
pub const DEFAULT_GC_GRACE_HOURS: u64 = 48;

/// The shortest `ABANDONED_UPLOAD_SECONDS`: a client between two parts (a laptop lid
/// closed for a minute) must not lose its upload to the cron.
pub const MIN_ABANDONED_UPLOAD_SECONDS: u64 = 3600;

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            store_dir: "/nix/store".to_owned(),
            want_mass_query: true,
            priority: 40,
            public_keys: Vec::new(),
            token_keys: Vec::new(),
            max_request_bytes: 100_000_000,
            // A day: long enough to resume after a laptop sleeps, far below R2's own
            // seven-day expiry of unfinished uploads.
            abandoned_upload_seconds: 86_400,
            max_open_uploads: crate::core::multipart::MAX_OPEN_UPLOADS,
            max_batch_narinfos: crate::core::publish::DEFAULT_BATCH_NARINFOS,
            test_clock_offset_seconds: 0,
            upstream_caches: Vec::new(),
            retain_days: None,
            max_cache_bytes: None,
            gc_grace_hours: DEFAULT_GC_GRACE_HOURS,
            read_access: ReadAccess::Public,
            revocation_check_ms: DEFAULT_REVOCATION_CHECK_SECONDS * 1000,
            oidc_rules: Vec::new(),
        }
    }
}

/// `UPSTREAM_CACHES`: URLs as Nix takes substituters, without a trailing '/'.
fn parse_upstreams(list: &str) -> Result<Vec<String>, ConfigError> {
    let name = var::UPSTREAM_CACHES;
    let mut caches = Vec::new();
    for (index, url) in list.split_whitespace().enumerate() {
        let rest = url
            .strip_prefix("https://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or(ConfigError::Upstream { name, index })?;
        let valid = !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.chars().any(|c| c.is_control() || "?#\\\"".contains(c));
        if !valid {
            return Err(ConfigError::Upstream { name, index });
        }
        let url = url.trim_end_matches('/').to_owned();
        if !caches.contains(&url) {
            caches.push(url);
        }
    }
    if caches.len() > MAX_UPSTREAM_CACHES {
        return Err(ConfigError::TooManyUpstreams { name });
    }
    Ok(caches)
}

impl CacheConfig {
    /// Builds the config from a variable lookup; unset or empty variables keep their
    /// defaults.
    pub fn from_vars(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let mut config = Self::default();
        if let Some(dir) = get(var::STORE_DIR) {
            let dir = dir.trim();
            let valid = dir.starts_with('/')
                && (dir.len() == 1 || !dir.ends_with('/'))
                && !dir.chars().any(char::is_control);
            if !valid {
                return Err(ConfigError::StoreDir {
                    name: var::STORE_DIR,
                });
            }
            config.store_dir = dir.to_owned();
        }
        if let Some(flag) = get(var::WANT_MASS_QUERY) {
            config.want_mass_query = match flag.trim() {
                "1" | "true" => true,
                "0" | "false" => false,
                _ => {
                    return Err(ConfigError::Bool {
                        name: var::WANT_MASS_QUERY,
                    })
                }
            };
        }
        if let Some(priority) = get(var::PRIORITY) {
            config.priority = priority.trim().parse().map_err(|_| ConfigError::Number {
                name: var::PRIORITY,
            })?;
        }
        if let Some(limit) = get(var::MAX_REQUEST_BYTES) {
            config.max_request_bytes = limit.trim().parse().map_err(|_| ConfigError::Number {
                name: var::MAX_REQUEST_BYTES,
            })?;
        }
        if let Some(age) = get(var::ABANDONED_UPLOAD_SECONDS) {
            config.abandoned_upload_seconds = age
                .trim()
                .parse()
                .ok()
                .filter(|&age| age >= MIN_ABANDONED_UPLOAD_SECONDS)
                .ok_or(ConfigError::AtLeast {
                    name: var::ABANDONED_UPLOAD_SECONDS,
                    minimum: MIN_ABANDONED_UPLOAD_SECONDS,
                })?;
        }
        if let Some(offset) = get(var::TEST_CLOCK_OFFSET_SECONDS) {
            config.test_clock_offset_seconds =
                offset.trim().parse().map_err(|_| ConfigError::Number {
                    name: var::TEST_CLOCK_OFFSET_SECONDS,
                })?;
        }
        if let Some(count) = get(var::MAX_OPEN_UPLOADS) {
            config.max_open_uploads = count
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=crate::core::multipart::MAX_OPEN_UPLOADS).contains(n))
                .ok_or(ConfigError::Number {
                    name: var::MAX_OPEN_UPLOADS,
                })?;
        }
        if let Some(count) = get(var::MAX_BATCH_NARINFOS) {
            config.max_batch_narinfos = count
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= crate::core::publish::MAX_BATCH_NARINFOS)
                .ok_or(ConfigError::Number {
                    name: var::MAX_BATCH_NARINFOS,
                })?;
        }
        let at_least = |name: &'static str, minimum: u64| {
            move |text: String| {
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n >= minimum)
                    .ok_or(ConfigError::AtLeast { name, minimum })
            }
        };
        // Bounded so every time and size stays an exact JSON number (2^53).
        let at_most = |name: &'static str, maximum: u64| {
            move |n: u64| {
                (n <= maximum)
                    .then_some(n)
                    .ok_or(ConfigError::AtMost { name, maximum })
            }
        };
        config.retain_days = get(var::RETAIN_DAYS)
            .map(at_least(var::RETAIN_DAYS, 1))
            .transpose()?
            .map(at_most(var::RETAIN_DAYS, 36_500))
            .transpose()?;
        config.max_cache_bytes = get(var::MAX_CACHE_BYTES)
            .map(at_least(var::MAX_CACHE_BYTES, 1))
            .transpose()?
            .map(at_most(var::MAX_CACHE_BYTES, (1 << 53) - 1))
            .transpose()?;
        if let Some(hours) = get(var::GC_GRACE_HOURS) {
            config.gc_grace_hours =
                at_most(var::GC_GRACE_HOURS, 24 * 36_500)(at_least(
                    var::GC_GRACE_HOURS,
                    MIN_GC_GRACE_HOURS,
                )(hours)?)?;
        }
        config.read_access = ReadAccess::parse(get(var::READ_ACCESS).as_deref())?;
        if let Some(seconds) = get(var::REVOCATION_CHECK_SECONDS) {
            let name = var::REVOCATION_CHECK_SECONDS;
            let seconds = seconds
                .trim()
                .parse::<u64>()
                .map_err(|_| ConfigError::Number { name })?;
            config.revocation_check_ms =
                at_most(name, MAX_REVOCATION_CHECK_SECONDS)(seconds)? * 1000;
        }
        if let Some(list) = get(var::UPSTREAM_CACHES) {
            config.upstream_caches = parse_upstreams(&list)?;
        }
        config.public_keys = parse_keys(var::PUBLIC_KEYS, get(var::PUBLIC_KEYS))?;
        config.token_keys = parse_keys(var::TOKEN_PUBLIC_KEYS, get(var::TOKEN_PUBLIC_KEYS))?;
        // One key signing both narinfos and tokens would let whoever holds it for one
        // purpose act for the other; the domain prefix of token signatures is the
        // second line of defence, not the first.
        if let Some(shared) = config
            .public_keys
            .iter()
            .find(|k| config.token_keys.iter().any(|t| t.same_key(k)))
        {
            return Err(ConfigError::SharedKey {
                key: shared.to_string(),
            });
        }
        config.oidc_rules = parse_rules(&get(var::OIDC_RULES).unwrap_or_default())?;
        let oidc_reads = config
            .oidc_rules
            .iter()
            .any(|rule| rule.permissions.contains(Permissions::READ));
        if config.read_access == ReadAccess::Token && config.token_keys.is_empty() && !oidc_reads {
            return Err(ConfigError::PrivateWithoutTokenKeys);
        }
        Ok(config)
    }

    /// The time the cron and the index see, in Unix milliseconds (`TEST_CLOCK_OFFSET_SECONDS`
    /// added).
    pub fn clock_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add(self.test_clock_offset_seconds.saturating_mul(1000))
    }

    /// The retention settings in the index's units (milliseconds, bytes).
    pub fn retention(&self) -> crate::core::gc::Retention {
        use crate::core::gc::{DAY_MS, HOUR_MS};
        crate::core::gc::Retention {
            retain_ms: self.retain_days.map(|days| days.saturating_mul(DAY_MS)),
            budget_bytes: self.max_cache_bytes,
            grace_ms: self.gc_grace_hours.saturating_mul(HOUR_MS),
        }
    }

    /// The body of `public-keys`: one key per line.
    pub fn public_keys_text(&self) -> String {
        self.public_keys
            .iter()
            .map(|key| format!("{key}\n"))
            .collect()
    }

    /// The body of `nix-cache-info`.
    pub fn nix_cache_info(&self) -> String {
        format!(
            "StoreDir: {}\nWantMassQuery: {}\nPriority: {}\n",
            self.store_dir,
            u8::from(self.want_mass_query),
            self.priority
        )
    }
}

fn parse_keys(name: &'static str, value: Option<String>) -> Result<Vec<PublicKey>, ConfigError> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let keys: Vec<PublicKey> = value
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .enumerate()
        .map(|(index, key)| {
            key.parse().map_err(|source| ConfigError::Key {
                name,
                index,
                source,
            })
        })
        .collect::<Result<_, _>>()?;
    for (i, key) in keys.iter().enumerate() {
        if keys[..i].iter().any(|k| k.name() == key.name()) {
            return Err(ConfigError::DuplicateName {
                name,
                key: key.name().to_owned(),
            });
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<CacheConfig, ConfigError> {
        CacheConfig::from_vars(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn retention_settings_are_bounded() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let config = CacheConfig::from_vars(vars(&[
            (var::RETAIN_DAYS, "30"),
            (var::MAX_CACHE_BYTES, "1000"),
        ]))
        .unwrap();
        assert_eq!(config.retain_days, Some(30));
        assert_eq!(config.max_cache_bytes, Some(1000));
        assert_eq!(config.gc_grace_hours, DEFAULT_GC_GRACE_HOURS);
        let defaults = CacheConfig::from_vars(vars(&[(var::RETAIN_DAYS, "")])).unwrap();
        assert_eq!(
            (defaults.retain_days, defaults.max_cache_bytes),
            (None, None)
        );
        for bad in [
            &[(var::RETAIN_DAYS, "0")][..],
            &[(var::RETAIN_DAYS, "36501")],
            &[(var::MAX_CACHE_BYTES, "9007199254740992")],
            &[(var::GC_GRACE_HOURS, "24")],
            &[(var::GC_GRACE_HOURS, "x")],
        ] {
            assert!(CacheConfig::from_vars(vars(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults() {
        let config = from(&[]).unwrap();
        assert_eq!(
            config.nix_cache_info(),
            "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
        );
        assert!(config.public_keys.is_empty());
        assert_eq!(config.abandoned_upload_seconds, 86_400);
    }

    #[test]
    fn upstream_caches() {
        let config = from(&[(
            var::UPSTREAM_CACHES,
            " https://cache.nixos.org/ http://127.0.0.1:8788  https://cache.nixos.org",
        )])
        .unwrap();
        assert_eq!(
            config.upstream_caches,
            ["https://cache.nixos.org", "http://127.0.0.1:8788"]
        );
        assert!(from(&[]).unwrap().upstream_caches.is_empty());
        for bad in [
            "cache.nixos.org",
            "ftp://x",
            "https://",
            "https:///x",
            "https://x?y",
            "https://x#y",
            "file:///tmp/cache",
        ] {
            assert_eq!(
                from(&[(var::UPSTREAM_CACHES, bad)]),
                Err(ConfigError::Upstream {
                    name: var::UPSTREAM_CACHES,
                    index: 0
                }),
                "{bad}"
            );
        }
        let five = "http://a http://b http://c http://d http://e";
        assert!(matches!(
            from(&[(var::UPSTREAM_CACHES, five)]),
            Err(ConfigError::TooManyUpstreams { .. })
        ));
    }

    #[test]
    fn overrides() {
        let config = from(&[
            (var::STORE_DIR, "/gnu/store"),
            (var::WANT_MASS_QUERY, "false"),
            (var::PRIORITY, " 10 "),
            (
                var::PUBLIC_KEYS,
                "a:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=, b:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=",
            ),
        ])
        .unwrap();
        assert_eq!(
            config.nix_cache_info(),
            "StoreDir: /gnu/store\nWantMassQuery: 0\nPriority: 10\n"
        );
        let names: Vec<_> = config.public_keys.iter().map(|k| k.name()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            config.public_keys_text(),
            "a:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=\nb:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=\n"
        );
    }

    #[test]
    fn rejects_with_the_variable_named() {
        let err = |pairs| from(pairs).unwrap_err().to_string();
        assert!(err(&[(var::STORE_DIR, "nix/store")]).starts_with("STORE_DIR"));
        assert!(err(&[(var::STORE_DIR, "/nix/store/")]).starts_with("STORE_DIR"));
        assert!(err(&[(var::STORE_DIR, "/nix\nEvil: 1")]).starts_with("STORE_DIR"));
        assert!(err(&[(var::WANT_MASS_QUERY, "yes")]).starts_with("WANT_MASS_QUERY"));
        assert!(err(&[(var::PRIORITY, "-1")]).starts_with("PRIORITY"));
        assert!(err(&[(var::MAX_REQUEST_BYTES, "100MB")]).starts_with("MAX_REQUEST_BYTES"));
        assert_eq!(
            err(&[(var::ABANDONED_UPLOAD_SECONDS, "0")]),
            "ABANDONED_UPLOAD_SECONDS must be a whole number of at least 3600"
        );
        assert!(err(&[(var::TOKEN_PUBLIC_KEYS, "x")]).starts_with("TOKEN_PUBLIC_KEYS entry 0"));
        assert_eq!(
            err(&[(
                var::PUBLIC_KEYS,
                "ok:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184= broken"
            )]),
            "PUBLIC_KEYS entry 1: public key has no ':' between name and key"
        );
        let key = "a:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=";
        let same_bytes_other_name = "b:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=";
        let shared = from(&[
            (var::PUBLIC_KEYS, key),
            (var::TOKEN_PUBLIC_KEYS, same_bytes_other_name),
        ]);
        assert!(matches!(shared, Err(ConfigError::SharedKey { .. })));
        let other = "a:lZK8TvdFo6yEOp1D7yQkeLwxrshDPF1iwDJ6pNX1xHE=";
        let both = format!("{key} {other}");
        assert!(from(&[(var::PUBLIC_KEYS, &both)])
            .unwrap_err()
            .to_string()
            .starts_with("PUBLIC_KEYS lists the key name \"a\" twice"));
    }

    #[test]
    fn read_access_fails_closed() {
        let key = "t:Z5WfzIfU77kmab70KqLM6aL03xWvc39APCUCxXS0184=";
        assert_eq!(from(&[]).unwrap().read_access, ReadAccess::Public);
        let private =
            from(&[(var::READ_ACCESS, " token "), (var::TOKEN_PUBLIC_KEYS, key)]).unwrap();
        assert_eq!(private.read_access, ReadAccess::Token);
        assert_eq!(private.revocation_check_ms, 60_000);
        // A typo must not serve a private cache publicly: it is an error, not a default.
        for wrong in ["private", "Token", "tokens", "none"] {
            assert_eq!(
                from(&[(var::READ_ACCESS, wrong), (var::TOKEN_PUBLIC_KEYS, key)])
                    .unwrap_err()
                    .to_string(),
                "READ_ACCESS must be public or token"
            );
            assert!(ReadAccess::parse(Some(wrong)).is_err());
        }
        assert_eq!(
            from(&[(var::READ_ACCESS, "token")]).unwrap_err(),
            ConfigError::PrivateWithoutTokenKeys
        );
        let every_request = from(&[
            (var::READ_ACCESS, "token"),
            (var::TOKEN_PUBLIC_KEYS, key),
            (var::REVOCATION_CHECK_SECONDS, "0"),
        ])
        .unwrap();
        assert_eq!(every_request.revocation_check_ms, 0);
        let err = |pairs| from(pairs).unwrap_err().to_string();
        assert!(
            err(&[(var::REVOCATION_CHECK_SECONDS, "3601")]).starts_with("REVOCATION_CHECK_SECONDS")
        );
        assert!(
            err(&[(var::REVOCATION_CHECK_SECONDS, "1m")]).starts_with("REVOCATION_CHECK_SECONDS")
        );
    }

    #[test]
    fn oidc_rules_are_parsed_and_a_private_cache_may_admit_readers_by_them_alone() {
        let rule = |permissions: &str| {
            format!(
                r#"[{{"issuer": "https://token.actions.githubusercontent.com",
                  "audience": "https://cache.example.org",
                  "claims": {{"repository": "owner/repo"}}, "permissions": "{permissions}"}}]"#
            )
        };
        let config = from(&[(var::OIDC_RULES, &rule("read,write"))]).unwrap();
        assert_eq!(config.oidc_rules.len(), 1);
        assert!(from(&[]).unwrap().oidc_rules.is_empty());
        let private = |permissions: &str| {
            from(&[
                (var::READ_ACCESS, "token"),
                (var::OIDC_RULES, &rule(permissions)),
            ])
        };
        assert!(private("read").is_ok());
        assert_eq!(
            private("write").unwrap_err(),
            ConfigError::PrivateWithoutTokenKeys
        );
        let bad = from(&[(var::OIDC_RULES, "[{\"issuer\": \"http://x\"}]")]).unwrap_err();
        assert!(bad.to_string().starts_with("OIDC_RULES rule 0:"), "{bad}");
    }
}
