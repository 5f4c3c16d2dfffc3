//! Every way a request can fail, and the one place that turns it into a status.

use worker::{console_error, Headers, Response, ResponseBody};

use crate::core::config::ConfigError;
use crate::core::dispatch::Refusal;
use crate::core::index::passes::PassError;
use crate::core::index::IndexError;
use crate::core::multipart::MultipartError;
use crate::core::route::NOT_FOUND_CACHE_CONTROL;
use crate::core::storage::R2Error;

#[derive(Debug)]
pub enum EdgeError {
    /// Unknown path, malformed path, or no such object.
    NotFound,
    /// Something a guarded request names is not there (a pin's path, a pin).
    Absent(String),
    /// A method this path does not take; `allow` lists those it does.
    MethodNotAllowed { allow: &'static str },
    /// No usable token: missing, malformed, badly signed, expired or revoked.
    Unauthorized(String),
    /// A valid token without the permission this request needs.
    Forbidden(String),
    /// The upload itself is wrong (malformed, unverifiable, inconsistent).
    BadRequest(String),
    /// A multipart upload id R2 does not know: completed, aborted or expired.
    UploadNotFound,
    /// A different object already sits where this one would go.
    Conflict(String),
    /// The body has no Content-Length (chunked): R2 needs the length up front.
    LengthRequired,
    /// The body is larger than this kind of upload may be.
    TooLarge(String),
    /// A bound on what token holders may make the worker keep (open uploads) is reached.
    TooMany(String),
    /// A Content-Encoding the worker cannot undo.
    UnsupportedEncoding(String),
    /// A worker variable is invalid: the operator's fault, not the client's.
    Misconfigured(ConfigError),
    /// A binding the worker needs is missing from wrangler.toml.
    Unconfigured(String),
    /// A narinfo references paths neither in the cache nor upstream.
    MissingReferences(String),
    /// Work is left for another request (more upstream checks than one may make), or
    /// what it needs is not at hand yet (an issuer's keys): retried.
    Busy(String),
    /// An upstream cache could not say whether it has a path.
    Upstream(String),
    /// A narinfo of a batch whose reference in the batch was not published.
    FailedDependency(String),
    /// The index (Durable Object) failed or is not bound.
    Index(String),
    /// R2 returned an object without a body where one was asked for.
    MissingBody,
    /// The runtime or R2 failed.
    Runtime(worker::Error),
    /// An R2 operation of the index's procedures failed.
    Storage(String),
}

/// For logs (the cron's): the details where there are any, else the client's reason.
impl core::fmt::Display for EdgeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.log_line() {
            Some(line) => f.write_str(&line),
            None => f.write_str(&self.status_and_reason().1),
        }
    }
}

impl From<worker::Error> for EdgeError {
    fn from(err: worker::Error) -> Self {
        EdgeError::Runtime(err)
    }
}

impl From<IndexError> for EdgeError {
    fn from(err: IndexError) -> Self {
        match err {
            IndexError::Unbound => EdgeError::Unconfigured(err.to_string()),
            other => EdgeError::Index(other.to_string()),
        }
    }
}

impl From<PassError> for EdgeError {
    fn from(err: PassError) -> Self {
        match err {
            PassError::Storage(err) => EdgeError::Storage(err.0),
            PassError::Index(err) => err.into(),
            PassError::Busy(why) => EdgeError::Busy(why),
            PassError::MissingReferences(why) => EdgeError::MissingReferences(why),
            PassError::Upstream(why) => EdgeError::Upstream(why),
            PassError::Conflict(why) => EdgeError::Conflict(why),
            PassError::Dependency(why) => EdgeError::FailedDependency(why),
        }
    }
}

impl From<Refusal> for EdgeError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::MethodNotAllowed { allow } => EdgeError::MethodNotAllowed { allow },
            Refusal::Multipart(err) => err.into(),
        }
    }
}

impl From<MultipartError> for EdgeError {
    fn from(err: MultipartError) -> Self {
        EdgeError::BadRequest(err.to_string())
    }
}

impl EdgeError {
    /// A failed R2 PUT that was given the SHA-256 of its bytes (a NAR, the copy that
    /// publishes an assembled upload): refused bytes are the client's fault, answered
    /// with `mismatch`; anything else is a storage error. R2's codes are read by the
    /// core's one classifier (`crate::core::storage`).
    pub fn from_r2_put(err: worker::Error, mismatch: &str) -> EdgeError {
        match R2Error::classify(&err.to_string()) {
            R2Error::HashMismatch => EdgeError::BadRequest(mismatch.into()),
            _ => EdgeError::Runtime(err),
        }
    }

    /// A failed multipart step: an upload R2 does not know (completed, aborted,
    /// expired) is a 404 the client restarts from; R2's refusals of the request (a part
    /// too small, a wrong ETag) a 400 with R2's own words; R2's own failures a 502.
    pub fn from_r2_multipart(err: worker::Error) -> EdgeError {
        let message = err.to_string();
        match R2Error::classify(&message) {
            R2Error::NoSuchUpload => EdgeError::UploadNotFound,
            R2Error::HashMismatch | R2Error::Refused => {
                let reason = message.lines().next().unwrap_or_default();
                EdgeError::BadRequest(format!("R2 refused the upload: {reason}"))
            }
            R2Error::Failed => EdgeError::Runtime(err),
        }
    }

    /// Status and a one-line reason for the client. Details stay in the log.
    pub fn status_and_reason(&self) -> (u16, String) {
        match self {
            // Nix reads 404 as "absent": the one answer for anything missing.
            EdgeError::NotFound => (404, "not found".into()),
            EdgeError::Absent(why) => (404, format!("not found: {why}")),
            EdgeError::UploadNotFound => (
                404,
                "no such upload (completed, aborted or expired): start a new one".into(),
            ),
            EdgeError::MethodNotAllowed { allow } => {
                (405, format!("method not allowed here (allowed: {allow})"))
            }
            EdgeError::Unauthorized(why) => (401, format!("unauthorized: {why}")),
            EdgeError::Forbidden(why) => (403, format!("forbidden: {why}")),
            EdgeError::BadRequest(why) => (400, format!("rejected: {why}")),
            EdgeError::Conflict(why) => (409, format!("conflict: {why}")),
            EdgeError::LengthRequired => (411, "a Content-Length is required".into()),
            EdgeError::TooLarge(why) => (413, format!("too large: {why}")),
            EdgeError::UnsupportedEncoding(why) => (415, format!("unsupported: {why}")),
            EdgeError::TooMany(why) => (429, format!("too many: {why}")),
            // 422: the narinfo is well-formed, but publishing it now would break the
            // promise that every path served has its closure; not retried by Nix.
            EdgeError::MissingReferences(why) => (422, format!("incomplete closure: {why}")),
            // 503 is retried by Nix and by nixflare, and each retry gets further.
            EdgeError::Busy(why) => (503, format!("not yet: {why}")),
            EdgeError::Upstream(why) => (502, format!("upstream cache unavailable: {why}")),
            // Sent again once what it references is published.
            EdgeError::FailedDependency(why) => (424, format!("not published: {why}")),
            EdgeError::Index(_) => (503, "index unavailable, try again".into()),
            EdgeError::Misconfigured(_) | EdgeError::Unconfigured(_) => {
                (500, "cache misconfigured: see the worker log".into())
            }
            // 502 lets Nix retry: the storage behind us failed, not the request.
            EdgeError::MissingBody | EdgeError::Runtime(_) | EdgeError::Storage(_) => {
                (502, "storage error, try again".into())
            }
        }
    }

    /// The log line for this error: the client's reason plus what stays in the log.
    fn log_line(&self) -> Option<String> {
        match self {
            EdgeError::Misconfigured(err) => Some(format!("misconfigured: {err}")),
            EdgeError::Unconfigured(why) => Some(format!("misconfigured: {why}")),
            EdgeError::Storage(err) => Some(format!("storage error: {err}")),
            EdgeError::MissingBody => Some("R2 returned an object without a body".into()),
            EdgeError::Runtime(err) => Some(format!("runtime error: {err}")),
            EdgeError::Index(err) => Some(format!("index error: {err}")),
            _ => None,
        }
    }

    pub fn into_response(self, head_only: bool) -> worker::Result<Response> {
        let (status, reason) = self.status_and_reason();
        if let Some(line) = self.log_line() {
            console_error!("{line}");
        }
        let headers = Headers::new();
        headers.set("Content-Type", "text/plain; charset=utf-8")?;
        match &self {
            EdgeError::NotFound => headers.set("Cache-Control", NOT_FOUND_CACHE_CONTROL)?,
            _ => headers.set("Cache-Control", "no-store")?,
        }
        if let EdgeError::Busy(_) = &self {
            headers.set("Retry-After", "1")?;
        }
        match &self {
            EdgeError::MethodNotAllowed { allow } => headers.set("Allow", allow)?,
            // Makes curl (and so Nix) send netrc credentials if it did not already.
            EdgeError::Unauthorized(_) => {
                headers.set("WWW-Authenticate", "Basic realm=\"nixflare\"")?
            }
            _ => {}
        }
        let body = if head_only {
            ResponseBody::Empty
        } else {
            ResponseBody::Body(format!("{status} {reason}\n").into_bytes())
        };
        Ok(Response::from_body(body)?
            .with_status(status)
            .with_headers(headers))
    }
}
