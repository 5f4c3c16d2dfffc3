//! PUT and DELETE of protocol files: verified, then stored. Nothing reaches R2 under a
//! protocol name before it has been checked (the rules are `crate::core::publish`).

use worker::{console_error, console_log, Data, Request, Response};

use super::auth::Guarded;
use super::body::{reject_content_encoding, small_body, stream_body, BodyKind};
use super::bucket::R2;
use super::error::EdgeError;
use super::purge::EdgeCache;
use super::response::Stored;
use super::store;
use super::upstream::Http;
use crate::core::index::ops::OwnLogOp;
use crate::core::index::passes::{self, publish::Sources, EdgePurge, IndexCalls};
use crate::core::index::{Entry, OwnLog};
use crate::core::nix::nar_file::NarFile;
use crate::core::nix::store_path::StorePathHash;
use crate::core::publish::{self, SideFile, MAX_NARINFO_BYTES};
use crate::core::route::Route;
use crate::core::token::{TokenId, VerifiedToken};

/// PUT of a protocol file (the core planned `Operation::Store` for this route).
pub async fn store(
    req: Request,
    route: &Route,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    let outcome = match route {
        Route::Nar(nar) => store_nar(&req, nar, cache).await?,
        Route::Narinfo(hash) => store_narinfo(req, route, hash, cache).await?,
        Route::Log(_) => store_log(&req, route, cache).await?,
        _ => match SideFile::of(route) {
            Some(kind) => store_side_file(req, route, &kind, cache).await?,
            None => return Err(EdgeError::NotFound),
        },
    };
    log_write("PUT", route, &cache.token, &outcome);
    if matches!(outcome, Stored::Replaced) {
        edge.purge(&[route.to_string()]).await;
    }
    outcome.into_response()
}

/// A NAR in one request. R2 hashes the stream and refuses bytes that do not match the
/// name: no hashing in wasm.
async fn store_nar(req: &Request, nar: &NarFile, cache: &Guarded) -> Result<Stored, EdgeError> {
    let body = stream_body(req, cache.config.max_request_bytes, BodyKind::Nar)?;
    let key = Route::Nar(*nar).to_string();
    if cache.bucket.head(&key).await?.is_some() {
        // Named by its SHA-256: what is stored is already these bytes.
        return Ok(Stored::Unchanged);
    }
    cache
        .bucket
        .put(&key, Data::ReadableStream(body))
        .sha256(nar.file_hash.0.to_vec())
        .execute()
        .await
        .map_err(|err| {
            EdgeError::from_r2_put(err, "NAR bytes do not hash to the name in the URL")
        })?;
    Ok(Stored::Created)
}

/// A narinfo: checked by the core, its NAR present with the stated size, then stored
/// unless a different one is there.
async fn store_narinfo(
    mut req: Request,
    route: &Route,
    hash: &StorePathHash,
    cache: &Guarded,
) -> Result<Stored, EdgeError> {
    let bytes = small_body(&mut req, MAX_NARINFO_BYTES, BodyKind::Narinfo).await?;
    let checked = publish::check_narinfo(&bytes, hash, &cache.config)
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    let nar_key = Route::Nar(checked.nar).to_string();
    let nar = cache.bucket.head(&nar_key).await?.ok_or_else(|| {
        EdgeError::BadRequest(format!(
            "{nar_key} is not in the cache: upload the NAR first"
        ))
    })?;
    if checked.file_size != nar.size() {
        return Err(EdgeError::BadRequest(format!(
            "narinfo FileSize {} but the stored NAR has {} bytes",
            checked.file_size,
            nar.size()
        )));
    }
    // The references must be there (and stay there) before the narinfo is.
    let index = cache.index()?;
    let now = cache.now_ms();
    let entry = Entry {
        signed: checked.signed,
        ..Entry::of(&checked.info, now, Some(&cache.token))
    };
    let sources = Sources {
        bucket: &R2(&cache.bucket),
        upstreams: &Http,
        upstream_caches: &cache.config.upstream_caches,
        store_dir: &cache.config.store_dir,
    };
    let supersedes = |old: &[u8]| publish::signed_replaces_unsigned(old, &checked, &cache.config);
    let put = || async {
        let stored = store::put_small(
            &cache.bucket,
            &route.to_string(),
            bytes,
            &cache.token,
            supersedes,
        )
        .await?;
        let unchanged = matches!(stored, Stored::Unchanged);
        Ok::<_, EdgeError>((stored, unchanged))
    };
    passes::publish::publish(&sources, &index, &checked.info, entry, now, put).await
}

/// A build log, streamed into R2. The index hears of it: a log uploaded while a path
/// names its derivation goes with that path; any other log stays (docs/gc.md).
async fn store_log(req: &Request, route: &Route, cache: &Guarded) -> Result<Stored, EdgeError> {
    reject_content_encoding(req)?;
    let body = stream_body(req, cache.config.max_request_bytes, BodyKind::Log)?;
    let stored = store::put_stream(&cache.bucket, &route.to_string(), body, &cache.token).await?;
    if let Route::Log(_) = route {
        let drv = route.to_string().trim_start_matches("log/").to_owned();
        // Best effort: a log the index did not hear of is kept, which is safe.
        if let Err(err) = cache.index()?.call::<OwnLogOp>(&OwnLog { drv }).await {
            console_error!("recording the owner of /{route} failed: {err}");
        }
    }
    Ok(stored)
}

/// A JSON side file (`.ls`, realisation, debuginfo): its shape, and a realisation's
/// signature, checked by the core before it is stored.
async fn store_side_file(
    mut req: Request,
    route: &Route,
    kind: &SideFile,
    cache: &Guarded,
) -> Result<Stored, EdgeError> {
    let bytes = small_body(&mut req, kind.max_bytes(), BodyKind::Json).await?;
    kind.check(&bytes, &cache.config)
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    store::put_small(
        &cache.bucket,
        &route.to_string(),
        bytes,
        &cache.token,
        |_| false,
    )
    .await
}

/// PUT `nix-cache-info`: Nix sends one when it finds none; the worker's is configuration.
pub fn keep_cache_info(route: &Route, cache: &Guarded) -> Result<Response, EdgeError> {
    log_write("PUT", route, &cache.token, &Stored::Unchanged);
    Stored::Unchanged.into_response()
}

/// PUT `_nixflare/revocations/<id>`: from now on the token is refused.
pub async fn revoke(id: TokenId, cache: &Guarded) -> Result<Response, EdgeError> {
    let route = Route::Revocation(id);
    cache
        .bucket
        .put(route.to_string(), Data::Empty)
        .execute()
        .await?;
    log_write("PUT", &route, &cache.token, &Stored::Created);
    Stored::Created.into_response()
}

/// DELETE of a narinfo or NAR. A narinfo goes only when no other published (or
/// being published) path references it and no pin names it: the index says, and marks
/// it as being deleted so no publish counts on it meanwhile.
pub async fn delete(
    route: &Route,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    match route {
        Route::Narinfo(hash) => {
            let index = cache.index()?;
            passes::publish::delete_narinfo(
                &R2(&cache.bucket),
                &index,
                edge,
                *hash,
                cache.now_ms(),
            )
            .await?;
        }
        _ => {
            cache.bucket.delete(route.to_string()).await?;
            edge.purge(&[route.to_string()]).await;
        }
    }
    log_write("DELETE", route, &cache.token, &Stored::Deleted);
    Stored::Deleted.into_response()
}

/// Subject and path only: the token itself never reaches a log.
fn log_write(method: &str, route: &Route, token: &VerifiedToken, outcome: &Stored) {
    console_log!("{method} /{route} by {}: {outcome:?}", token.subject);
}
