//! Retention at the edge (docs/gc.md): the steps of a GC pass, driven by the cron and by
//! `/_nixflare/gc`; pins; and the roots a push names again. The index decides what goes
//! (`index/gc.rs`); this file deletes it from R2 in the order it says and purges the
//! edge cache.

use worker::{Bucket, Request, Response};

use super::auth::Guarded;
use super::body::json_body;
use super::error::EdgeError;
use super::index_client::IndexClient;
use super::purge::EdgeCache;
use super::response;
use crate::core::api::{self, GcPhase, GcPlan, GcProgress, GcRequest, GcRun, PinRequest};
use crate::core::config::CacheConfig;
use crate::core::gc::{
    orphan_kind, side_file_target, OrphanKind, PinName, MAX_SIDE_FILE_READS, ORPHAN_PAGE_KEYS,
    STEPS_PER_REQUEST,
};
use crate::core::index::{GcStep, Listed, OrphanPage, PinSet, Refresh, RemovePin, SetPin, Swept};
use crate::core::route::Route;

const DAY_MS: u64 = 86_400_000;
/// Largest pin or GC request body.
const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Largest side file the orphan step reads to learn what it belongs to.
const MAX_SIDE_FILE_BYTES: u64 = 1024 * 1024;
/// The longest a pin may be kept for, in days (a century).
const MAX_KEEP_DAYS: u64 = 36_500;

/// Steps of the pass under way (starting one as `mode` allows) until it needs no more
/// work now, or this invocation's share of subrequests is spent.
pub async fn steps(
    bucket: &Bucket,
    index: &IndexClient,
    config: &CacheConfig,
    now: u64,
    (dry_run, start_up_to): (bool, u64),
    edge: &EdgeCache,
) -> Result<GcProgress, EdgeError> {
    let step = GcStep {
        dry_run,
        purges: edge.purges(),
        start_up_to,
        retain_ms: config.retain_days.map(|days| days.saturating_mul(DAY_MS)),
        budget_bytes: config.max_cache_bytes,
        grace_ms: config.gc_grace_hours.saturating_mul(3_600_000),
        now,
    };
    let mut progress = None;
    let mut cost = Cost::default();
    for _ in 0..STEPS_PER_REQUEST {
        let work = index.gc_step(&step).await?;
        cost.index += 1;
        if dry_run {
            // Never acts: only marks, then reports.
            if work.plan.is_some() || matches!(work.run.phase, GcPhase::Idle | GcPhase::Done) {
                return Ok(cost.of(work.run, work.plan));
            }
        } else if !work.sweep.is_empty() {
            // Top of each closure first: a narinfo goes only once nothing left refers
            // to it.
            for layer in &work.sweep {
                let keys: Vec<String> = layer
                    .iter()
                    .map(|hash| Route::Narinfo(*hash).to_string())
                    .collect();
                bucket.delete_multiple(keys.clone()).await?;
                cost.r2 += 1;
                edge.purge(&keys).await;
            }
            let hashes = work.sweep.concat();
            index.gc_swept(&Swept { hashes }).await?;
            cost.index += 1;
        } else if let Some(after) = &work.list_after {
            let run = orphan_step(bucket, index, after, now, edge, &mut cost).await?;
            if run.phase == GcPhase::Done {
                // A finished pass is reported; the next request starts another.
                return Ok(cost.of(run, None));
            }
        } else if work.plan.is_some() || matches!(work.run.phase, GcPhase::Idle | GcPhase::Done) {
            return Ok(cost.of(work.run, work.plan));
        }
        progress = Some(work.run);
    }
    progress
        .map(|run| cost.of(run, None))
        .ok_or_else(|| EdgeError::Index("no GC step was taken".into()))
}

/// What a request spent, reported with its progress.
#[derive(Default)]
struct Cost {
    index: u64,
    r2: u64,
}

impl Cost {
    fn of(&self, run: GcRun, plan: Option<GcPlan>) -> GcProgress {
        GcProgress {
            run,
            plan,
            index_requests: self.index,
            r2_operations: self.r2,
        }
    }
}

/// One page of the bucket: the index says which keys are orphans past their grace.
async fn orphan_step(
    bucket: &Bucket,
    index: &IndexClient,
    after: &str,
    now: u64,
    edge: &EdgeCache,
    cost: &mut Cost,
) -> Result<GcRun, EdgeError> {
    let mut list = bucket.list().limit(ORPHAN_PAGE_KEYS);
    if !after.is_empty() {
        list = list.start_after(after.to_owned());
    }
    let page = list.execute().await?;
    cost.r2 += 1;
    let mut objects = Vec::new();
    let mut reads = 0;
    for object in page.objects() {
        let key = object.key();
        let kind = orphan_kind(&key);
        let mut points_to = None;
        let readable = matches!(kind, OrphanKind::DebugInfo | OrphanKind::Realisation)
            && object.size() <= MAX_SIDE_FILE_BYTES
            && reads < MAX_SIDE_FILE_READS;
        if readable {
            reads += 1;
            cost.r2 += 1;
            if let Some(stored) = bucket.get(&key).execute().await? {
                if let Some(body) = stored.body() {
                    points_to = side_file_target(&kind, &body.bytes().await?);
                }
            }
        }
        objects.push(Listed {
            key,
            uploaded: object.uploaded().as_millis(),
            points_to,
        });
    }
    let through = match (page.truncated(), objects.last()) {
        (false, _) => None,
        (true, Some(last)) => Some(last.key.clone()),
        (true, None) => {
            return Err(EdgeError::Index(
                "a truncated bucket listing held no keys".into(),
            ))
        }
    };
    let orphans = index
        .gc_orphans(&OrphanPage {
            after: after.to_owned(),
            through,
            objects,
            now,
        })
        .await?;
    cost.index += 1;
    if !orphans.delete.is_empty() {
        bucket.delete_multiple(orphans.delete.clone()).await?;
        cost.r2 += 1;
        edge.purge(&orphans.delete).await;
    }
    Ok(orphans.run)
}

/// GET `_nixflare/gc`: a dry run.
pub async fn plan(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let progress = steps(
        &cache.bucket,
        &cache.index()?,
        &cache.config,
        cache.now_ms(),
        (true, 0),
        &EdgeCache::none(),
    )
    .await?;
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
    let progress = steps(
        &cache.bucket,
        &cache.index()?,
        &cache.config,
        cache.now_ms(),
        (false, request.start_up_to),
        edge,
    )
    .await?;
    response::json(200, api::render(&progress), false)
}

/// The cron's share: the pass under way, or a new one.
pub async fn cron(
    bucket: &Bucket,
    index: &IndexClient,
    config: &CacheConfig,
    now: u64,
) -> Result<GcProgress, EdgeError> {
    // The largest number a JSON number carries exactly: always start a new pass.
    let always = (1 << 53) - 1;
    steps(
        bucket,
        index,
        config,
        now,
        (false, always),
        &EdgeCache::none(),
    )
    .await
}

/// GET `_nixflare/pins`.
pub async fn list_pins(cache: &Guarded, head_only: bool) -> Result<Response, EdgeError> {
    let pins = cache.index()?.pins().await?;
    response::json(200, pins, head_only)
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
        .set_pin(&SetPin {
            name: name.clone(),
            store_path: request.store_path.clone(),
            expires_at,
            subject: cache.token.subject.clone(),
            now,
        })
        .await?;
    match answer {
        PinSet::Pinned { pin } => {
            worker::console_log!(
                "pin {name} -> {} by {}",
                pin.store_path,
                cache.token.subject
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
        .remove_pin(&RemovePin { name: name.clone() })
        .await?;
    if !removed.removed {
        return Err(EdgeError::Absent(format!("no pin named {name}")));
    }
    worker::console_log!("pin {name} removed by {}", cache.token.subject);
    Ok(Response::empty()?.with_status(204))
}

/// POST `_nixflare/roots`: the paths a push names are pushed again now.
pub async fn refresh_roots(mut req: Request, cache: &Guarded) -> Result<Response, EdgeError> {
    let hashes = super::queries::hash_batch(&mut req).await?;
    let answer = cache
        .index()?
        .refresh(&Refresh {
            hashes,
            now: cache.now_ms(),
        })
        .await?;
    response::json(200, api::render(&answer), false)
}
