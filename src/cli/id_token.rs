//! A CI job's own identity as the credential: the OIDC ID token its provider issues, with
//! the cache's URL as audience, so no long-lived token is stored as a CI secret.
//!
//! - GitHub Actions (a job with `permissions: id-token: write`): asked for at
//!   `ACTIONS_ID_TOKEN_REQUEST_URL` with `ACTIONS_ID_TOKEN_REQUEST_TOKEN`, and asked for
//!   again before it expires (GitHub's live about five minutes), so a push of any length
//!   keeps going.
//! - GitLab CI: the job declares `id_tokens: NIXFLARE_TOKEN: aud: CACHE_URL`, and the
//!   token arrives as `NIXFLARE_TOKEN` like any other (it lives as long as the job).
//!
//! The token is sent as `Authorization: Bearer` and never printed.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use ureq::Agent;

use crate::core::oidc::jwt;

pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// A token with less life left than this is replaced before it is sent: a request that
/// starts with it must reach the worker in time.
const RENEW_BEFORE_SECONDS: u64 = 120;

/// Where ID tokens come from: GitHub Actions' token endpoint.
pub struct IdTokens {
    request_url: String,
    request_token: String,
    audience: String,
    agent: Agent,
    /// The current token and its `exp`.
    current: Mutex<Option<(String, u64)>>,
}

impl IdTokens {
    /// The job's ID-token endpoint, if it has one, for tokens naming `cache_url`.
    pub fn from_env(cache_url: &str) -> Result<Option<Self>> {
        let (Ok(request_url), Ok(request_token)) = (
            std::env::var(REQUEST_URL_VAR),
            std::env::var(REQUEST_TOKEN_VAR),
        ) else {
            return Ok(None);
        };
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Ok(Some(Self {
            request_url,
            request_token,
            audience: audience_of(cache_url)?,
            agent: Agent::new_with_config(config),
            current: Mutex::new(None),
        }))
    }

    /// A token with at least [`RENEW_BEFORE_SECONDS`] to live, asked for if need be.
    pub fn token(&self, now: u64) -> Result<String> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| anyhow!("ID token lock poisoned"))?;
        if let Some((token, exp)) = current.as_ref() {
            if !needs_renewal(*exp, now) {
                return Ok(token.clone());
            }
        }
        let (token, exp) = self
            .request()
            .context("asking the CI provider for an ID token")?;
        *current = Some((token.clone(), exp));
        Ok(token)
    }

    /// Asks, retrying transport failures and 5xx (not a refusal: a 4xx will not change).
    fn request(&self) -> Result<(String, u64)> {
        let mut last = None;
        for delay in [0, 1, 2, 4] {
            std::thread::sleep(Duration::from_secs(delay));
            match self.request_once() {
                Ok(token) => return Ok(token),
                Err(Attempt::Refused(err)) => return Err(err),
                Err(Attempt::Failed(err)) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no attempt made")))
    }

    fn request_once(&self) -> Result<(String, u64), Attempt> {
        let mut response = self
            .agent
            .get(&self.request_url)
            .query("audience", &self.audience)
            .header("Authorization", format!("bearer {}", self.request_token))
            .header("Accept", "application/json")
            .call()
            .map_err(|err| Attempt::Failed(err.into()))?;
        let status = response.status().as_u16();
        match status {
            200 => {}
            500..=599 => return Err(Attempt::Failed(anyhow!("the ID-token endpoint answered HTTP {status}"))),
            _ => return Err(Attempt::Refused(anyhow!(
                "the ID-token endpoint answered HTTP {status} (does the job have `permissions: id-token: write`?)"
            ))),
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(|err| Attempt::Failed(err.into()))?;
        Self::token_of(&text).map_err(Attempt::Refused)
    }

    fn token_of(text: &str) -> Result<(String, u64)> {
        let body: serde_json::Value = serde_json::from_str(text)?;
        let token = body
            .get("value")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| anyhow!("the ID-token endpoint's answer has no \"value\""))?;
        let exp = jwt::parse(token)
            .context("the CI provider's ID token does not parse")?
            .claims
            .exp;
        Ok((token.to_owned(), exp))
    }
}

enum Attempt {
    /// Worth another try.
    Failed(anyhow::Error),
    /// Will not change by asking again.
    Refused(anyhow::Error),
}

/// Whether a token expiring at `exp` is to be replaced before a request at `now`.
fn needs_renewal(exp: u64, now: u64) -> bool {
    now.saturating_add(RENEW_BEFORE_SECONDS) >= exp
}

/// The cache's URL as the audience: `scheme://host[:port]` as the worker sees its own
/// origin (host lowercased, a default port dropped), read by the same parser the HTTP
/// client uses, so the token names the host it is sent to; a `user:password@` is not
/// passed on to the CI provider.
fn audience_of(url: &str) -> Result<String> {
    let uri: ureq::http::Uri = url
        .parse()
        .with_context(|| format!("the cache URL {url:?} does not parse"))?;
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        bail!("the cache URL {url:?} has no scheme or host");
    };
    let port = match (scheme, uri.port_u16()) {
        ("https", Some(443)) | ("http", Some(80)) | (_, None) => String::new(),
        (_, Some(port)) => format!(":{port}"),
    };
    Ok(format!("{scheme}://{}{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept while it has more than two minutes to live (tests/e2e/test_oidc.py issues
    /// 100-second tokens so that every request of its push renews).
    #[test]
    fn a_token_is_renewed_two_minutes_before_it_expires() {
        assert!(!needs_renewal(1_000, 1_000 - RENEW_BEFORE_SECONDS - 1));
        assert!(needs_renewal(1_000, 1_000 - RENEW_BEFORE_SECONDS));
        assert!(needs_renewal(1_000, 2_000));
        assert!(needs_renewal(100, 0), "a 100 s token is renewed at once");
    }

    #[test]
    fn the_audience_is_the_origin_requests_go_to() {
        let audience = |url| audience_of(url).unwrap();
        assert_eq!(
            audience("https://cache.example.org/"),
            "https://cache.example.org"
        );
        assert_eq!(
            audience("https://user:pw@Cache.Example.org:443/"),
            "https://cache.example.org"
        );
        assert_eq!(audience("http://127.0.0.1:8787"), "http://127.0.0.1:8787");
        // Where the request goes, not what a naive split reads after '@'.
        assert_eq!(
            audience("https://evil.example?@cache.example.org"),
            "https://evil.example"
        );
        assert!(audience_of("cache.example.org").is_err());
    }
}
