//! Every way a request can fail, and the one place that turns it into a status.

use worker::{console_error, Headers, Response, ResponseBody};

use crate::config::ConfigError;
use crate::route::NOT_FOUND_CACHE_CONTROL;

#[derive(Debug)]
pub enum EdgeError {
    /// Unknown path, malformed path, or no such object.
    NotFound,
    /// A method this path does not take.
    MethodNotAllowed,
    /// A worker variable is invalid: the operator's fault, not the client's.
    Misconfigured(ConfigError),
    /// R2 returned an object without a body where one was asked for.
    MissingBody,
    /// The runtime or R2 failed.
    Runtime(worker::Error),
}

impl From<worker::Error> for EdgeError {
    fn from(err: worker::Error) -> Self {
        EdgeError::Runtime(err)
    }
}

impl EdgeError {
    /// Status and a one-line reason for the client. Details stay in the log.
    fn status_and_reason(&self) -> (u16, &'static str) {
        match self {
            // Nix reads 404 as "absent": the one answer for anything missing.
            EdgeError::NotFound => (404, "not found"),
            EdgeError::MethodNotAllowed => (
                405,
                "method not allowed: this path is read-only (GET, HEAD)",
            ),
            EdgeError::Misconfigured(_) => (500, "cache misconfigured: see the worker log"),
            // 502 lets Nix retry: the storage behind us failed, not the request.
            EdgeError::MissingBody | EdgeError::Runtime(_) => (502, "storage error, try again"),
        }
    }

    pub fn into_response(self, head_only: bool) -> worker::Result<Response> {
        let (status, reason) = self.status_and_reason();
        match &self {
            EdgeError::NotFound | EdgeError::MethodNotAllowed => {}
            EdgeError::Misconfigured(err) => console_error!("misconfigured: {err}"),
            EdgeError::MissingBody => console_error!("R2 returned an object without a body"),
            EdgeError::Runtime(err) => console_error!("runtime error: {err}"),
        }
        let headers = Headers::new();
        headers.set("Content-Type", "text/plain; charset=utf-8")?;
        let cache_control = match self {
            EdgeError::NotFound => NOT_FOUND_CACHE_CONTROL,
            _ => "no-store",
        };
        headers.set("Cache-Control", cache_control)?;
        if let EdgeError::MethodNotAllowed = self {
            headers.set("Allow", "GET, HEAD")?;
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
