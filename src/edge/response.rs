//! Responses the worker makes itself (not streamed from R2): files rendered from
//! configuration, JSON messages of the wire contract, and the outcome of a write.

use worker::{Headers, Response, ResponseBody};

use super::error::EdgeError;
use crate::core::route::Kind;

/// A small file made here rather than read from R2.
pub fn generated(kind: Kind, text: String, head_only: bool) -> Result<Response, EdgeError> {
    let headers = Headers::new();
    headers.set("Content-Type", kind.content_type())?;
    headers.set("Cache-Control", kind.cache_control())?;
    headers.set("Content-Length", &text.len().to_string())?;
    let body = if head_only {
        ResponseBody::Empty
    } else {
        ResponseBody::Body(text.into_bytes())
    };
    Ok(Response::from_body(body)?.with_headers(headers))
}

/// A message of the wire contract, rendered by `crate::core::api::render`.
pub fn json(status: u16, rendered: String, head_only: bool) -> Result<Response, EdgeError> {
    Ok(generated(Kind::Api, rendered, head_only)?.with_status(status))
}

/// What a write did.
#[derive(Debug)]
pub enum Stored {
    Created,
    /// Different bytes replaced what was there (overwrite): the edge cache is purged.
    Replaced,
    /// The same bytes were already there (or, for `nix-cache-info`, nothing to store).
    Unchanged,
    Deleted,
}

impl Stored {
    /// A batch's answer for a narinfo stored: what a PUT of it would answer.
    pub fn batch_outcome(&self) -> (crate::core::api::NarinfoOutcome, u16) {
        use crate::core::api::NarinfoOutcome;
        match self {
            Stored::Created => (NarinfoOutcome::Created, 201),
            Stored::Replaced => (NarinfoOutcome::Replaced, 201),
            Stored::Unchanged | Stored::Deleted => (NarinfoOutcome::Unchanged, 200),
        }
    }

    pub fn into_response(self) -> Result<Response, EdgeError> {
        Ok(match self {
            Stored::Created | Stored::Replaced => Response::ok("stored\n")?.with_status(201),
            Stored::Unchanged => Response::ok("already stored\n")?,
            // 204 must have no body at all.
            Stored::Deleted => Response::empty()?.with_status(204),
        })
    }
}
