//! Request bodies: streamed to R2 untouched (NARs, logs, parts), or read into wasm when
//! small and checked here (narinfos, JSON side files, part lists). Either way the
//! announced length is checked against a limit before a byte is read.

use worker::Request;

use super::decode;
use super::error::EdgeError;

/// What a body is, for the error that refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Nar,
    Narinfo,
    Json,
    Log,
    Part,
    PartList,
}

impl BodyKind {
    fn describe(self) -> &'static str {
        match self {
            BodyKind::Nar => "a NAR in one request",
            BodyKind::Narinfo => "a narinfo",
            BodyKind::Json => "a JSON file",
            BodyKind::Log => "a build log",
            BodyKind::Part => "one part",
            BodyKind::PartList => "a part list",
        }
    }
}

/// The announced body length, refused above `limit` before a byte is read.
fn body_length(req: &Request, limit: u64, kind: BodyKind) -> Result<u64, EdgeError> {
    let length = req
        .headers()
        .get("Content-Length")?
        .ok_or(EdgeError::LengthRequired)?
        .trim()
        .parse::<u64>()
        .map_err(|_| EdgeError::BadRequest("Content-Length is not a number".into()))?;
    if length > limit {
        let hint = match kind {
            BodyKind::Nar => "; push large NARs in parts with `nixflare push`",
            _ => "",
        };
        return Err(EdgeError::TooLarge(format!(
            "{length} bytes is over the {limit}-byte limit for {}{hint}",
            kind.describe()
        )));
    }
    Ok(length)
}

/// The request body as the runtime's stream, for R2 to read directly (never through
/// wasm); its announced length is checked against `limit` first.
pub fn stream_body(
    req: &Request,
    limit: u64,
    kind: BodyKind,
) -> Result<web_sys::ReadableStream, EdgeError> {
    let length = body_length(req, limit, kind)?;
    req.inner()
        .body()
        .ok_or_else(|| EdgeError::BadRequest(format!("empty body ({length} bytes announced)")))
}

/// Logs stream straight into R2 (R2 needs the stored length up front, which a
/// decompressed stream does not have), so a compressed log (`log-compression`) is refused.
pub fn reject_content_encoding(req: &Request) -> Result<(), EdgeError> {
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
pub async fn small_body(
    req: &mut Request,
    limit: u64,
    kind: BodyKind,
) -> Result<Vec<u8>, EdgeError> {
    body_length(req, limit, kind)?;
    let bytes = req.bytes().await?;
    if bytes.len() as u64 > limit {
        return Err(EdgeError::TooLarge(format!(
            "over the {limit}-byte limit for {}",
            kind.describe()
        )));
    }
    match req.headers().get("Content-Encoding")? {
        Some(encoding) if !encoding.trim().eq_ignore_ascii_case("identity") => {
            decode::decode(bytes, &encoding, limit).await
        }
        _ => Ok(bytes),
    }
}

/// A small JSON request body (a wire-contract message) of at most `max` bytes, read by
/// the core's strict reader: a duplicate key, deep nesting or a value of the wrong kind
/// is refused with a reason that names it; `shape` says what it must look like.
pub async fn json_body<T: serde::de::DeserializeOwned>(
    req: &mut Request,
    max: u64,
    shape: &str,
) -> Result<T, EdgeError> {
    let bytes = small_body(req, max, BodyKind::Json).await?;
    crate::core::json_serde::from_slice(&bytes)
        .map_err(|err| EdgeError::BadRequest(format!("the body must be {shape}: {err}")))
}
