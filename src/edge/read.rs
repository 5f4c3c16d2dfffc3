//! GET and HEAD: every protocol file, anonymous in a public cache. Stored files come from
//! R2 and nothing else (no configuration, no token, no index); their bodies stream from
//! R2 to the client without entering wasm. A private cache's reads, once admitted, also
//! use the copies of `private.rs`.

use worker::{Bucket, Context, Env, Headers, Request, Response};

use super::error::EdgeError;
use super::private::{Place, PrivateCopies};
use super::response::generated;
use crate::core::api;
use crate::core::config::CacheConfig;
use crate::core::http::{
    content_range, http_date, if_none_match_matches, unsatisfied_range, RangeRequest,
};
use crate::core::route::{Kind, Route};

/// The landing page. Built in rather than served as a static asset: with `[assets]`,
/// every request first passes an asset router, which cost ~35% of narinfo throughput
/// in `make bench`.
const LANDING_PAGE: &str = include_str!("../../www/index.html");

/// Files made here: the landing page, and files made from configuration (read only for
/// those: the page is served whatever the variables say).
pub fn render(
    route: &Route,
    config: impl FnOnce() -> Result<CacheConfig, EdgeError>,
    head_only: bool,
) -> Result<Response, EdgeError> {
    let text = match route {
        Route::LandingPage => LANDING_PAGE.to_owned(),
        Route::PublicKeys => config()?.public_keys_text(),
        Route::Info => api::render(&api::CacheInfo::of(&config()?)),
        Route::CacheInfo => config()?.nix_cache_info(),
        // Not a rendered file (the core never plans it): nothing to show.
        _ => return Err(EdgeError::NotFound),
    };
    generated(route.kind(), text, head_only)
}

/// A stored file.
pub async fn serve(
    req: &Request,
    bucket: &Bucket,
    route: &Route,
    head_only: bool,
) -> Result<Response, EdgeError> {
    let key = route.to_string();
    let range_header = req.headers().get("Range")?;
    let if_none_match = req.headers().get("If-None-Match")?;
    // The common case (Nix fetching a file) costs one R2 read. Conditional, ranged and
    // HEAD requests need size and ETag first, so they look at the metadata first.
    if !head_only && range_header.is_none() && if_none_match.is_none() {
        let object = bucket
            .get(&key)
            .execute()
            .await?
            .ok_or(EdgeError::NotFound)?;
        let headers = object_headers(route.kind(), &key, &object.http_etag())?;
        headers.set("Content-Length", &object.size().to_string())?;
        headers.set("Last-Modified", &http_date(object.uploaded().as_millis()))?;
        return stream(object, headers, 200);
    }
    let meta = bucket.head(&key).await?.ok_or(EdgeError::NotFound)?;
    let (size, etag) = (meta.size(), meta.http_etag());
    let headers = object_headers(route.kind(), &key, &etag)?;
    headers.set("Last-Modified", &http_date(meta.uploaded().as_millis()))?;
    if if_none_match.is_some_and(|header| if_none_match_matches(&header, &etag)) {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    if head_only {
        headers.set("Content-Length", &size.to_string())?;
        return Ok(Response::empty()?.with_headers(headers));
    }
    let range = RangeRequest::resolve(range_header.as_deref(), size);
    serve_range(bucket, &key, size, range, headers).await
}

/// A stored file of a private cache, for a request `auth::admit_reader` admitted. A
/// plain GET of a small file is answered from the private copies when they have it,
/// and R2's answer (the file, or its absence) is kept there; HEAD, Range and
/// If-None-Match go to R2 as in `serve`.
pub async fn serve_private(
    req: &Request,
    bucket: &Bucket,
    route: &Route,
    head_only: bool,
    env: &Env,
    ctx: &Context,
) -> Result<Response, EdgeError> {
    let headers = req.headers();
    let plain = !head_only && !headers.has("Range")? && !headers.has("If-None-Match")?;
    if !plain || !route.kind().kept_for_private_reads() {
        return serve(req, bucket, route, head_only).await;
    }
    let copies = PrivateCopies::open(&Place::of(req, env)?).await;
    if let Some(hit) = copies.get(route).await {
        return Ok(hit);
    }
    // A 404 is kept too, for the minute its Cache-Control says, as Workers Cache keeps
    // a public cache's: Nix asks for many paths a cache does not have.
    let mut response = match serve(req, bucket, route, false).await {
        Err(EdgeError::NotFound) => EdgeError::NotFound.into_response(false)?,
        other => other?,
    };
    if matches!(response.status_code(), 200 | 404) {
        ctx.wait_until(copies.keep(route, &mut response)?);
    }
    Ok(response)
}

/// The body of a GET whose object exists and is `size` bytes.
async fn serve_range(
    bucket: &Bucket,
    key: &str,
    size: u64,
    range: RangeRequest,
    headers: Headers,
) -> Result<Response, EdgeError> {
    match range {
        RangeRequest::Full => {
            let object = bucket
                .get(key)
                .execute()
                .await?
                .ok_or(EdgeError::NotFound)?;
            headers.set("Content-Length", &object.size().to_string())?;
            stream(object, headers, 200)
        }
        RangeRequest::Partial { start, end } => {
            let length = end - start + 1;
            let object = bucket
                .get(key)
                .range(worker::Range::OffsetWithLength {
                    offset: start,
                    length,
                })
                .execute()
                .await?
                .ok_or(EdgeError::NotFound)?;
            // Built from what was asked and the size seen: Object::range() panics in
            // workers-rs 0.8.7 (docs/platform.md §3).
            headers.set("Content-Range", &content_range(start, end, size))?;
            headers.set("Content-Length", &length.to_string())?;
            stream(object, headers, 206)
        }
        RangeRequest::Unsatisfiable => {
            headers.set("Content-Range", &unsatisfied_range(size))?;
            // A 416 is about this request, not the object: do not cache it.
            headers.set("Cache-Control", "no-store")?;
            Ok(Response::empty()?.with_status(416).with_headers(headers))
        }
    }
}

/// Headers shared by every answer about a stored object. `Cache-Tag` is its key: what
/// a purge names when the object is deleted or replaced (`purge.rs`).
fn object_headers(kind: Kind, key: &str, etag: &str) -> Result<Headers, EdgeError> {
    let headers = Headers::new();
    headers.set("Content-Type", kind.content_type())?;
    headers.set("Cache-Control", kind.cache_control())?;
    headers.set("Cache-Tag", key)?;
    headers.set("ETag", etag)?;
    // Lets Nix resume an interrupted download (it checks for this header).
    headers.set("Accept-Ranges", "bytes")?;
    Ok(headers)
}

/// Hands the object's body to the runtime as a stream: its bytes never enter wasm.
fn stream(object: worker::Object, headers: Headers, status: u16) -> Result<Response, EdgeError> {
    let body = object.body().ok_or(EdgeError::MissingBody)?;
    Ok(Response::from_body(body.response_body()?)?
        .with_status(status)
        .with_headers(headers))
}
