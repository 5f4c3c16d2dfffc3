//! The index's answers for the `nixflare` client: which paths are missing, what the
//! cache holds, and a reconcile step. Guarded operations only: the anonymous read path
//! never reaches the index.

use worker::{Request, Response};

use super::auth::Guarded;
use super::body::json_body;
use super::error::EdgeError;
use super::reconcile;
use super::response;
use crate::core::api::{self, PathQuery};
use crate::core::index::{Query, MAX_QUERY_HASHES};
use crate::core::nix::store_path::StorePathHash;

/// Largest query body: a thousand quoted 32-character hashes and then some.
const MAX_QUERY_BYTES: u64 = 64 * 1024;

/// A batch of store path hashes (`PathQuery`): at most [`MAX_QUERY_HASHES`].
pub async fn hash_batch(req: &mut Request) -> Result<Vec<StorePathHash>, EdgeError> {
    let query: PathQuery =
        json_body(req, MAX_QUERY_BYTES, "{\"hashes\": [store path hashes]}").await?;
    if query.hashes.len() > MAX_QUERY_HASHES {
        return Err(EdgeError::TooLarge(format!(
            "at most {MAX_QUERY_HASHES} hashes per request"
        )));
    }
    Ok(query.hashes)
}

/// POST `_nixflare/missing`.
pub async fn missing(mut req: Request, cache: &Guarded) -> Result<Response, EdgeError> {
    let hashes = hash_batch(&mut req).await?;
    let answer = cache
        .index()?
        .query(&Query {
            hashes,
            upstreams: cache.config.upstream_caches.clone(),
            now: cache.now_ms(),
        })
        .await?;
    response::json(200, answer, false)
}

/// GET/HEAD `_nixflare/stats`.
pub async fn stats(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let answer = cache.index()?.stats().await?;
    response::json(200, answer, head_only)
}

/// POST `_nixflare/reconcile`: one step; the client calls again until the pass is done.
pub async fn reconcile(cache: &Guarded) -> Result<Response, EdgeError> {
    let index = cache.index()?;
    let step = reconcile::step(
        &cache.bucket,
        &index,
        &cache.config.store_dir,
        cache.now_ms(),
    )
    .await?;
    response::json(200, api::render(&step), false)
}
