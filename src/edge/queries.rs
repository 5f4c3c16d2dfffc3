//! The index's answers for the `nixflare` client: which paths are missing, what the
//! cache holds, and a reconcile step. Guarded operations only: the anonymous read path
//! never reaches the index.

use worker::{Request, Response};

use super::auth::Guarded;
use super::body::json_body;
use super::error::EdgeError;
use super::response;
use crate::core::api::{self, PathQuery};
use crate::core::index::ops::{GaugesOp, QueryOp, ReconcileStepOp, StatsOp};
use crate::core::index::passes::IndexCalls;
use crate::core::index::{At, Query, MAX_QUERY_HASHES};
use crate::core::metrics::{render_text, Settings};
use crate::core::nix::store_path::StorePathHash;
use crate::core::route::Kind;

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
        .call::<QueryOp>(&Query {
            hashes,
            upstreams: cache.config.upstream_caches.clone(),
            now: cache.now_ms(),
        })
        .await?;
    response::json(200, api::render(&answer), false)
}

/// GET/HEAD `_nixflare/stats`. Who published what is shown only to tokens that may
/// write: a read-only token learns no more than an anonymous reader.
pub async fn stats(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let mut stats = cache.index()?.call::<StatsOp>(&api::True).await?;
    if !cache.may_see_who() {
        for publish in &mut stats.recent {
            publish.subject = None;
            publish.token_id = None;
        }
    }
    response::json(200, api::render(&stats), head_only)
}

/// GET/HEAD `_nixflare/metrics`: one call to the index per scrape.
pub async fn metrics(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let gauges = cache.index()?.call::<GaugesOp>(&api::True).await?;
    let settings = Settings {
        retain_days: cache.config.retain_days,
        budget_bytes: cache.config.max_cache_bytes,
    };
    response::generated(Kind::Metrics, render_text(&gauges, &settings), head_only)
}

/// POST `_nixflare/reconcile`: one step, taken by the index itself; the client calls
/// again until the lap is done.
pub async fn reconcile(cache: &Guarded) -> Result<Response, EdgeError> {
    let step = cache
        .index()?
        .call_object::<ReconcileStepOp>(&At {
            now: cache.now_ms(),
        })
        .await?;
    response::json(200, api::render(&step), false)
}
