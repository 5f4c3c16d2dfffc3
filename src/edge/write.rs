//! PUT and DELETE: authenticated, verified, then stored. Nothing reaches R2 under a
//! protocol name before it has been checked (see `crate::core::publish` for the rules).

use worker::{console_log, Bucket, Data, Method, Request, Response};

use super::decode;
use super::error::EdgeError;
use crate::core::config::CacheConfig;
use crate::core::publish::{self, MAX_JSON_BYTES, MAX_NARINFO_BYTES};
use crate::core::route::{Kind, Route};
use crate::core::token::{self, Permissions, VerifiedToken};

/// Routes that take writes, and what each accepts (for 405's Allow header).
pub fn allowed_methods(route: &Route) -> &'static str {
    match route {
        Route::Narinfo(_) | Route::Nar(_) => "GET, HEAD, PUT, DELETE",
        Route::Revocation(_) => "PUT",
        Route::Upload(_) => "POST, PUT, DELETE",
        Route::Info | Route::Whoami => "GET, HEAD",
        Route::PublicKeys | Route::LandingPage => "GET, HEAD",
        _ => "GET, HEAD, PUT",
    }
}

pub async fn handle(
    mut req: Request,
    route: Route,
    config: &CacheConfig,
    bucket: &Bucket,
) -> Result<Response, EdgeError> {
    let method = req.method();
    let not_allowed = || EdgeError::MethodNotAllowed {
        allow: allowed_methods(&route),
    };
    let needed = match (&method, &route) {
        (Method::Put, Route::PublicKeys | Route::LandingPage) => return Err(not_allowed()),
        (Method::Put, Route::Revocation(_)) => Permissions::REVOKE,
        (Method::Put, _) => Permissions::WRITE,
        (Method::Delete, Route::Narinfo(_) | Route::Nar(_)) => Permissions::DELETE,
        _ => return Err(not_allowed()),
    };
    let claims = authorize(&req, config, bucket, needed).await?;
    let key = route.storage_key();
    let outcome = match (method, &route, key) {
        (Method::Delete, _, Some(key)) => {
            bucket.delete(&key).await?;
            Stored::Deleted
        }
        (Method::Put, Route::CacheInfo, _) => Stored::Unchanged, // Nix PUTs it when it sees none; ours is config.
        (Method::Put, Route::Nar(nar), Some(key)) => {
            let body = stream_body(&req, config.max_request_bytes, "a NAR in one request")?;
            if bucket.head(&key).await?.is_some() {
                // Named by its SHA-256: what is stored is already these bytes.
                Stored::Unchanged
            } else {
                // R2 hashes the stream and refuses a mismatch: no hashing in wasm.
                bucket
                    .put(&key, Data::ReadableStream(body))
                    .sha256(nar.file_hash.0.to_vec())
                    .execute()
                    .await
                    .map_err(|err| {
                        hash_refusal(err, "NAR bytes do not hash to the name in the URL")
                    })?;
                Stored::Created
            }
        }
        (Method::Put, Route::Narinfo(hash), Some(key)) => {
            let bytes = small_body(&mut req, MAX_NARINFO_BYTES, "a narinfo").await?;
            let checked = publish::check_narinfo(&bytes, hash, config)
                .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
            let nar_key = Route::Nar(checked.nar).to_string();
            let nar = bucket.head(&nar_key).await?.ok_or_else(|| {
                EdgeError::BadRequest(format!(
                    "{nar_key} is not in the cache: upload the NAR first"
                ))
            })?;
            if let Some(size) = checked.file_size.filter(|&size| size != nar.size()) {
                return Err(EdgeError::BadRequest(format!(
                    "narinfo FileSize {size} but the stored NAR has {} bytes",
                    nar.size()
                )));
            }
            put_unless_different(bucket, &key, bytes, &claims).await?
        }
        (Method::Put, Route::Revocation(_), Some(key)) => {
            bucket.put(&key, Data::Empty).execute().await?;
            Stored::Created
        }
        (Method::Put, Route::Log(_), Some(key)) => {
            reject_content_encoding(&req)?;
            let body = stream_body(&req, config.max_request_bytes, "a build log")?;
            bucket
                .put(&key, Data::ReadableStream(body))
                .execute()
                .await?;
            Stored::Created
        }
        (Method::Put, _, Some(key)) if route.kind() == Kind::Json => {
            let bytes = small_body(&mut req, MAX_JSON_BYTES, "a JSON file").await?;
            let text = core::str::from_utf8(&bytes)
                .map_err(|_| EdgeError::BadRequest("not valid JSON: not UTF-8".into()))?;
            js_sys::JSON::parse(text)
                .map_err(|_| EdgeError::BadRequest("not valid JSON".into()))?;
            bucket.put(&key, bytes).execute().await?;
            Stored::Created
        }
        _ => return Err(not_allowed()),
    };
    // Subject and path only: the token itself never reaches a log.
    console_log!(
        "{} /{route} by {}: {outcome:?}",
        req.method().as_ref(),
        claims.subject
    );
    outcome.into_response()
}

/// R2 refuses a PUT whose bytes miss the `.sha256()` it was given with code 10037:
/// the client's fault, answered with `reason`. Anything else is a storage error.
pub(super) fn hash_refusal(err: worker::Error, reason: &str) -> EdgeError {
    match err.to_string().contains("10037") {
        true => EdgeError::BadRequest(reason.into()),
        false => EdgeError::Runtime(err),
    }
}

#[derive(Debug)]
pub(super) enum Stored {
    Created,
    Unchanged,
    Deleted,
}

impl Stored {
    pub(super) fn into_response(self) -> Result<Response, EdgeError> {
        Ok(match self {
            Stored::Created => Response::ok("stored\n")?.with_status(201),
            Stored::Unchanged => Response::ok("already stored\n")?,
            // 204 must have no body at all.
            Stored::Deleted => Response::empty()?.with_status(204),
        })
    }
}

/// Checks the token: present, well-formed, signed by a token key, unexpired, carrying
/// `needed`, and not revoked (one R2 HEAD).
pub(super) async fn authorize(
    req: &Request,
    config: &CacheConfig,
    bucket: &Bucket,
    needed: Permissions,
) -> Result<VerifiedToken, EdgeError> {
    let header = req.headers().get("Authorization")?.ok_or_else(|| {
        EdgeError::Unauthorized(
            "a token is required (Authorization: Bearer TOKEN, or the token as netrc password)"
                .into(),
        )
    })?;
    let token = token::from_authorization(&header)
        .ok_or_else(|| EdgeError::Unauthorized("Authorization must be Bearer or Basic".into()))?;
    let now = worker::Date::now().as_millis() / 1000;
    let claims = token::verify(&token, &config.token_keys, now)
        .map_err(|e| EdgeError::Unauthorized(e.to_string()))?;
    if !claims.permissions.contains(needed) {
        return Err(EdgeError::Forbidden(format!(
            "token for {:?} lacks {needed} permission",
            claims.subject
        )));
    }
    let revocation = Route::Revocation(claims.id).to_string();
    if bucket.head(&revocation).await?.is_some() {
        return Err(EdgeError::Unauthorized(format!(
            "token {} is revoked",
            claims.id
        )));
    }
    Ok(claims)
}

/// The announced body length, refused above `limit` before a byte is read.
fn body_length(req: &Request, limit: u64, what: &str) -> Result<u64, EdgeError> {
    let length = req
        .headers()
        .get("Content-Length")?
        .ok_or(EdgeError::LengthRequired)?
        .trim()
        .parse::<u64>()
        .map_err(|_| EdgeError::BadRequest("Content-Length is not a number".into()))?;
    if length > limit {
        let hint = if what.starts_with("a NAR") {
            "; push large NARs in parts with `nixflare push`"
        } else {
            ""
        };
        return Err(EdgeError::TooLarge(format!(
            "{length} bytes is over the {limit}-byte limit for {what}{hint}"
        )));
    }
    Ok(length)
}

/// The request body as the runtime's stream, for R2 to read directly (never through
/// wasm); its announced length is checked against `limit` first.
pub(super) fn stream_body(
    req: &Request,
    limit: u64,
    what: &str,
) -> Result<web_sys::ReadableStream, EdgeError> {
    let length = body_length(req, limit, what)?;
    req.inner()
        .body()
        .ok_or_else(|| EdgeError::BadRequest(format!("empty body ({length} bytes announced)")))
}

/// Logs stream straight into R2 (R2 needs the stored length up front, which a
/// decompressed stream does not have), so a compressed log (`log-compression`) is refused.
fn reject_content_encoding(req: &Request) -> Result<(), EdgeError> {
    match req.headers().get("Content-Encoding")? {
        Some(encoding) if !encoding.trim().eq_ignore_ascii_case("identity") => {
            Err(EdgeError::UnsupportedEncoding(format!(
                "Content-Encoding {encoding:?} on a build log: upload logs uncompressed (unset Nix's log-compression)"
            )))
        }
        _ => Ok(()),
    }
}

/// Reads a small body into wasm (narinfos, JSON), bounded by `limit`, and undoes a
/// Content-Encoding: such files are stored and served decoded.
pub(super) async fn small_body(
    req: &mut Request,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>, EdgeError> {
    body_length(req, limit, what)?;
    let bytes = req.bytes().await?;
    if bytes.len() as u64 > limit {
        return Err(EdgeError::TooLarge(format!(
            "over the {limit}-byte limit for {what}"
        )));
    }
    match req.headers().get("Content-Encoding")? {
        Some(encoding) if !encoding.trim().eq_ignore_ascii_case("identity") => {
            decode::decode(bytes, &encoding, limit).await
        }
        _ => Ok(bytes),
    }
}

/// Stores `bytes` at `key` unless a different object is there, which only a token
/// with overwrite permission may replace.
async fn put_unless_different(
    bucket: &Bucket,
    key: &str,
    bytes: Vec<u8>,
    claims: &VerifiedToken,
) -> Result<Stored, EdgeError> {
    if let Some(existing) = bucket.get(key).execute().await? {
        let old = existing
            .body()
            .ok_or(EdgeError::MissingBody)?
            .bytes()
            .await?;
        if old == bytes {
            return Ok(Stored::Unchanged);
        }
        if !claims.permissions.contains(Permissions::OVERWRITE) {
            return Err(EdgeError::Conflict(format!(
                "a different /{key} is already published; a token with overwrite permission may replace it"
            )));
        }
    }
    bucket.put(key, bytes).execute().await?;
    Ok(Stored::Created)
}
