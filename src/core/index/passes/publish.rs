//! Publishing and deleting a narinfo, with the index keeping every closure whole.
//!
//! Publishing (closure-complete): the narinfo is stored only when every path it
//! references is in the cache or served by a configured upstream cache, and the index
//! holds a reservation that keeps those references from being deleted until the
//! narinfo is stored and recorded. The index answers first; references it lacks are
//! looked for in the bucket (a narinfo written behind the worker's back is adopted) and
//! then upstream, with one narinfo HEAD per upstream; what is found is remembered, so
//! each reference is looked up upstream about once a month.
//!
//! Deleting: the index forgets the path first (refused while anything needs it), then
//! R2 deletes the narinfo, then the index hears it is gone. Killed in between, the
//! index keeps the path's references and its delete marker, so nothing it names goes
//! and no publish counts on it; the reconcile lap settles it (the narinfo still there:
//! indexed again; gone: its references dropped).

use core::future::Future;

use super::reconcile::{read_narinfo, Read};
use super::{Bucket, EdgePurge, Found, IndexCalls, PassError, Upstreams};
use crate::core::index::ops::{AbortOp, BeginOp, CommitOp, ForgetDoneOp, ForgetOp};
use crate::core::index::{
    describe_missing, Begin, Begun, Entry, Finish, Forget, Forgot, UpstreamHit,
    MAX_ADOPT_REFERENCES, MAX_BUCKET_LOOKUPS, MAX_UPSTREAM_CHECKS,
};
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;
use crate::core::route::Route;

/// Where a publish looks for references the index lacks.
pub struct Sources<'a, B, U> {
    pub bucket: &'a B,
    pub upstreams: &'a U,
    pub upstream_caches: &'a [String],
    pub store_dir: &'a str,
}

/// Reserves, stores with `put` (which answers whether R2 already held these very
/// bytes), then records the path; a failed `put` releases the reservation.
pub async fn publish<B, U, I, T, E, F, Fut>(
    sources: &Sources<'_, B, U>,
    index: &I,
    narinfo: &NarInfo,
    entry: Entry,
    now: u64,
    put: F,
) -> Result<T, E>
where
    B: Bucket,
    U: Upstreams,
    I: IndexCalls,
    E: From<PassError>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<(T, bool), E>>,
{
    let reservation = reserve(sources, index, narinfo, entry, now).await?;
    let stored = put().await;
    match stored {
        Ok((value, unchanged)) => {
            // Should this fail, the client's retry finds the same bytes stored and
            // records them then.
            index
                .call::<CommitOp>(&Finish {
                    reservation,
                    now,
                    unchanged,
                })
                .await
                .map_err(PassError::from)?;
            Ok(value)
        }
        Err(err) => {
            // The write's own error is the answer; a reservation left behind expires.
            let _ = index
                .call::<AbortOp>(&Finish {
                    reservation,
                    now,
                    unchanged: false,
                })
                .await;
            Err(err)
        }
    }
}

/// Reserves `entry`'s path in the index once its references are all available; the
/// reservation id to commit or abort.
pub async fn reserve<B: Bucket, U: Upstreams, I: IndexCalls>(
    sources: &Sources<'_, B, U>,
    index: &I,
    narinfo: &NarInfo,
    entry: Entry,
    now: u64,
) -> Result<u64, PassError> {
    let mut begin = Begin {
        entry,
        upstreams: sources.upstream_caches.to_vec(),
        adopt: Vec::new(),
        upstream_hits: Vec::new(),
        now,
    };
    let missing = match index.call::<BeginOp>(&begin).await? {
        Begun::Reserved { reservation } => return Ok(reservation),
        Begun::Missing { missing } => missing,
        Begun::Deleting { .. } => return Err(being_deleted(narinfo)),
    };
    // The first few are looked for in the bucket, then upstream; the rest upstream only,
    // where "absent" is not final (they may still be in the bucket): a later request
    // looks them up, after this one remembered what it found.
    let (looked, rest) = missing.split_at(missing.len().min(MAX_BUCKET_LOOKUPS));
    let mut adopt = Vec::new();
    let mut not_in_bucket = Vec::new();
    // What one request adopts is bounded by its references, like a reconcile step's: a
    // reference found past that is left for the retry.
    let mut references = 0;
    let mut deferred = 0;
    for hash in looked {
        match read_narinfo(sources.bucket, hash, sources.store_dir).await? {
            Read::Entry(entry)
                if references + entry.references.len() > MAX_ADOPT_REFERENCES
                    && !adopt.is_empty() =>
            {
                deferred += 1;
            }
            Read::Entry(entry) => {
                references += entry.references.len();
                adopt.push(entry);
            }
            Read::Unreadable(_) | Read::Gone => not_in_bucket.push(*hash),
        }
    }
    let candidates: Vec<StorePathHash> = not_in_bucket.iter().chain(rest).copied().collect();
    let found = upstream(sources.upstreams, sources.upstream_caches, &candidates).await?;
    let (absent, unsure): (Vec<StorePathHash>, Vec<StorePathHash>) = found
        .absent
        .iter()
        .partition(|hash| not_in_bucket.contains(hash));
    if !absent.is_empty() {
        return Err(refused(&absent, narinfo));
    }
    let left = found.unchecked.len() + unsure.len() + deferred;
    let known = adopt.len() + found.hits.len();
    begin.adopt = adopt;
    begin.upstream_hits = found.hits;
    // Records what was found even when the answer is still "missing".
    match index.call::<BeginOp>(&begin).await? {
        Begun::Reserved { reservation } => Ok(reservation),
        Begun::Missing { .. } if left > 0 => Err(PassError::Busy(format!(
            "{known} of {} references the index lacked found so far; send the narinfo again to look for the rest",
            missing.len()
        ))),
        // Deleted between the two questions.
        Begun::Missing { missing } => Err(refused(&missing, narinfo)),
        Begun::Deleting { .. } => Err(being_deleted(narinfo)),
    }
}

fn being_deleted(narinfo: &NarInfo) -> PassError {
    PassError::Busy(format!(
        "{} is being deleted; send it again",
        narinfo.store_path
    ))
}

fn refused(missing: &[StorePathHash], narinfo: &NarInfo) -> PassError {
    PassError::MissingReferences(format!(
        "{} references paths neither in this cache nor in its upstream caches: {}; push them first",
        narinfo.store_path,
        describe_missing(missing, narinfo)
    ))
}

/// What the upstream caches said about the missing references.
struct UpstreamAnswer {
    hits: Vec<UpstreamHit>,
    absent: Vec<StorePathHash>,
    /// Left for a later request: more than one request's subrequest budget.
    unchecked: Vec<StorePathHash>,
}

/// Which missing references an upstream cache serves, as many as one request may ask.
async fn upstream<U: Upstreams>(
    upstreams: &U,
    caches: &[String],
    missing: &[StorePathHash],
) -> Result<UpstreamAnswer, PassError> {
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
    let mut answer = UpstreamAnswer {
        hits: Vec::new(),
        absent: Vec::new(),
        unchecked: later.to_vec(),
    };
    let mut unreachable = None;
    for (hash, found) in now.iter().zip(upstreams.lookup(caches, now).await) {
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
        return Err(PassError::Upstream(why));
    }
    Ok(answer)
}

/// DELETE of a narinfo: only when nothing published (or being published) references
/// it and no pin names it.
pub async fn delete_narinfo<B: Bucket, I: IndexCalls, P: EdgePurge>(
    bucket: &B,
    index: &I,
    purge: &P,
    hash: StorePathHash,
    now: u64,
) -> Result<(), PassError> {
    let route = Route::Narinfo(hash);
    // The NAR the stored narinfo names, so it gets its grace period whatever the index
    // knew of the path (one R2 GET).
    let nar = bucket
        .get(&route.to_string(), crate::core::publish::MAX_NARINFO_BYTES)
        .await?
        .and_then(|stored| stored.bytes)
        .and_then(|bytes| crate::core::index::lenient_nar_key(&bytes));
    let forget = Forget {
        hash,
        now,
        purged: false,
        nar,
    };
    match index.call::<ForgetOp>(&forget).await? {
        Forgot::Forgotten { .. } => {}
        Forgot::Referenced { referrers } => {
            let names: Vec<String> = referrers.iter().map(ToString::to_string).collect();
            return Err(PassError::Conflict(format!(
                "/{route} is referenced by {}: delete those first",
                names.join(", ")
            )));
        }
        Forgot::Pinned { pins } => {
            let names: Vec<String> = pins.iter().map(ToString::to_string).collect();
            return Err(PassError::Conflict(format!(
                "/{route} is pinned by {}: remove the pins first (nixflare pin remove)",
                names.join(", ")
            )));
        }
        Forgot::Publishing { .. } => {
            return Err(PassError::Busy(format!(
                "/{route} is being published; send the delete again"
            )))
        }
    }
    let key = route.to_string();
    bucket.delete(core::slice::from_ref(&key)).await?;
    let purged = purge.purge(core::slice::from_ref(&key)).await;
    index
        .call::<ForgetDoneOp>(&Forget {
            purged,
            nar: None,
            ..forget
        })
        .await?;
    Ok(())
}
