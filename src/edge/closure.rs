//! Closure-complete publishing: a narinfo is stored only when every path it references
//! is in the cache or served by a configured upstream cache (`UPSTREAM_CACHES`), and the
//! index holds a reservation that keeps those references from being deleted until the
//! narinfo is stored (`crate::core::index::Begin`).
//!
//! The index answers first. References it lacks are looked for in the bucket (a narinfo
//! written behind the worker's back is adopted into the index) and then upstream, with
//! one narinfo HEAD per upstream; what is found is remembered, so each reference is
//! looked up upstream once.

use futures_util::future::join_all;
use worker::{Bucket, Fetch, Method, Request, RequestInit};

use super::auth::Guarded;
use super::error::EdgeError;
use super::index_client::IndexClient;
use crate::core::index::{
    describe_missing, Begin, Begun, Entry, UpstreamHit, MAX_LISTED, MAX_UPSTREAM_CHECKS,
};
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;
use crate::core::route::Route;

/// Reserves `entry`'s path in the index once its references are all available; the
/// reservation id to commit or abort.
pub async fn reserve(
    cache: &Guarded,
    index: &IndexClient,
    narinfo: &NarInfo,
    entry: Entry,
    now: u64,
) -> Result<u64, EdgeError> {
    let mut begin = Begin {
        entry,
        upstreams: cache.config.upstream_caches.clone(),
        adopt: Vec::new(),
        upstream_hits: Vec::new(),
        now,
    };
    let missing = match index.begin(&begin).await? {
        Begun::Reserved { reservation } => return Ok(reservation),
        Begun::Missing { missing } => missing,
    };
    if missing.contains(&begin.entry.hash) {
        return Err(EdgeError::Conflict(format!(
            "{} is being deleted; send it again in a moment",
            narinfo.store_path
        )));
    }
    let (adopt, missing) =
        in_bucket(&cache.bucket, &missing, &cache.config.store_dir, narinfo).await?;
    let found = upstream(&cache.config.upstream_caches, &missing).await?;
    if !found.absent.is_empty() {
        return Err(refused(&found.absent, narinfo));
    }
    let checked = found.hits.len();
    begin.adopt = adopt;
    begin.upstream_hits = found.hits;
    // Records what was found even when the answer is still "missing".
    match index.begin(&begin).await? {
        Begun::Reserved { reservation } => Ok(reservation),
        Begun::Missing { .. } if !found.unchecked.is_empty() => Err(EdgeError::Busy(format!(
            "{checked} of {} references found in the upstream caches so far; send the narinfo again to check the rest",
            checked + found.unchecked.len()
        ))),
        // Deleted between the two questions.
        Begun::Missing { missing } => Err(refused(&missing, narinfo)),
    }
}

fn refused(missing: &[StorePathHash], narinfo: &NarInfo) -> EdgeError {
    EdgeError::MissingReferences(format!(
        "{} references paths neither in this cache nor in its upstream caches: {}; push them first",
        narinfo.store_path,
        describe_missing(missing, narinfo)
    ))
}

/// Missing references whose narinfo is in the bucket after all (written there directly,
/// or published while the index was failing): read and adopted.
async fn in_bucket(
    bucket: &Bucket,
    missing: &[StorePathHash],
    store_dir: &str,
    narinfo: &NarInfo,
) -> Result<(Vec<Entry>, Vec<StorePathHash>), EdgeError> {
    // Each costs an R2 GET; a publish naming more unknown references than this is
    // refused without looking (the reconcile pass indexes a seeded bucket in bulk).
    if missing.len() > MAX_LISTED * 10 {
        return Err(refused(missing, narinfo));
    }
    let mut adopt = Vec::new();
    let mut still = Vec::new();
    for hash in missing {
        match read_narinfo(bucket, hash, store_dir).await? {
            Some(entry) => adopt.push(entry),
            None => still.push(*hash),
        }
    }
    Ok((adopt, still))
}

/// The index entry for the narinfo stored under `hash`, if there is one that parses.
pub async fn read_narinfo(
    bucket: &Bucket,
    hash: &StorePathHash,
    store_dir: &str,
) -> Result<Option<Entry>, EdgeError> {
    let Some(object) = bucket
        .get(Route::Narinfo(*hash).to_string())
        .execute()
        .await?
    else {
        return Ok(None);
    };
    let uploaded = object.uploaded().as_millis();
    let bytes = object.body().ok_or(EdgeError::MissingBody)?.bytes().await?;
    Ok(NarInfo::parse(&bytes, store_dir)
        .ok()
        .filter(|info| info.store_path.hash() == hash)
        .map(|info| Entry::of(&info, uploaded, None)))
}

/// What the upstream caches said about the missing references.
struct UpstreamAnswer {
    hits: Vec<UpstreamHit>,
    absent: Vec<StorePathHash>,
    /// Left for a later request: more than one request's subrequest budget.
    unchecked: Vec<StorePathHash>,
}

/// Which missing references an upstream cache serves, as many as one request may ask.
async fn upstream(
    caches: &[String],
    missing: &[StorePathHash],
) -> Result<UpstreamAnswer, EdgeError> {
    if caches.is_empty() {
        return Ok(UpstreamAnswer {
            hits: Vec::new(),
            absent: missing.to_vec(),
            unchecked: Vec::new(),
        });
    }
    let budget = (MAX_UPSTREAM_CHECKS / caches.len())
        .max(1)
        .min(missing.len());
    let (now, later) = missing.split_at(budget);
    let checks = now.iter().map(|hash| in_upstreams(caches, *hash));
    let mut answer = UpstreamAnswer {
        hits: Vec::new(),
        absent: Vec::new(),
        unchecked: later.to_vec(),
    };
    let mut unreachable = None;
    for (hash, found) in now.iter().zip(join_all(checks).await) {
        match found {
            Found::In(cache) => answer.hits.push(UpstreamHit { hash: *hash, cache }),
            Found::Absent => answer.absent.push(*hash),
            Found::Unreachable(why) => unreachable = Some(why),
        }
    }
    // A definite "absent" refuses the narinfo whatever else happened; an upstream that
    // could not answer is worth a retry.
    if let (Some(why), true) = (unreachable, answer.absent.is_empty()) {
        return Err(EdgeError::Upstream(why));
    }
    Ok(answer)
}

enum Found {
    In(String),
    Absent,
    Unreachable(String),
}

/// One narinfo HEAD per upstream, in order, until one has it.
async fn in_upstreams(caches: &[String], hash: StorePathHash) -> Found {
    let mut unreachable = None;
    for cache in caches {
        let url = format!("{cache}/{hash}.narinfo");
        let mut init = RequestInit::new();
        init.with_method(Method::Head);
        let answer = match Request::new_with_init(&url, &init) {
            Ok(request) => Fetch::Request(request).send().await,
            Err(err) => Err(err),
        };
        match answer.map(|r| r.status_code()) {
            Ok(200) => return Found::In(cache.clone()),
            // What Nix itself takes for "not there".
            Ok(404 | 403 | 410) => {}
            Ok(status) => unreachable = Some(format!("{url} answered HTTP {status}")),
            Err(err) => unreachable = Some(format!("{url}: {err}")),
        }
    }
    unreachable.map_or(Found::Absent, Found::Unreachable)
}
