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
use worker::{Bucket, Fetch, Method, Request, RequestInit, RequestRedirect};

use super::auth::Guarded;
use super::error::EdgeError;
use super::index_client::IndexClient;
use crate::core::index::{
    describe_missing, Begin, Begun, Entry, UpstreamHit, MAX_BUCKET_LOOKUPS, MAX_UPSTREAM_CHECKS,
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
        Begun::Deleting { .. } => return Err(being_deleted(narinfo)),
    };
    // The first few are looked for in the bucket, then upstream; the rest upstream only,
    // where "absent" is not final (they may still be in the bucket): a later request
    // looks them up, after this one remembered what it found.
    let (looked, rest) = missing.split_at(missing.len().min(MAX_BUCKET_LOOKUPS));
    let (adopt, not_in_bucket) = in_bucket(&cache.bucket, looked, &cache.config.store_dir).await?;
    let candidates: Vec<StorePathHash> = not_in_bucket.iter().chain(rest).copied().collect();
    let found = upstream(&cache.config.upstream_caches, &candidates).await?;
    let (absent, unsure): (Vec<StorePathHash>, Vec<StorePathHash>) = found
        .absent
        .iter()
        .partition(|hash| not_in_bucket.contains(hash));
    if !absent.is_empty() {
        return Err(refused(&absent, narinfo));
    }
    let left = found.unchecked.len() + unsure.len();
    let known = adopt.len() + found.hits.len();
    begin.adopt = adopt;
    begin.upstream_hits = found.hits;
    // Records what was found even when the answer is still "missing".
    match index.begin(&begin).await? {
        Begun::Reserved { reservation } => Ok(reservation),
        Begun::Missing { .. } if left > 0 => Err(EdgeError::Busy(format!(
            "{known} of {} references the index lacked found so far; send the narinfo again to look for the rest",
            missing.len()
        ))),
        // Deleted between the two questions.
        Begun::Missing { missing } => Err(refused(&missing, narinfo)),
        Begun::Deleting { .. } => Err(being_deleted(narinfo)),
    }
}

fn being_deleted(narinfo: &NarInfo) -> EdgeError {
    EdgeError::Busy(format!(
        "{} is being deleted; send it again",
        narinfo.store_path
    ))
}

fn refused(missing: &[StorePathHash], narinfo: &NarInfo) -> EdgeError {
    EdgeError::MissingReferences(format!(
        "{} references paths neither in this cache nor in its upstream caches: {}; push them first",
        narinfo.store_path,
        describe_missing(missing, narinfo)
    ))
}

/// Missing references whose narinfo is in the bucket after all (written there directly,
/// or published while the index was failing): read, to be adopted. One R2 GET each.
async fn in_bucket(
    bucket: &Bucket,
    missing: &[StorePathHash],
    store_dir: &str,
) -> Result<(Vec<Entry>, Vec<StorePathHash>), EdgeError> {
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
            Found::Unreachable(why) => {
                unreachable = Some(why);
                answer.unchecked.push(*hash);
            }
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
        // A redirect is not an answer (and following one costs another subrequest).
        init.with_method(Method::Head)
            .with_redirect(RequestRedirect::Manual);
        let answer = match Request::new_with_init(&url, &init) {
            Ok(request) => Fetch::Request(request).send().await,
            Err(err) => Err(err),
        };
        match answer.map(|r| r.status_code()) {
            Ok(200) => return Found::In(cache.clone()),
            // What Nix itself takes for "not there".
            Ok(404 | 403 | 410) => {}
            Ok(status @ 300..=399) => {
                unreachable = Some(format!("{url} redirects (HTTP {status}): not followed"))
            }
            Ok(status) => unreachable = Some(format!("{url} answered HTTP {status}")),
            Err(err) => unreachable = Some(format!("{url}: {err}")),
        }
    }
    unreachable.map_or(Found::Absent, Found::Unreachable)
}
