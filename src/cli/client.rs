//! HTTP to a nixflare cache: one connection pool, the credential, retries with backoff for
//! what is worth retrying, and an optional upload rate limit. The typed endpoints built
//! on this are in `endpoints.rs`.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use ureq::http::Uri;
use ureq::{Agent, SendBody};

use crate::cli::id_token::IdTokens;
use crate::core::http::Method;

/// A refusal or failure reported by the cache: status and its one-line reason.
#[derive(Debug)]
pub struct HttpError {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub reason: String,
}

impl HttpError {
    /// The refusal in `reply` to `method path` (the query string left out).
    pub fn new(method: Method, path: &str, reply: &Reply) -> Self {
        Self {
            method,
            path: path.split('?').next().unwrap_or(path).to_owned(),
            status: reply.status,
            reason: reason_line(reply.status, &reply.body),
        }
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} /{}: {}",
            self.method.as_str(),
            self.path,
            self.reason
        )
    }
}

impl std::error::Error for HttpError {}

/// What the cache answered to a request that got an answer.
pub struct Reply {
    pub status: u16,
    pub body: String,
}

/// A request body, rebuilt for every attempt.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `length` bytes of a file from `offset`.
    FileRange {
        file: &'a std::path::Path,
        offset: u64,
        length: u64,
    },
}

impl Body<'_> {
    fn length(&self) -> u64 {
        match self {
            Body::Empty => 0,
            Body::Bytes(bytes) => bytes.len() as u64,
            Body::FileRange { length, .. } => *length,
        }
    }
}

/// What the client proves who it is with, sent as `Authorization: Bearer`; never printed.
#[derive(Clone)]
pub enum Auth {
    /// A nixflare token (or an ID token the CI put in the environment, as GitLab does).
    Token(String),
    /// The CI job's own ID tokens, asked for again as they age (GitHub Actions).
    IdTokens(Arc<IdTokens>),
}

impl Auth {
    fn text(&self) -> Result<String> {
        match self {
            Auth::Token(token) => Ok(token.clone()),
            Auth::IdTokens(tokens) => tokens.token(crate::cli::token::now_unix()?),
        }
    }
}

pub struct Client {
    base: String,
    agent: Agent,
    auth: Option<Auth>,
    attempts: u32,
    limiter: Option<Arc<RateLimiter>>,
    /// Called with each chunk of file (NAR) bytes sent, for progress.
    on_sent: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Client {
    pub fn new(base: &str, token: Option<String>, attempts: u32) -> Self {
        Self::with_timeout(base, token, attempts, None)
    }

    pub fn with_auth(base: &str, auth: Option<Auth>, attempts: u32) -> Self {
        let mut client = Self::new(base, None, attempts);
        client.auth = auth;
        client
    }

    /// A client whose every request gives up after `timeout` in all (uploads take as
    /// long as they take: `new` sets none), for checks that must not hang.
    pub fn with_timeout(
        base: &str,
        token: Option<String>,
        attempts: u32,
        timeout: Option<Duration>,
    ) -> Self {
        let config = Agent::config_builder()
            // Statuses are answers, handled below; only transport failures are errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(timeout)
            .user_agent(concat!("nixflare/", env!("CARGO_PKG_VERSION")))
            .max_idle_connections_per_host(64)
            .build();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            agent: Agent::new_with_config(config),
            auth: token.map(Auth::Token),
            attempts: attempts.max(1),
            limiter: None,
            on_sent: None,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Caps upload bandwidth across all requests, in bytes per second.
    pub fn limit_rate(&mut self, bytes_per_second: u64) {
        self.limiter = Some(Arc::new(RateLimiter::new(bytes_per_second)));
    }

    pub fn on_sent(&mut self, callback: Arc<dyn Fn(u64) + Send + Sync>) {
        self.on_sent = Some(callback);
    }

    /// Sends a request, retrying transport errors and retryable statuses (408, 429,
    /// 5xx but 501/505) with exponential backoff. `path` is relative to the cache URL.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body<'_>,
    ) -> Result<Reply> {
        let url = format!("{}/{path}", self.base);
        let mut delay = Duration::from_millis(250);
        for attempt in 1..=self.attempts {
            let last = attempt == self.attempts;
            // Per attempt: an ID token is renewed when it ages.
            let authorization = self.auth.as_ref().map(Auth::text).transpose()?;
            match self.attempt(method, &url, authorization.as_deref(), content_type, &body) {
                Ok(reply) if retryable_status(reply.status) && !last => {}
                Ok(reply) => return Ok(reply),
                Err(err) if last || !retryable_transport(&err) => {
                    return Err(err)
                        .with_context(|| format!("{} {}", method.as_str(), redact(&url)));
                }
                Err(_) => {}
            }
            thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(8));
        }
        unreachable!("the last attempt always returns")
    }

    /// Like [`send`](Self::send), but any status outside 2xx is an [`HttpError`].
    pub fn expect_success(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Body<'_>,
    ) -> Result<Reply> {
        let reply = self.send(method, path, content_type, body)?;
        if (200..300).contains(&reply.status) {
            return Ok(reply);
        }
        Err(HttpError::new(method, path, &reply).into())
    }

    /// True if `path` exists (HEAD answers 200), false on 404.
    pub fn exists(&self, path: &str) -> Result<bool> {
        let reply = self.send(Method::Head, path, None, Body::Empty)?;
        match reply.status {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(HttpError::new(Method::Head, path, &reply).into()),
        }
    }

    fn attempt(
        &self,
        method: Method,
        url: &str,
        authorization: Option<&str>,
        content_type: Option<&str>,
        body: &Body<'_>,
    ) -> Result<Reply, ureq::Error> {
        let mut builder = ureq::http::Request::builder()
            .method(method.as_str())
            .uri(url);
        if let Some(token) = authorization {
            builder = builder.header("Authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header("Content-Type", content_type);
        }
        let has_body = !matches!(method, Method::Get | Method::Head);
        if has_body {
            builder = builder.header("Content-Length", body.length());
        }
        let response = match body {
            Body::Empty => {
                let request = builder.body(SendBody::none())?;
                self.agent.run(request)?
            }
            // Small bodies (narinfos, part lists) are not NAR bytes: not metered.
            Body::Bytes(bytes) => {
                let reader = io::Cursor::new(bytes.to_vec());
                self.agent
                    .run(builder.body(SendBody::from_owned_reader(reader))?)?
            }
            Body::FileRange {
                file,
                offset,
                length,
            } => {
                // Spool files only: never through a symbolic link.
                let mut handle = super::spool::open_read(file)?;
                handle.seek(SeekFrom::Start(*offset))?;
                let reader = self.metered(handle.take(*length));
                self.agent
                    .run(builder.body(SendBody::from_owned_reader(reader))?)?
            }
        };
        let status = response.status().as_u16();
        let body = if method == Method::Head {
            String::new()
        } else {
            response.into_body().read_to_string().unwrap_or_default()
        };
        Ok(Reply { status, body })
    }

    fn metered<R: Read + Send + 'static>(&self, inner: R) -> Metered<R> {
        Metered {
            inner,
            limiter: self.limiter.clone(),
            on_sent: self.on_sent.clone(),
        }
    }
}

pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

fn retryable_transport(err: &ureq::Error) -> bool {
    matches!(
        err,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
    )
}

/// The cache's one-line reason, or the status alone when the body has none.
fn reason_line(status: u16, body: &str) -> String {
    match body.lines().next().map(str::trim) {
        Some(line) if !line.is_empty() => line.chars().take(300).collect(),
        _ => format!("HTTP {status}"),
    }
}

/// `user:password@` in a URL is replaced, so credentials never reach output; a URL
/// that does not parse is not printed at all.
fn redact(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "<unparsable URL>".to_owned();
    };
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            let port = authority
                .port()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let path = uri.path_and_query().map_or("", |p| p.as_str());
            let scheme = uri.scheme_str().unwrap_or("https");
            format!("{scheme}://<redacted>@{}{port}{path}", authority.host())
        }
        _ => url.to_owned(),
    }
}

/// A reader that reports progress and waits for the rate limiter.
struct Metered<R> {
    inner: R,
    limiter: Option<Arc<RateLimiter>>,
    on_sent: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Small reads keep the limiter smooth.
        let cap = if self.limiter.is_some() {
            buf.len().min(64 * 1024)
        } else {
            buf.len()
        };
        let n = self.inner.read(&mut buf[..cap])?;
        if let Some(limiter) = &self.limiter {
            limiter.take(n as u64);
        }
        if let Some(on_sent) = &self.on_sent {
            on_sent(n as u64);
        }
        Ok(n)
    }
}

/// One budget of bytes per second shared by all uploads.
struct RateLimiter {
    bytes_per_second: u64,
    /// When the bytes granted so far will have been "paid for".
    next_free: Mutex<Instant>,
}

impl RateLimiter {
    fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    fn take(&self, bytes: u64) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        let wait_until = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            *next = (*next).max(now) + cost;
            *next
        };
        let now = Instant::now();
        if wait_until > now {
            thread::sleep(wait_until - now);
        }
    }
}

/// Parses `10M`, `512k`, `1G` or a plain number of bytes per second.
pub fn parse_rate(text: &str) -> Result<u64> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&text[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&text[..i], 1 << 30),
        _ => (text, 1),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("rate {text:?} is not a number with an optional k, M or G"))?;
    n.checked_mul(scale)
        .filter(|&r| r > 0)
        .ok_or_else(|| anyhow!("rate {text:?} is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_matches_nix() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(retryable_status(status), "{status}");
        }
        for status in [200, 400, 401, 403, 404, 409, 413, 501, 505] {
            assert!(!retryable_status(status), "{status}");
        }
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(
            reason_line(400, "400 rejected: x\nmore\n"),
            "400 rejected: x"
        );
        assert_eq!(reason_line(502, ""), "HTTP 502");
    }

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(
            redact("https://u:secret@cache.example/x"),
            "https://<redacted>@cache.example/x"
        );
        assert_eq!(
            redact("https://cache.example/a@b"),
            "https://cache.example/a@b"
        );
        assert_eq!(
            redact("http://u:p@127.0.0.1:8787/x?y=1"),
            "http://<redacted>@127.0.0.1:8787/x?y=1"
        );
        assert_eq!(redact("http://u:p@ bad"), "<unparsable URL>");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
