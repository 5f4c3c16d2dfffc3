//! The issuer's signing keys: its discovery document (`ISSUER/.well-known/openid-
//! configuration`, whose `issuer` must be the issuer exactly and whose `jwks_uri` must be
//! https), its JWKS, and when to fetch them again ([`KeyCache`]). Keys are fetched again
//! after [`MAX_AGE_MS`] (and serve up to [`MAX_STALE_MS`] while that fails); a `kid` the
//! cache lacks fetches the JWKS again, at most once per
//! [`MIN_REFRESH_MS`] per issuer, so tokens naming made-up keys cannot make the worker
//! hammer the issuer.

use std::collections::HashMap;

use thiserror::Error;

use super::jwt::Alg;
use crate::core::json_read::{self, Value};

/// Longest a fetched JWKS is trusted without fetching it again.
pub const MAX_AGE_MS: u64 = 3_600_000;
/// Least time between two fetches of one issuer's keys.
pub const MIN_REFRESH_MS: u64 = 60_000;
/// Most keys kept per issuer (GitHub publishes a handful).
pub const MAX_KEYS: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JwksError {
    #[error("the discovery document is not a JSON object")]
    Discovery,
    #[error("the discovery document names issuer {0:?}, not the one configured")]
    IssuerMismatch(String),
    #[error("the discovery document's jwks_uri is not an https URL")]
    JwksUri,
    #[error("the JWKS is not a JSON object with a keys array")]
    Jwks,
}

/// One usable key: its id, algorithm, and the JWK members WebCrypto imports it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub kid: String,
    pub alg: Alg,
    /// `(member, value)`: `n`/`e` for RSA, `crv`/`x`/`y` for P-256 (base64url text).
    pub members: Vec<(&'static str, String)>,
}

/// `jwks_uri` from the discovery document of `issuer`.
pub fn jwks_uri(discovery: &[u8], issuer: &str) -> Result<String, JwksError> {
    let doc = json_read::parse(discovery).map_err(|_| JwksError::Discovery)?;
    doc.as_object().ok_or(JwksError::Discovery)?;
    let named = doc
        .get("issuer")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if named != issuer {
        return Err(JwksError::IssuerMismatch(named.chars().take(100).collect()));
    }
    doc.get("jwks_uri")
        .and_then(Value::as_str)
        .filter(|uri| uri.starts_with("https://") && !uri.contains(char::is_whitespace))
        .map(str::to_owned)
        .ok_or(JwksError::JwksUri)
}

/// The signing keys of a JWKS that RS256 or ES256 can use; others are skipped.
pub fn parse_jwks(bytes: &[u8]) -> Result<Vec<Key>, JwksError> {
    let doc = json_read::parse(bytes).map_err(|_| JwksError::Jwks)?;
    let Some(Value::Array(keys)) = doc.get("keys") else {
        return Err(JwksError::Jwks);
    };
    Ok(keys.iter().filter_map(key).take(MAX_KEYS).collect())
}

fn key(jwk: &Value) -> Option<Key> {
    let text = |name: &str| jwk.get(name).and_then(Value::as_str);
    if text("use").is_some_and(|u| u != "sig") {
        return None;
    }
    let kid = text("kid").filter(|k| !k.is_empty())?.to_owned();
    let (alg, members) = match text("kty")? {
        "RSA" => (
            Alg::Rs256,
            vec![("n", text("n")?.to_owned()), ("e", text("e")?.to_owned())],
        ),
        "EC" if text("crv") == Some("P-256") => (
            Alg::Es256,
            vec![
                ("crv", "P-256".to_owned()),
                ("x", text("x")?.to_owned()),
                ("y", text("y")?.to_owned()),
            ],
        ),
        _ => return None,
    };
    // A key that names its algorithm is used with that algorithm only.
    if text("alg").is_some_and(|named| named != alg.name()) {
        return None;
    }
    Some(Key { kid, alg, members })
}

/// Longest keys are still used after [`MAX_AGE_MS`] while fetching them again is under
/// way or failing (an issuer's outage does not stop its CI at once). Also how long a key
/// the issuer retired can outlive its retirement if every refresh fails (or is cut
/// short by a client that hangs up): an hour more than otherwise.
pub const MAX_STALE_MS: u64 = 2 * 3_600_000;

#[derive(Debug, Default)]
struct Issuer {
    keys: Vec<Key>,
    /// When the fetch whose keys these are started.
    fetched_at: Option<u64>,
    last_attempt: Option<u64>,
    /// A fetch started at `last_attempt` has not finished yet.
    in_flight: bool,
    /// The last fetch failed: until the next one, a key not known is "unavailable",
    /// not "unknown" (the client may try again rather than give up).
    last_failed: bool,
}

/// What to do about a token's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Verify with this key.
    Use(Key),
    /// Fetch the issuer's keys ([`KeyCache::fetching`], then look again).
    Fetch,
    /// Refuse: the key is unknown, and the keys were fetched less than a minute ago.
    Unknown,
    /// Refuse for now (the client may retry): the keys are being fetched, or the last
    /// fetch, less than a minute ago, failed.
    Unavailable,
}

/// What one isolate knows of each issuer's keys. Only issuers a rule names get here
/// (`super::screen` runs first), so it holds at most `MAX_RULES` issuers.
#[derive(Debug, Default)]
pub struct KeyCache {
    issuers: HashMap<String, Issuer>,
}

impl KeyCache {
    pub fn lookup(&self, issuer: &str, kid: &str, now: u64) -> Lookup {
        let known = self.issuers.get(issuer);
        let age = known
            .and_then(|i| i.fetched_at)
            .map(|at| now.saturating_sub(at));
        let key = known.and_then(|i| i.keys.iter().find(|k| k.kid == kid));
        if let (Some(key), true) = (key, age.is_some_and(|age| age < MAX_AGE_MS)) {
            return Lookup::Use(key.clone());
        }
        let since_attempt = known
            .and_then(|i| i.last_attempt)
            .map(|at| now.saturating_sub(at));
        if since_attempt.is_none_or(|since| since >= MIN_REFRESH_MS) {
            return Lookup::Fetch;
        }
        if let (Some(key), true) = (key, age.is_some_and(|age| age < MAX_STALE_MS)) {
            return Lookup::Use(key.clone());
        }
        // "Unknown" only on the word of a fetch that finished: one under way, one that
        // failed, and one that never finished (its request died) say nothing.
        if known.is_some_and(|i| i.in_flight || i.last_failed) {
            Lookup::Unavailable
        } else {
            Lookup::Unknown
        }
    }

    /// A fetch is starting (counted whatever its outcome, so failures are bounded too).
    pub fn fetching(&mut self, issuer: &str, now: u64) {
        let entry = self.issuers.entry(issuer.to_owned()).or_default();
        entry.last_attempt = Some(now);
        entry.in_flight = true;
    }

    /// The keys a fetch started at `started` found. A slower, older fetch finishing
    /// after a newer one changes nothing.
    pub fn fetched(&mut self, issuer: &str, keys: Vec<Key>, started: u64) {
        let entry = self.issuers.entry(issuer.to_owned()).or_default();
        if entry.fetched_at.is_some_and(|at| at > started) {
            return;
        }
        entry.keys = keys;
        entry.fetched_at = Some(started);
        if entry.last_attempt.is_none_or(|at| at <= started) {
            entry.in_flight = false;
            entry.last_failed = false;
        }
    }

    /// The fetch [`fetching`](Self::fetching) announced at `started` failed; keys
    /// already known stay usable within [`MAX_STALE_MS`].
    pub fn fetch_failed(&mut self, issuer: &str, started: u64) {
        let entry = self.issuers.entry(issuer.to_owned()).or_default();
        if entry.last_attempt.is_none_or(|at| at <= started) {
            entry.in_flight = false;
            entry.last_failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[
      {"kty":"RSA","kid":"r1","use":"sig","alg":"RS256","n":"AQAB","e":"AQAB"},
      {"kty":"EC","kid":"e1","crv":"P-256","x":"AA","y":"BB"},
      {"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"},
      {"kty":"oct","kid":"h1","k":"c2VjcmV0"},
      {"kty":"RSA","kid":"mismatch","alg":"ES256","n":"AQAB","e":"AQAB"},
      {"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"BB"}
    ]}"#;

    #[test]
    fn keeps_only_signing_keys_rs256_and_es256_can_use() {
        let keys = parse_jwks(JWKS.as_bytes()).unwrap();
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["r1", "e1"]);
        assert_eq!(keys[1].alg, Alg::Es256);
        assert_eq!(parse_jwks(b"[]"), Err(JwksError::Jwks));
    }

    #[test]
    fn discovery_must_name_the_issuer_exactly() {
        let doc = br#"{"issuer":"https://token.actions.githubusercontent.com","jwks_uri":"https://token.actions.githubusercontent.com/.well-known/jwks"}"#;
        let issuer = "https://token.actions.githubusercontent.com";
        assert!(jwks_uri(doc, issuer).unwrap().ends_with("/jwks"));
        assert!(matches!(
            jwks_uri(doc, "https://evil.example.org"),
            Err(JwksError::IssuerMismatch(_))
        ));
        let http = br#"{"issuer":"https://i","jwks_uri":"http://i/jwks"}"#;
        assert_eq!(jwks_uri(http, "https://i"), Err(JwksError::JwksUri));
    }

    /// The refresh bound: an unknown kid fetches at most once a minute per issuer;
    /// keys expire after an hour even when every kid is known.
    #[test]
    fn unknown_keys_fetch_at_most_once_a_minute_and_keys_expire() {
        let issuer = "https://i";
        let keys = parse_jwks(JWKS.as_bytes()).unwrap();
        let mut cache = KeyCache::default();
        assert_eq!(cache.lookup(issuer, "r1", 0), Lookup::Fetch);
        cache.fetching(issuer, 0);
        cache.fetched(issuer, keys.clone(), 0);
        assert!(matches!(cache.lookup(issuer, "r1", 1_000), Lookup::Use(k) if k.kid == "r1"));
        // Made-up kids: one fetch a minute, however many tokens name them.
        let mut fetches = 0;
        for second in 0..600u64 {
            if cache.lookup(issuer, &format!("made-up-{second}"), second * 1000) == Lookup::Fetch {
                fetches += 1;
                cache.fetching(issuer, second * 1000);
                cache.fetched(issuer, keys.clone(), second * 1000);
            }
        }
        // Ten minutes after the first fetch: one a minute (at 60, 120, ..., 540 s).
        assert_eq!(fetches, 9);
        // A failed fetch counts too.
        let mut failing = KeyCache::default();
        failing.fetching(issuer, 0);
        failing.fetch_failed(issuer, 0);
        assert_eq!(failing.lookup(issuer, "r1", 59_999), Lookup::Unavailable);
        assert_eq!(failing.lookup(issuer, "r1", 60_000), Lookup::Fetch);
        // A failed refresh keeps the fresh keys it had.
        let mut refreshing = KeyCache::default();
        refreshing.fetching(issuer, 0);
        refreshing.fetched(issuer, keys.clone(), 0);
        refreshing.fetching(issuer, 60_000);
        refreshing.fetch_failed(issuer, 60_000);
        assert!(matches!(
            refreshing.lookup(issuer, "r1", 61_000),
            Lookup::Use(_)
        ));
        assert_eq!(
            refreshing.lookup(issuer, "new", 61_000),
            Lookup::Unavailable
        );
        // An hour after the fetch, known keys are fetched again before use; while that
        // fetch runs (or after it failed) the old keys serve, for a while.
        let mut aged = KeyCache::default();
        aged.fetching(issuer, 0);
        aged.fetched(issuer, keys.clone(), 0);
        assert_eq!(aged.lookup(issuer, "r1", MAX_AGE_MS), Lookup::Fetch);
        aged.fetching(issuer, MAX_AGE_MS);
        assert!(matches!(
            aged.lookup(issuer, "r1", MAX_AGE_MS + 1),
            Lookup::Use(_)
        ));
        aged.fetch_failed(issuer, MAX_AGE_MS);
        assert!(matches!(
            aged.lookup(issuer, "r1", MAX_AGE_MS + 2),
            Lookup::Use(_)
        ));
        let mut outage = KeyCache::default();
        outage.fetching(issuer, 0);
        outage.fetched(issuer, keys, 0);
        outage.fetching(issuer, MAX_STALE_MS);
        outage.fetch_failed(issuer, MAX_STALE_MS);
        assert_eq!(
            outage.lookup(issuer, "r1", MAX_STALE_MS + 1),
            Lookup::Unavailable
        );
    }

    /// Requests that arrive while the first fetch runs are told to try again, not that
    /// their key is unknown, and so are those after a fetch that never finished.
    #[test]
    fn a_fetch_under_way_makes_others_wait_not_fail() {
        let issuer = "https://i";
        let mut cache = KeyCache::default();
        assert_eq!(cache.lookup(issuer, "r1", 0), Lookup::Fetch);
        cache.fetching(issuer, 0);
        assert_eq!(cache.lookup(issuer, "r1", 10), Lookup::Unavailable);
        assert_eq!(cache.lookup(issuer, "r1", 50_000), Lookup::Unavailable);
        assert_eq!(cache.lookup(issuer, "r1", MIN_REFRESH_MS), Lookup::Fetch);
    }

    /// Two fetches overlap: the older one's keys, arriving last, do not replace the newer.
    #[test]
    fn an_older_fetch_never_replaces_a_newer_one() {
        let issuer = "https://i";
        let keys = parse_jwks(JWKS.as_bytes()).unwrap();
        let mut cache = KeyCache::default();
        cache.fetching(issuer, 0);
        cache.fetching(issuer, MIN_REFRESH_MS);
        cache.fetched(issuer, keys[..1].to_vec(), MIN_REFRESH_MS);
        cache.fetched(issuer, Vec::new(), 0);
        cache.fetch_failed(issuer, 0);
        assert!(matches!(
            cache.lookup(issuer, "r1", MIN_REFRESH_MS + 1),
            Lookup::Use(_)
        ));
        assert_eq!(
            cache.lookup(issuer, "e1", MIN_REFRESH_MS + 1),
            Lookup::Unknown
        );
    }
}
