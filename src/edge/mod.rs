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
mod oidc;
mod private;
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
use crate::core::config::{var, CacheConfig, ReadAccess};
use crate::core::dispatch::{self, Operation, Plan, Public};
use crate::core::http::{query_pairs, Method};
use crate::core::index::ops::TickOp;
use crate::core::index::At;
use crate::core::route::{Route, PRIVATE_CACHE_CONTROL};
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
    let access = read_access(&env);
    let public = matches!(access, Ok(ReadAccess::Public));
    let handled = match access {
        Ok(access) => handle(req, method, access, &env, &ctx).await,
        Err(err) => Err(err),
    };
    let mut response = match handled {
        Ok(response) => response,
        Err(err) => err.into_response(head_only)?,
    };
    if !public {
        // Every answer of a private cache, refusals and 404s included: a copy kept in
        // Workers Cache would be served to the next request without a token check.
        let headers = response.headers_mut();
        headers.set("Cache-Control", PRIVATE_CACHE_CONTROL)?;
        // Workers Cache heeds these over Cache-Control; nothing sets them, and nothing may.
        headers.delete("CDN-Cache-Control")?;
        headers.delete("Cloudflare-CDN-Cache-Control")?;
    }
    Ok(response)
}

async fn handle(
    req: Request,
    method: Method,
    access: ReadAccess,
    env: &Env,
    ctx: &Context,
) -> Result<Response, EdgeError> {
    // Routing first: a path that does not parse never reaches storage.
    let route = Route::parse(&req.path()).ok_or(EdgeError::NotFound)?;
    let head_only = method == Method::Head;
    // Only multipart requests read their query; a malformed one is refused here,
    // before the token is looked at.
    let query = || query_pairs(&req.inner().url());
    let (operation, needs) = match dispatch::plan(method, &route, access, query)? {
        // The anonymous read path: R2 only, no configuration parsed, no token.
        Plan::Public(Public::Serve) => {
            return read::serve(&req, &bucket(env)?, &route, head_only).await
        }
        Plan::Public(Public::Render) => return read::render(&route, || config(env), head_only),
        // A private cache's read: the token first, and nothing else before it.
        Plan::Private(public) => {
            auth::admit_reader(&req, env).await?;
            return match public {
                Public::Serve => {
                    read::serve_private(&req, &bucket(env)?, &route, head_only, env, ctx).await
                }
                Public::Render => read::render(&route, || config(env), head_only),
            };
        }
        Plan::Guarded { operation, needs } => (operation, needs),
    };
    let edge_cache = || EdgeCache::of(ctx, access, &req, env);
    let cache = Guarded::open(&req, env, needs).await?;
    match operation {
        Operation::Whoami => response::json(
            200,
            api::render(&api::Whoami::of(&cache.credential)),
            head_only,
        ),
        Operation::KeepCacheInfo => write::keep_cache_info(&route, &cache),
        Operation::Store => {
            let edge_cache = edge_cache();
            write::store(req, &route, &cache, &edge_cache).await
        }
        Operation::Revoke(id) => write::revoke(id, &cache).await,
        Operation::Delete => write::delete(&route, &cache, &edge_cache()).await,
        Operation::Upload(nar, action) => multipart::handle(req, nar, action, &cache).await,
        Operation::QueryMissing => queries::missing(req, &cache).await,
        Operation::PublishBatch => {
            let edge_cache = edge_cache();
            write::publish_batch(req, &cache, &edge_cache).await
        }
        Operation::Stats => queries::stats(&cache, head_only).await,
        Operation::Metrics => queries::metrics(&cache, head_only).await,
        Operation::Reconcile => queries::reconcile(&cache).await,
        Operation::GcPlan => gc::plan(&cache, head_only).await,
        Operation::GcRun => {
            let edge_cache = edge_cache();
            gc::run(req, &cache, &edge_cache).await
        }
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

/// The one variable every request reads: who may read. Unset is public; a value that is
/// neither word, or not text at all (a JSON variable), fails closed: 500 for everything,
/// never a public answer.
fn read_access(env: &Env) -> Result<ReadAccess, EdgeError> {
    let value = js_sys::Reflect::get(env.as_ref(), &var::READ_ACCESS.into())
        .map_err(|_| EdgeError::Unconfigured("the environment cannot be read".into()))?;
    let text = match value.as_string() {
        Some(text) => Some(text),
        None if value.is_undefined() => None,
        None => Some("(not text)".to_owned()),
    };
    ReadAccess::parse(text.as_deref()).map_err(EdgeError::Misconfigured)
}

/// The bucket R2 binds to this worker.
fn bucket(env: &Env) -> Result<Bucket, EdgeError> {
    Ok(env.bucket(BUCKET_BINDING)?)
}

fn config(env: &Env) -> Result<CacheConfig, EdgeError> {
    CacheConfig::from_vars(|name| env.var(name).ok().map(|v| v.to_string()))
        .map_err(EdgeError::Misconfigured)
}
