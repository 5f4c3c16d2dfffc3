//! What the object does on its own: the cron's hourly `tick` and the alarm that goes
//! on where one invocation's budget ended. Reconcile laps (the cron starts one if none
//! is under way; the alarm goes on with it) and GC passes (the cron starts one; the
//! alarm finishes it), with every step inside the object, where a request or an alarm
//! gets 30 s of CPU on every plan and index calls are not subrequests.

use super::gc::{self, Laps, Mode};
use super::{reconcile, Bucket, Budget, Local, NoPurge, PassError};
use crate::core::api::{GcPhase, ReconcileStep};
use crate::core::gc::Retention;
use crate::core::index::ops::{GcStepOp, IndexOp};
use crate::core::index::sql::Sql;
use crate::core::index::{GcStep, Index, Ticked};

/// Who runs the upkeep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The cron: starts a lap (or goes on with the one under way) and a GC pass.
    Cron,
    /// The object's alarm: goes on with what is under way, starts nothing.
    Alarm,
}

/// The largest number a JSON number carries exactly: "start a new pass".
const ALWAYS: u64 = (1 << 53) - 1;

/// Reconcile steps taken by the object itself.
pub struct ObjectLaps<'a, B, S: Sql> {
    pub bucket: &'a B,
    pub index: &'a Index<S>,
    pub store_dir: &'a str,
    pub now: u64,
}

impl<B: Bucket, S: Sql> Laps for ObjectLaps<'_, B, S> {
    async fn reconcile_step(
        &self,
        budget: &mut Budget,
    ) -> Result<Option<ReconcileStep>, PassError> {
        reconcile::step(
            self.bucket,
            &Local(self.index),
            self.store_dir,
            self.now,
            budget,
        )
        .await
    }
}

fn pass_under_way<S: Sql>(index: &Index<S>) -> Result<bool, PassError> {
    Ok(index
        .gc_run()?
        .is_some_and(|run| !matches!(run.phase, GcPhase::Idle | GcPhase::Done)))
}

pub async fn upkeep<B: Bucket, S: Sql>(
    bucket: &B,
    index: &Index<S>,
    (retention, store_dir): (Retention, &str),
    now: u64,
    caller: Caller,
    budget: &mut Budget,
) -> Result<Ticked, PassError> {
    let laps = ObjectLaps {
        bucket,
        index,
        store_dir,
        now,
    };
    if caller == Caller::Cron && !pass_under_way(index)? {
        // The hour's pass starts now, whatever this invocation's budget leaves for its
        // steps: the alarm goes on with the pass under way. (Its first step seeds or
        // lists nothing yet. Removals still pending may come back with it: ignored here,
        // they stay pending and are handed out again by the steps below.)
        GcStepOp::apply(
            index,
            GcStep {
                dry_run: false,
                start_up_to: ALWAYS,
                retention,
                now,
            },
        )?;
    }
    let lap = match caller {
        Caller::Cron => true,
        Caller::Alarm => !index.reconcile_state()?.after.is_empty(),
    };
    let mut reconcile_steps = 0;
    if lap {
        while let Some(step) = laps.reconcile_step(budget).await? {
            reconcile_steps += 1;
            if step.pass_complete {
                break;
            }
        }
    }
    let mode = Mode {
        dry_run: false,
        start_up_to: 0,
    };
    gc::steps(
        bucket,
        &Local(index),
        &NoPurge,
        &laps,
        retention,
        now,
        mode,
        budget,
    )
    .await?;
    let lap_under_way = !index.reconcile_state()?.after.is_empty();
    Ok(Ticked {
        reconcile_steps,
        gc: index.gc_run()?,
        more: lap_under_way || pass_under_way(index)?,
    })
}
