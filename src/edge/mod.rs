//! The worker: binds the pure core to workers-rs Requests, Responses and R2.
//!
//! Kept thin on purpose. Everything decided here is decided by the core
//! ([`Route::parse`], [`RangeRequest::resolve`], [`CacheConfig`]); this module only moves
//! headers and streams. Object bodies go from R2 to the client as the runtime's own
//! stream and never enter wasm (FIELD-NOTES §2).

mod decode;
mod error;
mod multipart;
mod write;

use worker::{
    console_error, event, Context, Env, Headers, Method, Request, Response, ResponseBody,
    ScheduleContext, ScheduledEvent,
};

use crate::core::config::CacheConfig;
use crate::core::http::{content_range, if_none_match_matches, unsatisfied_range, RangeRequest};
use crate::core::multipart::json_string;
use crate::core::route::{Kind, Route};
use crate::core::token::Permissions;
use error::EdgeError;

/// The landing page. Built in rather than served as a static asset: with `[assets]`,
/// every request first passes an asset router, which cost ~35% of narinfo throughput
/// in `make bench`.
const LANDING_PAGE: &str = include_str!("../../www/index.html");

/// The R2 binding in wrangler.toml.
const BUCKET_BINDING: &str = "BUCKET";

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> worker::Result<Response> {
    let head_only = req.method() == Method::Head;
    match handle(req, &env, head_only).await {
        Ok(response) => Ok(response),
        Err(err) => err.into_response(head_only),
    }
}

async fn handle(req: Request, env: &Env, head_only: bool) -> Result<Response, EdgeError> {
    let path = req.path();
    // Routing first: a path that does not parse never reaches storage.
    let route = Route::parse(&path).ok_or(EdgeError::NotFound)?;
    match (req.method(), &route) {
        (Method::Post | Method::Put | Method::Delete, &Route::Upload(nar)) => {
            let config = config(env)?;
            let bucket = env.bucket(BUCKET_BINDING)?;
            multipart::handle(req, nar, &config, &bucket).await
        }
        (Method::Get | Method::Head, Route::Whoami) => {
            let config = config(env)?;
            let bucket = env.bucket(BUCKET_BINDING)?;
            let claims = write::authorize(&req, &config, &bucket, Permissions::NONE).await?;
            let text = format!(
                "{{\"subject\":{},\"tokenId\":\"{}\",\"permissions\":\"{}\",\"expiresAt\":{}}}",
                json_string(&claims.subject),
                claims.id,
                claims.permissions,
                claims.expires_at
            );
            generated(Kind::Api, text, head_only)
        }
        (Method::Get | Method::Head, Route::Info) => {
            generated(Kind::Api, config(env)?.client_info_json(), head_only)
        }
        (Method::Get | Method::Head, _) if route.kind() != Kind::Internal => {
            read(&req, env, &route, head_only).await
        }
        (Method::Put | Method::Delete, _) => {
            let config = config(env)?;
            let bucket = env.bucket(BUCKET_BINDING)?;
            write::handle(req, route, &config, &bucket).await
        }
        (_, _) => Err(EdgeError::MethodNotAllowed {
            allow: write::allowed_methods(&route),
        }),
    }
}

/// Cron (`[triggers]` in wrangler.toml): cleans up abandoned multipart uploads.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let result = match (config(&env), env.bucket(BUCKET_BINDING)) {
        (Ok(config), Ok(bucket)) => {
            let now = worker::Date::now().as_millis();
            multipart::clean_up(&bucket, &config, now).await
        }
        (Err(err), _) => Err(err),
        (_, Err(err)) => Err(EdgeError::Runtime(err)),
    };
    if let Err(err) = result {
        console_error!("cleanup failed: {err:?}");
    }
}

fn config(env: &Env) -> Result<CacheConfig, EdgeError> {
    CacheConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(EdgeError::Misconfigured)
}

/// GET and HEAD of every protocol file.
async fn read(
    req: &Request,
    env: &Env,
    route: &Route,
    head_only: bool,
) -> Result<Response, EdgeError> {
    let kind = route.kind();
    let Some(key) = route.storage_key() else {
        let text = match route {
            Route::LandingPage => LANDING_PAGE.to_owned(),
            Route::PublicKeys => config(env)?.public_keys_text(),
            _ => config(env)?.nix_cache_info(),
        };
        return generated(kind, text, head_only);
    };
    let bucket = env.bucket(BUCKET_BINDING)?;
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
        let headers = object_headers(kind, &object.http_etag())?;
        headers.set("Content-Length", &object.size().to_string())?;
        return stream(object, headers, 200);
    }

    let meta = bucket.head(&key).await?.ok_or(EdgeError::NotFound)?;
    let (size, etag) = (meta.size(), meta.http_etag());
    let headers = object_headers(kind, &etag)?;
    if if_none_match.is_some_and(|header| if_none_match_matches(&header, &etag)) {
        return Ok(Response::empty()?.with_status(304).with_headers(headers));
    }
    if head_only {
        headers.set("Content-Length", &size.to_string())?;
        return Ok(Response::empty()?.with_headers(headers));
    }
    match RangeRequest::resolve(range_header.as_deref(), size) {
        RangeRequest::Full => {
            let object = bucket
                .get(&key)
                .execute()
                .await?
                .ok_or(EdgeError::NotFound)?;
            headers.set("Content-Length", &object.size().to_string())?;
            stream(object, headers, 200)
        }
        RangeRequest::Partial { start, end } => {
            let length = end - start + 1;
            let object = bucket
                .get(&key)
                .range(worker::Range::OffsetWithLength {
                    offset: start,
                    length,
                })
                .execute()
                .await?
                .ok_or(EdgeError::NotFound)?;
            // Built from what was asked and the size seen: Object::range() panics in
            // workers-rs 0.8.7 (FIELD-NOTES §2).
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

/// Headers shared by every answer about a stored object.
fn object_headers(kind: Kind, etag: &str) -> Result<Headers, EdgeError> {
    let headers = Headers::new();
    headers.set("Content-Type", kind.content_type())?;
    headers.set("Cache-Control", kind.cache_control())?;
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

/// A small file rendered from configuration rather than read from R2.
pub(super) fn generated(kind: Kind, text: String, head_only: bool) -> Result<Response, EdgeError> {
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
