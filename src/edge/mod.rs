//! The worker: binds the pure core to workers-rs Requests, Responses, R2 and cron.
//!
//! Kept thin on purpose. What to do is decided by the core ([`Route::parse`],
//! [`dispatch::plan`], [`publish`](crate::core::publish), [`multipart`](crate::core::multipart));
//! this layer moves headers and streams and talks to R2. Object bodies go from R2 to the
//! client as the runtime's own stream and never enter wasm (docs/platform.md §3).

mod auth;
mod body;
mod bucket;
mod cleanup;
mod decode;
mod error;
mod gc;
mod index;
mod index_client;
mod multipart;
mod purge;
mod queries;
mod read;
mod response;
mod store;
mod upstream;
mod write;

use worker::{
    console_error, console_log, event, Bucket, Context, Env, Request, Response, ScheduleContext,
    ScheduledEvent,
};

use crate::core::api;
use crate::core::config::CacheConfig;
use crate::core::dispatch::{self, Operation, Plan, Public};
use crate::core::http::{query_pairs, Method};
use crate::core::index::ops::TickOp;
use crate::core::index::At;
use crate::core::route::Route;
use auth::Guarded;
use error::EdgeError;
use purge::EdgeCache;

/// The R2 binding in wrangler.toml.
const BUCKET_BINDING: &str = "BUCKET";

#[event(start)]
fn start() {
    console_error_panic_hook::set_once();
}

#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let method = Method::parse(req.method().as_ref());
    let head_only = method == Method::Head;
    match handle(req, method, &env, &ctx).await {
        Ok(response) => Ok(response),
        Err(err) => err.into_response(head_only),
    }
}

async fn handle(
    req: Request,
    method: Method,
    env: &Env,
    ctx: &Context,
) -> Result<Response, EdgeError> {
    // Routing first: a path that does not parse never reaches storage.
    let route = Route::parse(&req.path()).ok_or(EdgeError::NotFound)?;
    let head_only = method == Method::Head;
    // Only multipart requests read their query; a malformed one is refused here,
    // before the token is looked at.
    let query = || query_pairs(&req.inner().url());
    let (operation, needs) = match dispatch::plan(method, &route, query)? {
        // The anonymous read path: R2 only, no configuration parsed, no token.
        Plan::Public(Public::Serve) => {
            return read::serve(&req, &bucket(env)?, &route, head_only).await
        }
        Plan::Public(Public::Render) => return read::render(&route, || config(env), head_only),
        Plan::Guarded { operation, needs } => (operation, needs),
    };
    let cache = Guarded::open(&req, env, needs).await?;
    match operation {
        Operation::Whoami => {
            response::json(200, api::render(&api::Whoami::of(&cache.token)), head_only)
        }
        Operation::KeepCacheInfo => write::keep_cache_info(&route, &cache),
        Operation::Store => write::store(req, &route, &cache, &EdgeCache::of(ctx)).await,
        Operation::Revoke(id) => write::revoke(id, &cache).await,
        Operation::Delete => write::delete(&route, &cache, &EdgeCache::of(ctx)).await,
        Operation::Upload(nar, action) => multipart::handle(req, nar, action, &cache).await,
        Operation::QueryMissing => queries::missing(req, &cache).await,
        Operation::PublishBatch => write::publish_batch(req, &cache, &EdgeCache::of(ctx)).await,
        Operation::Stats => queries::stats(&cache, head_only).await,
        Operation::Reconcile => queries::reconcile(&cache).await,
        Operation::GcPlan => gc::plan(&cache, head_only).await,
        Operation::GcRun => gc::run(req, &cache, &EdgeCache::of(ctx)).await,
        Operation::ListPins => gc::list_pins(&cache, head_only).await,
        Operation::SetPin(name) => gc::set_pin(req, &name, &cache).await,
        Operation::RemovePin(name) => gc::remove_pin(&name, &cache).await,
        Operation::RefreshRoots => gc::refresh_roots(req, &cache).await,
    }
}

/// Cron (`[triggers]` in wrangler.toml): cleans up abandoned multipart uploads, then
/// nudges the index (`tick`), which takes the reconcile and GC steps itself: a Durable
/// Object request gets 30 s of CPU on every plan, where a Free cron gets 10 ms. What one
/// invocation cannot finish, the object's alarm goes on with.
#[event(scheduled)]
async fn scheduled(_event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    let (config, bucket) = match (config(&env), bucket(&env)) {
        (Ok(config), Ok(bucket)) => (config, bucket),
        (Err(err), _) | (_, Err(err)) => {
            console_error!("cron: {err}");
            return;
        }
    };
    let now = worker::Date::now().as_millis();
    if let Err(err) = cleanup::abandoned_uploads(&bucket, &config, now).await {
        console_error!("cleanup failed: {err}");
    }
    let ticked = match index_client::IndexClient::open(&env) {
        Ok(index) => {
            index
                .call_object::<TickOp>(&At {
                    now: config.clock_ms(now),
                })
                .await
        }
        Err(err) => Err(err),
    };
    match ticked {
        Ok(ticked) => console_log!(
            "index: {} reconcile steps; gc {}; more for the alarm: {}",
            ticked.reconcile_steps,
            ticked.gc.map_or("idle".to_owned(), |run| format!(
                "pass {} {:?}, {} paths and {} objects removed so far",
                run.run, run.phase, run.removed_paths, run.removed_objects
            )),
            ticked.more
        ),
        Err(err) => console_error!("index tick failed: {err}"),
    }
}

/// The bucket R2 binds to this worker.
fn bucket(env: &Env) -> Result<Bucket, EdgeError> {
    Ok(env.bucket(BUCKET_BINDING)?)
}

fn config(env: &Env) -> Result<CacheConfig, EdgeError> {
    CacheConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(EdgeError::Misconfigured)
}
