//! Writing under a key by the rule every stored key follows
//! (`crate::core::publish::OnExisting`): the same bytes again is a success, different
//! bytes a 409 unless the token has `overwrite`. Each step is one of R2's conditional
//! writes (create only if absent; replace only the version that was compared), so two
//! requests racing for a key can never both succeed with different bytes.

use wasm_bindgen_futures::JsFuture;
use worker::crypto::{DigestStream, DigestStreamAlgorithm};
use worker::{Bucket, Conditional, Data, Object};

use super::error::EdgeError;
use super::response::Stored;
use crate::core::credential::Credential;
use crate::core::publish::OnExisting;
use crate::core::token::Permissions;

/// Only if no object is there.
pub fn absent() -> Conditional {
    Conditional {
        etag_does_not_match: Some("*".into()),
        ..Conditional::default()
    }
}

/// Only if the object is still the version with `etag`.
fn unchanged_since(etag: String) -> Conditional {
    Conditional {
        etag_matches: Some(etag),
        ..Conditional::default()
    }
}

fn conflict(key: &str) -> EdgeError {
    EdgeError::Conflict(format!(
        "a different /{key} is already stored; a token with overwrite permission may replace it"
    ))
}

/// A 503, not a 409: nothing says a different object is there (it may be gone), and a
/// client takes a 409 on a narinfo for "someone else published it".
fn changed(key: &str) -> EdgeError {
    EdgeError::Busy(format!(
        "/{key} changed while this request was checking it; send it again"
    ))
}

/// Stores a small body (narinfo, JSON side file) that is already in wasm.
/// `supersedes(old)` says whether these bytes may replace `old` without `overwrite` (a
/// signed narinfo replacing one trusted only for its content address).
pub async fn put_small(
    bucket: &Bucket,
    key: &str,
    bytes: Vec<u8>,
    by: &Credential,
    supersedes: impl Fn(&[u8]) -> bool,
) -> Result<Stored, EdgeError> {
    let created = bucket
        .put(key, bytes.clone())
        .only_if(absent())
        .execute()
        .await?;
    if created.is_some() {
        return Ok(Stored::Created);
    }
    let existing = bucket
        .get(key)
        .execute()
        .await?
        .ok_or_else(|| changed(key))?;
    let etag = existing.etag();
    let old = existing
        .body()
        .ok_or(EdgeError::MissingBody)?
        .bytes()
        .await?;
    let may_overwrite = by.permissions.contains(Permissions::OVERWRITE) || supersedes(&old);
    match OnExisting::decide(old == bytes, may_overwrite) {
        OnExisting::Unchanged => Ok(Stored::Unchanged),
        OnExisting::Conflict => Err(conflict(key)),
        OnExisting::Replace => {
            let replaced = bucket
                .put(key, bytes)
                .only_if(unchanged_since(etag))
                .execute()
                .await?;
            replaced
                .map(|_| Stored::Replaced)
                .ok_or_else(|| changed(key))
        }
    }
}

/// Stores a streamed body (a build log) without it entering wasm. An existing object is
/// compared by SHA-256, both digests computed by the runtime.
pub async fn put_stream(
    bucket: &Bucket,
    key: &str,
    body: web_sys::ReadableStream,
    by: &Credential,
) -> Result<Stored, EdgeError> {
    let Some(existing) = bucket.head(key).await? else {
        let created = bucket
            .put(key, Data::ReadableStream(body))
            .only_if(absent())
            .execute()
            .await?;
        // Lost a race to another upload: the next attempt compares with what won.
        return created.map(|_| Stored::Created).ok_or_else(|| changed(key));
    };
    if by.permissions.contains(Permissions::OVERWRITE) {
        // Replacing needs no comparison: the same bytes replaced are still the same.
        let replaced = bucket
            .put(key, Data::ReadableStream(body))
            .only_if(unchanged_since(existing.etag()))
            .execute()
            .await?;
        return replaced
            .map(|_| Stored::Replaced)
            .ok_or_else(|| changed(key));
    }
    let stored = bucket
        .get(key)
        .execute()
        .await?
        .ok_or_else(|| changed(key))?;
    let same = sha256_of_stream(body).await? == sha256_of_object(stored).await?;
    match OnExisting::decide(same, false) {
        OnExisting::Unchanged => Ok(Stored::Unchanged),
        _ => Err(conflict(key)),
    }
}

async fn sha256_of_object(object: Object) -> Result<Vec<u8>, EdgeError> {
    match object
        .body()
        .ok_or(EdgeError::MissingBody)?
        .response_body()?
    {
        worker::ResponseBody::Stream(stream) => sha256_of_stream(stream).await,
        _ => Err(EdgeError::MissingBody),
    }
}

/// The SHA-256 of a stream, hashed by the runtime (`crypto.DigestStream`).
async fn sha256_of_stream(stream: web_sys::ReadableStream) -> Result<Vec<u8>, EdgeError> {
    let digest = DigestStream::new(DigestStreamAlgorithm::Sha256);
    let writable: &web_sys::WritableStream = digest.raw().as_ref();
    JsFuture::from(stream.pipe_to(writable))
        .await
        .map_err(|e| EdgeError::Runtime(worker::Error::from(e)))?;
    Ok(digest.digest().await?.to_vec())
}
