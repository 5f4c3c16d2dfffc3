//! Retention at the edge (docs/gc.md): `/_nixflare/gc` drives steps of a pass (the
//! core's `passes::gc`, with R2 deletes and edge-cache purges from this request); pins;
//! and the roots a push names again. The index decides what goes.

use worker::{Request, Response};

use super::auth::Guarded;
use super::body::json_body;
use super::bucket::R2;
use super::error::EdgeError;
use super::index_client::IndexClient;
use super::purge::EdgeCache;
use super::response;
use crate::core::api::{self, GcPhase, GcProgress, GcRequest, PinRequest, ReconcileStep};
use crate::core::gc::DAY_MS;
use crate::core::index::ops::{PinsOp, ReconcileStepOp, RemovePinOp, RootsOp, SetPinOp};
use crate::core::index::passes::gc::{steps, Laps, Mode};
use crate::core::index::passes::{Budget, IndexCalls, PassError};
use crate::core::index::{At, PinSet, Refresh, RemovePin, SetPin, R2_OPS_PER_INVOCATION};
use crate::core::pin_name::PinName;

/// Largest pin or GC request body.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// The longest a pin may be kept for, in days (a century).
const MAX_KEEP_DAYS: u64 = 36_500;

/// Reconcile steps for a pass that waits for a lap: each a request to the object,
/// which takes the step with its own budget.
struct ObjectSteps<'a> {
    index: &'a IndexClient,
    now: u64,
}

impl Laps for ObjectSteps<'_> {
    async fn reconcile_step(
        &self,
        budget: &mut Budget,
    ) -> Result<Option<ReconcileStep>, PassError> {
        if !budget.take(1) {
            return Ok(None);
        }
        let step = self
            .index
            .call_object::<ReconcileStepOp>(&At { now: self.now })
            .await?;
        Ok(Some(step))
    }
}

async fn drive(cache: &Guarded, mode: Mode, edge: &EdgeCache) -> Result<GcProgress, EdgeError> {
    let index = cache.index()?;
    let now = cache.now_ms();
    let laps = ObjectSteps { index: &index, now };
    // The token's revocation check took one subrequest already.
    let mut budget = Budget::new(R2_OPS_PER_INVOCATION - 1);
    steps(
        &R2(&cache.bucket),
        &index,
        edge,
        &laps,
        cache.config.retention(),
        now,
        mode,
        &mut budget,
    )
    .await?
    .ok_or_else(|| EdgeError::Busy("no GC step fit in this request; send it again".into()))
}

/// GET `_nixflare/gc`: a dry run.
pub async fn plan(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let mode = Mode {
        dry_run: true,
        start_up_to: 0,
    };
    let progress = drive(cache, mode, &EdgeCache::none()).await?;
    response::json(200, api::render(&progress), head_only)
}

/// POST `_nixflare/gc`: steps of a pass; the client calls again until it is done.
pub async fn run(
    mut req: Request,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    let request: GcRequest =
        json_body(&mut req, MAX_BODY_BYTES, "{\"startUpTo\": pass number}").await?;
    let mode = Mode {
        dry_run: false,
        start_up_to: request.start_up_to,
    };
    let progress = drive(cache, mode, edge).await?;
    if progress.run.phase == GcPhase::Done && progress.run.removed_paths > 0 {
        worker::console_log!(
            "gc pass {} by {}: {} paths removed",
            progress.run.run,
            cache.credential.subject,
            progress.run.removed_paths
        );
    }
    response::json(200, api::render(&progress), false)
}

/// GET `_nixflare/pins`. Who set each pin is shown only to tokens that may write.
pub async fn list_pins(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let mut pins = cache.index()?.call::<PinsOp>(&api::True).await?;
    if !cache.may_see_who() {
        for pin in &mut pins.pins {
            pin.subject = None;
        }
    }
    response::json(200, api::render(&pins), head_only)
}

/// PUT `_nixflare/pins/<name>`: pins a path the cache holds, or moves the pin to it.
pub async fn set_pin(
    mut req: Request,
    name: &PinName,
    cache: &Guarded,
) -> Result<Response, EdgeError> {
    let request: PinRequest = json_body(
        &mut req,
        MAX_BODY_BYTES,
        "{\"storePath\": \"<hash>-<name>\", \"keepDays\": days or null}",
    )
    .await?;
    let now = cache.now_ms();
    let expires_at = match request.keep_days {
        None => None,
        Some(days @ 1..=MAX_KEEP_DAYS) => Some(now.saturating_add(days * DAY_MS)),
        Some(_) => {
            return Err(EdgeError::BadRequest(format!(
                "keepDays must be 1 to {MAX_KEEP_DAYS}"
            )))
        }
    };
    let answer = cache
        .index()?
        .call::<SetPinOp>(&SetPin {
            name: name.clone(),
            store_path: request.store_path.clone(),
            expires_at,
            subject: cache.credential.subject.clone(),
            now,
        })
        .await?;
    match answer {
        PinSet::Pinned { pin } => {
            worker::console_log!(
                "pin {name} -> {} by {}",
                pin.store_path,
                cache.credential.subject
            );
            response::json(200, api::render(&pin), false)
        }
        PinSet::NotCached { .. } => Err(EdgeError::Absent(format!(
            "{} is not in the cache: push it first",
            request.store_path
        ))),
    }
}

/// DELETE `_nixflare/pins/<name>`.
pub async fn remove_pin(name: &PinName, cache: &Guarded) -> Result<Response, EdgeError> {
    let removed = cache
        .index()?
        .call::<RemovePinOp>(&RemovePin { name: name.clone() })
        .await?;
    if !removed.removed {
        return Err(EdgeError::Absent(format!("no pin named {name}")));
    }
    worker::console_log!("pin {name} removed by {}", cache.credential.subject);
    Ok(Response::empty()?.with_status(204))
}

/// POST `_nixflare/roots`: the paths a push names are pushed again now.
pub async fn refresh_roots(mut req: Request, cache: &Guarded) -> Result<Response, EdgeError> {
    let hashes = super::queries::hash_batch(&mut req).await?;
    let answer = cache
        .index()?
        .call::<RootsOp>(&Refresh {
            hashes,
            now: cache.now_ms(),
        })
        .await?;
    response::json(200, api::render(&answer), false)
}
