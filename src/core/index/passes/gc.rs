//! Steps of a GC pass (docs/gc.md): the index decides what goes (`gc/step`,
//! `gc/orphans`), this deletes it from the bucket in the order it says, purges the edge
//! cache where it can, and reports back (`gc/swept`). A pass that waits for a reconcile
//! lap gets reconcile steps from here ([`Laps`]).

use super::{Bucket, Budget, EdgePurge, IndexCalls, PassError};
use crate::core::api::{GcPhase, GcPlan, GcProgress, GcRun, ReconcileStep};
use crate::core::gc::{
    orphan_kind, side_file_target, OrphanKind, Retention, MAX_SIDE_FILE_READS, ORPHAN_PAGE_KEYS,
    STEPS_PER_REQUEST,
};
use crate::core::index::ops::{GcStepOp, OrphansOp, SweptOp};
use crate::core::index::{GcStep, Listed, OrphanPage, Swept};
use crate::core::route::Route;

/// Largest side file the orphan step reads to learn what it belongs to.
pub const MAX_SIDE_FILE_BYTES: u64 = 1024 * 1024;

/// Takes reconcile steps for a pass that waits for a lap: in the object, the step
/// itself; in the worker, a request to the object.
#[allow(async_fn_in_trait)]
pub trait Laps {
    async fn reconcile_step(&self, budget: &mut Budget)
        -> Result<Option<ReconcileStep>, PassError>;
}

/// How a caller drives a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// Mark and report; never delete.
    pub dry_run: bool,
    /// Once the pass under way is done, start another only if its number would be at
    /// most this.
    pub start_up_to: u64,
}

/// Steps of the pass under way (starting one as `mode` allows) until it needs no more
/// work now, or the budget is spent.
#[allow(clippy::too_many_arguments)]
pub async fn steps<B: Bucket, I: IndexCalls, P: EdgePurge, L: Laps>(
    bucket: &B,
    index: &I,
    purge: &P,
    laps: &L,
    retention: Retention,
    now: u64,
    mode: Mode,
    budget: &mut Budget,
) -> Result<Option<GcProgress>, PassError> {
    let step = GcStep {
        dry_run: mode.dry_run,
        start_up_to: mode.start_up_to,
        retention,
        now,
    };
    let start = *budget;
    let mut index_calls = 0u64;
    let report = |run: GcRun, plan: Option<GcPlan>, budget: &Budget, index_calls: u64| {
        let spent = u64::from(budget.spent - start.spent);
        let index_cost = index_calls * u64::from(index.cost());
        Some(GcProgress {
            run,
            plan,
            index_requests: index_calls,
            r2_operations: spent.saturating_sub(index_cost),
        })
    };
    let mut last = None;
    for _ in 0..STEPS_PER_REQUEST {
        // A step, and what it may ask for: a layer to delete and its confirmation. The
        // budget for those is there before the step is asked for, so a layer handed out
        // is deleted by this request (unless it dies), under the settings that doomed it.
        let room = if mode.dry_run { 0 } else { 1 + index.cost() };
        if !budget.has(index.cost() + room) || !budget.take(index.cost()) {
            break;
        }
        let work = index.call::<GcStepOp>(&step).await?;
        index_calls += 1;
        let run = work.run.clone();
        if mode.dry_run {
            // Never acts: only marks, then reports.
            if work.plan.is_some() || matches!(run.phase, GcPhase::Idle | GcPhase::Done) {
                return Ok(report(run, work.plan, budget, index_calls));
            }
        } else if !work.sweep.is_empty() {
            if !budget.take(1 + index.cost()) {
                // Handed out but not deleted: the next request gets the same layer.
                last = Some(run);
                break;
            }
            let keys: Vec<String> = work
                .sweep
                .iter()
                .map(|hash| Route::Narinfo(*hash).to_string())
                .collect();
            bucket.delete(&keys).await?;
            let purged = purge.purge(&keys).await;
            index
                .call::<SweptOp>(&Swept {
                    hashes: work.sweep.clone(),
                    now,
                    purged,
                })
                .await?;
            index_calls += 1;
        } else if let Some(after) = &work.list_after {
            match orphan_step(bucket, index, purge, after, now, budget).await? {
                Some(run) if run.phase == GcPhase::Done => {
                    index_calls += 1;
                    // A finished pass is reported; the next request starts another.
                    return Ok(report(run, None, budget, index_calls));
                }
                Some(_) => index_calls += 1,
                None => {
                    last = Some(run);
                    break;
                }
            }
        } else if work.reconcile {
            // The sweep waits for a lap that began after the pass did.
            if laps.reconcile_step(budget).await?.is_none() {
                last = Some(run);
                break;
            }
            // From the worker, a step is one request to the object (whose R2 operations
            // are its own); inside the object, its R2 operations came out of `budget`.
            index_calls += u64::from(index.cost());
        } else if work.plan.is_some() || matches!(run.phase, GcPhase::Idle | GcPhase::Done) {
            return Ok(report(run, work.plan, budget, index_calls));
        }
        last = Some(run);
    }
    Ok(last.and_then(|run| report(run, None, budget, index_calls)))
}

/// One page of the bucket: the index says which keys are orphans past their grace.
/// `None`: the budget does not allow a page.
async fn orphan_step<B: Bucket, I: IndexCalls, P: EdgePurge>(
    bucket: &B,
    index: &I,
    purge: &P,
    after: &str,
    now: u64,
    budget: &mut Budget,
) -> Result<Option<GcRun>, PassError> {
    // A listing, a decision and a delete.
    if !budget.take(2 + index.cost()) {
        return Ok(None);
    }
    let page = bucket.list(after, ORPHAN_PAGE_KEYS, false).await?;
    let mut objects = Vec::new();
    let mut reads = 0;
    let mut cut = false;
    for object in &page.objects {
        let kind = orphan_kind(&object.key);
        let mut points_to = None;
        let readable = matches!(kind, OrphanKind::DebugInfo | OrphanKind::Realisation)
            && object.size <= MAX_SIDE_FILE_BYTES;
        if readable {
            if reads >= MAX_SIDE_FILE_READS || !budget.take(1) {
                // The page ends before it: the next step reads it.
                cut = !objects.is_empty();
                if cut {
                    break;
                }
            } else {
                reads += 1;
                if let Some(stored) = bucket.get(&object.key, MAX_SIDE_FILE_BYTES).await? {
                    points_to = stored
                        .bytes
                        .and_then(|bytes| side_file_target(&kind, &bytes));
                }
            }
        }
        objects.push(Listed {
            key: object.key.clone(),
            uploaded: object.uploaded,
            points_to,
        });
    }
    let through = match (cut || page.truncated, objects.last()) {
        (false, _) => None,
        (true, Some(last)) => Some(last.key.clone()),
        (true, None) => {
            return Err(PassError::Storage(super::StorageError(
                "a truncated bucket listing held no keys".into(),
            )))
        }
    };
    let orphans = index
        .call::<OrphansOp>(&OrphanPage {
            after: after.to_owned(),
            through,
            objects,
            now,
        })
        .await?;
    if !orphans.delete.is_empty() {
        bucket.delete(&orphans.delete).await?;
        purge.purge(&orphans.delete).await;
    }
    Ok(Some(orphans.run))
}
