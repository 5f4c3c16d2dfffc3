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
use std::collections::{BTreeMap, BTreeSet};

use crate::core::index::ops::{
    AbortOp, BeginBatchOp, BeginOp, CommitOp, FinishBatchOp, ForgetDoneOp, ForgetOp,
};
use crate::core::index::{
    describe_missing, Begin, BeginBatch, Begun, Entry, Finish, FinishBatch, Forget, Forgot,
    IndexError, Stored, UpstreamHit, MAX_ADOPT_REFERENCES, MAX_BUCKET_LOOKUPS, MAX_UPSTREAM_CHECKS,
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

/// One narinfo of a batch: checked, its NAR found with the stated size.
pub struct BatchItem {
    pub narinfo: NarInfo,
    pub entry: Entry,
}

/// Publishes a batch of narinfos as [`publish`] publishes one, with two index calls
/// for the whole batch (three when references must be looked for): the same checks,
/// the same writes, the same refusals, each path answered on its own. References inside
/// the batch count as present: a path's narinfo is written (by `put_wave`, a wave of
/// items at a time, concurrently) only after every one it references in the batch was
/// stored, and a path whose reference in the batch was not stored is not written
/// ([`PassError::Dependency`]). `refused` are hashes of narinfos of the same request
/// refused before this (their dependents are answered the same way). Answers are in
/// the order of `items`.
pub async fn publish_batch<B, U, I, T, E, F, Fut>(
    sources: &Sources<'_, B, U>,
    index: &I,
    items: &[BatchItem],
    refused: &[StorePathHash],
    now: u64,
    mut put_wave: F,
) -> Vec<Result<T, E>>
where
    B: Bucket,
    U: Upstreams,
    I: IndexCalls,
    E: From<PassError>,
    F: FnMut(Vec<usize>) -> Fut,
    Fut: Future<Output = Vec<Result<(T, bool), E>>>,
{
    let mut batch = Batch::new(items, refused);
    if let Err(err) = batch.reserve(sources, index, now).await {
        // What the first call reserved goes back now rather than when it expires.
        let abort = batch.reservations();
        if !abort.is_empty() {
            let finish = FinishBatch {
                commit: Vec::new(),
                abort,
                now,
            };
            let _ = index.call::<FinishBatchOp>(&finish).await;
        }
        return items.iter().map(|_| Err(err.clone().into())).collect();
    }
    let mut results: Vec<Option<Result<T, E>>> = batch
        .fates
        .iter()
        .map(|fate| match fate {
            Fate::Failed(err) => Some(Err(err.clone().into())),
            _ => None,
        })
        .collect();
    let mut commit = Vec::new();
    let mut abort = Vec::new();
    loop {
        let mut wave = Vec::new();
        for &i in &batch.order {
            let Fate::Reserved(reservation) = batch.fates[i] else {
                continue;
            };
            if let Some(failed) = batch.failed_reference(i) {
                let err = dependency(&items[i].narinfo, failed);
                batch.fates[i] = Fate::Failed(err.clone());
                results[i] = Some(Err(err.into()));
                abort.push(reservation);
            } else if batch.references_stored(i) {
                wave.push(i);
            }
        }
        if wave.is_empty() {
            break;
        }
        let outcomes = put_wave(wave.clone()).await;
        for (i, outcome) in wave.into_iter().zip(outcomes) {
            let Fate::Reserved(reservation) = batch.fates[i] else {
                continue;
            };
            match outcome {
                Ok((value, unchanged)) => {
                    batch.fates[i] = Fate::Stored;
                    commit.push(Stored {
                        reservation,
                        unchanged,
                    });
                    results[i] = Some(Ok(value));
                }
                Err(err) => {
                    batch.fates[i] = Fate::Failed(PassError::Busy("its write failed".into()));
                    abort.push(reservation);
                    results[i] = Some(Err(err));
                }
            }
        }
    }
    // Reserved but never ready: references in the batch that form a cycle.
    for (i, fate) in batch.fates.iter().enumerate() {
        if let Fate::Reserved(reservation) = fate {
            abort.push(*reservation);
            results[i] = Some(Err(PassError::MissingReferences(format!(
                "{} and paths it references in this batch reference one another",
                items[i].narinfo.store_path
            ))
            .into()));
        }
    }
    let finish = FinishBatch { commit, abort, now };
    if let Err(err) = index.call::<FinishBatchOp>(&finish).await {
        // Stored but not recorded: the client's retry finds the same bytes stored and
        // records them then (a reservation left behind expires).
        for (i, fate) in batch.fates.iter().enumerate() {
            if let Fate::Stored = fate {
                results[i] = Some(Err(PassError::from(err.clone()).into()));
            }
        }
    }
    results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Err(PassError::Busy("not decided".into()).into())))
        .collect()
}

/// Where a batch item stands.
#[derive(Debug, Clone)]
enum Fate {
    /// Not yet reserved.
    Begun,
    Missing(Vec<StorePathHash>),
    Reserved(u64),
    Stored,
    Failed(PassError),
}

/// A batch's items, references first, and what became of each.
struct Batch<'a> {
    items: &'a [BatchItem],
    /// Indices into `items`, every path after the paths it references in the batch
    /// (those in a cycle last).
    order: Vec<usize>,
    fates: Vec<Fate>,
    /// Each item's references in the batch (indices), itself left out.
    inside: Vec<Vec<usize>>,
    /// Each item's references refused before the batch began.
    refused: Vec<Vec<StorePathHash>>,
    /// Where each item's path is in `items`.
    position: BTreeMap<StorePathHash, usize>,
}

impl<'a> Batch<'a> {
    fn new(items: &'a [BatchItem], refused: &[StorePathHash]) -> Self {
        let position: BTreeMap<StorePathHash, usize> = items
            .iter()
            .enumerate()
            .map(|(i, item)| (item.entry.hash, i))
            .collect();
        let inside: Vec<Vec<usize>> = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut refs: Vec<usize> = item
                    .entry
                    .references
                    .iter()
                    .filter_map(|r| position.get(r).copied())
                    .filter(|&j| j != i)
                    .collect();
                refs.sort_unstable();
                refs.dedup();
                refs
            })
            .collect();
        let refused: BTreeSet<&StorePathHash> = refused.iter().collect();
        let refused = items
            .iter()
            .map(|item| {
                item.entry
                    .references
                    .iter()
                    .filter(|r| refused.contains(r) && !position.contains_key(r))
                    .copied()
                    .collect()
            })
            .collect();
        Batch {
            items,
            order: references_first(&inside),
            fates: vec![Fate::Begun; items.len()],
            inside,
            refused,
            position,
        }
    }

    fn hash(&self, i: usize) -> StorePathHash {
        self.items[i].entry.hash
    }

    fn is_inside(&self, hash: &StorePathHash) -> bool {
        self.position.contains_key(hash)
    }

    /// The reservations held.
    fn reservations(&self) -> Vec<u64> {
        self.fates
            .iter()
            .filter_map(|fate| match fate {
                Fate::Reserved(reservation) => Some(*reservation),
                _ => None,
            })
            .collect()
    }

    /// A reference of item `i` that this batch will not store, if any.
    fn failed_reference(&self, i: usize) -> Option<StorePathHash> {
        if let Some(hash) = self.refused[i].first() {
            return Some(*hash);
        }
        self.inside[i]
            .iter()
            .find(|&&j| matches!(self.fates[j], Fate::Failed(_)))
            .map(|&j| self.hash(j))
    }

    fn references_stored(&self, i: usize) -> bool {
        self.inside[i]
            .iter()
            .all(|&j| matches!(self.fates[j], Fate::Stored))
    }

    fn reserved(&self) -> Vec<StorePathHash> {
        (0..self.items.len())
            .filter(|&i| matches!(self.fates[i], Fate::Reserved(_)))
            .map(|i| self.hash(i))
            .collect()
    }

    /// Asks the index to reserve every item, looks for the references it lacks, and
    /// asks again for those that lacked some. An error is every item's answer.
    async fn reserve<B: Bucket, U: Upstreams, I: IndexCalls>(
        &mut self,
        sources: &Sources<'_, B, U>,
        index: &I,
        now: u64,
    ) -> Result<(), PassError> {
        let all: Vec<usize> = self.order.clone();
        self.begin(
            index,
            &all,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            sources,
            now,
        )
        .await?;
        // Missing a reference refused in this request: answered as its dependent.
        for i in 0..self.items.len() {
            if let Fate::Missing(missing) = &self.fates[i] {
                if let Some(hash) = missing.iter().find(|h| self.refused[i].contains(h)) {
                    self.fates[i] = Fate::Failed(dependency(&self.items[i].narinfo, *hash));
                }
            }
        }
        let waiting: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| matches!(self.fates[i], Fate::Missing(_)))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        // References outside the batch are looked for once for all; those inside are
        // settled by the second call (their own reservation).
        let mut lacking: Vec<StorePathHash> = Vec::new();
        let mut seen: BTreeSet<StorePathHash> = BTreeSet::new();
        for &i in &waiting {
            if let Fate::Missing(missing) = &self.fates[i] {
                for hash in missing {
                    if !self.is_inside(hash) && seen.insert(*hash) {
                        lacking.push(*hash);
                    }
                }
            }
        }
        let looked = match look_for(sources, &lacking).await {
            Ok(looked) => looked,
            Err(err) => {
                for &i in &waiting {
                    self.fates[i] = Fate::Failed(err.clone());
                }
                return Ok(());
            }
        };
        let (left, known) = (looked.left, looked.known());
        let mut again = Vec::new();
        for &i in &waiting {
            let Fate::Missing(missing) = &self.fates[i] else {
                continue;
            };
            let absent: Vec<StorePathHash> = missing
                .iter()
                .filter(|hash| looked.absent.contains(hash))
                .copied()
                .collect();
            if absent.is_empty() {
                again.push(i);
            } else {
                self.fates[i] = Fate::Failed(refused(&absent, &self.items[i].narinfo));
            }
        }
        let reserved = self.reserved();
        self.begin(
            index,
            &again,
            reserved,
            looked.adopt,
            looked.hits,
            sources,
            now,
        )
        .await?;
        for &i in &again {
            let Fate::Missing(missing) = &self.fates[i] else {
                continue;
            };
            let narinfo = &self.items[i].narinfo;
            self.fates[i] = Fate::Failed(match missing.iter().find(|hash| self.is_inside(hash)) {
                Some(hash) => dependency(narinfo, *hash),
                None if left > 0 => still_looking(known, lacking.len()),
                None => refused(missing, narinfo),
            });
        }
        Ok(())
    }

    /// One `begin/batch` for `which` (in order), recording each answer.
    #[allow(clippy::too_many_arguments)]
    async fn begin<B: Bucket, U: Upstreams, I: IndexCalls>(
        &mut self,
        index: &I,
        which: &[usize],
        present: Vec<StorePathHash>,
        adopt: Vec<Entry>,
        upstream_hits: Vec<UpstreamHit>,
        sources: &Sources<'_, B, U>,
        now: u64,
    ) -> Result<(), PassError> {
        if which.is_empty() {
            return Ok(());
        }
        let request = BeginBatch {
            entries: which.iter().map(|&i| self.items[i].entry.clone()).collect(),
            present,
            upstreams: sources.upstream_caches.to_vec(),
            adopt,
            upstream_hits,
            now,
        };
        let answer = index.call::<BeginBatchOp>(&request).await?;
        if answer.begun.len() != which.len() {
            return Err(PassError::Index(IndexError::Unavailable(
                "begin/batch answered for another number of paths".into(),
            )));
        }
        for (&i, begun) in which.iter().zip(answer.begun) {
            self.fates[i] = match begun {
                Begun::Reserved { reservation } => Fate::Reserved(reservation),
                Begun::Missing { missing } => Fate::Missing(missing),
                Begun::Deleting { .. } => Fate::Failed(being_deleted(&self.items[i].narinfo)),
            };
        }
        Ok(())
    }
}

/// Indices `0..inside.len()` ordered so each comes after the ones it references
/// (`inside[i]`); those in a cycle (which no signed store path can form) come last.
pub fn references_first(inside: &[Vec<usize>]) -> Vec<usize> {
    let n = inside.len();
    let mut waiting_on: Vec<usize> = inside.iter().map(Vec::len).collect();
    let mut referrers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, refs) in inside.iter().enumerate() {
        for &j in refs {
            referrers[j].push(i);
        }
    }
    let mut ready: Vec<usize> = (0..n).rev().filter(|&i| waiting_on[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &k in referrers[i].iter().rev() {
            waiting_on[k] -= 1;
            if waiting_on[k] == 0 {
                ready.push(k);
            }
        }
    }
    let placed: BTreeSet<usize> = order.iter().copied().collect();
    order.extend((0..n).filter(|i| !placed.contains(i)));
    order
}

#[cfg(test)]
#[test]
fn references_come_first_and_cycles_last() {
    // 0 -> 2 -> 1; 3 and 4 reference each other.
    let inside = vec![vec![2], vec![], vec![1], vec![4], vec![3]];
    let order = references_first(&inside);
    assert_eq!(order, vec![1, 2, 0, 3, 4]);
    let position = |i: usize| order.iter().position(|&j| j == i).unwrap();
    assert!(position(1) < position(2) && position(2) < position(0));
}

fn dependency(narinfo: &NarInfo, reference: StorePathHash) -> PassError {
    PassError::Dependency(format!(
        "{} references {reference}, which this batch did not publish (see its answer)",
        narinfo.store_path
    ))
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
    let looked = look_for(sources, &missing).await?;
    if !looked.absent.is_empty() {
        return Err(refused(&looked.absent, narinfo));
    }
    let (left, known) = (looked.left, looked.known());
    begin.adopt = looked.adopt;
    begin.upstream_hits = looked.hits;
    // Records what was found even when the answer is still "missing".
    match index.call::<BeginOp>(&begin).await? {
        Begun::Reserved { reservation } => Ok(reservation),
        Begun::Missing { .. } if left > 0 => Err(still_looking(known, missing.len())),
        // Deleted between the two questions.
        Begun::Missing { missing } => Err(refused(&missing, narinfo)),
        Begun::Deleting { .. } => Err(being_deleted(narinfo)),
    }
}

/// What a publish found of the references the index lacked.
struct Looked {
    /// Narinfos in the bucket the index did not know.
    adopt: Vec<Entry>,
    /// References an upstream cache serves.
    hits: Vec<UpstreamHit>,
    /// Found nowhere: whoever needs them is refused.
    absent: Vec<StorePathHash>,
    /// Left for a later request (more than one request may look up).
    left: usize,
}

impl Looked {
    fn known(&self) -> usize {
        self.adopt.len() + self.hits.len()
    }
}

/// Looks for `missing` references in the bucket (the first few) and then upstream (the
/// rest: there "absent" is not final, they may still be in the bucket, so a later
/// request looks them up after this one remembered what it found).
async fn look_for<B: Bucket, U: Upstreams>(
    sources: &Sources<'_, B, U>,
    missing: &[StorePathHash],
) -> Result<Looked, PassError> {
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
    Ok(Looked {
        adopt,
        hits: found.hits,
        absent,
        left: found.unchecked.len() + unsure.len() + deferred,
    })
}

fn still_looking(known: usize, missing: usize) -> PassError {
    PassError::Busy(format!(
        "{known} of {missing} references the index lacked found so far; send the narinfo again to look for the rest"
    ))
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
