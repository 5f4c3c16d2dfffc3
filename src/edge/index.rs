//! The index's Durable Object: one instance (`crate::core::index::OBJECT_NAME`) with
//! SQLite storage. Everything it decides is the core's (`crate::core::index`): this
//! binds its SQL interface to the object's `SqlStorage`, serves the operations, and runs
//! the upkeep (reconcile laps, GC passes) on the cron's `tick` and on its own alarm.
//! It also keeps the landing page's summary in R2 (`api::SUMMARY_KEY`): rewritten on
//! every cron tick, and by the alarm a few seconds after a publish, a delete or a pin
//! changed what the cache holds, so page views read one object and never the index.

use std::cell::Cell;

use serde::de::DeserializeOwned;
use worker::{
    console_error, console_log, durable_object, DurableObject, Env, Request, Response, SqlStorage,
    SqlStorageValue, State,
};

use super::bucket::R2;
use crate::core::api;
use crate::core::config::CacheConfig;
use crate::core::index::ops::{self, Op, ReconcileStepOp, TickOp};
use crate::core::index::passes::upkeep::{upkeep, Caller, ObjectLaps};
use crate::core::index::passes::{gc::Laps, Budget, PassError};
use crate::core::index::sql::{Sql, SqlError, Value};
use crate::core::index::{IndexError, SummaryRequest, Ticked, R2_OPS_PER_INVOCATION};

/// How soon the alarm comes back while a lap or a pass is under way: one invocation
/// (45 R2 operations) a second, about 160,000 narinfos an hour on a first lap.
const ALARM_DELAY_MS: i64 = 1000;
/// Set (in the object's key-value storage, which outlives the instance) while upkeep
/// wants its alarm: the alarm that also rewrites the summary runs upkeep only then.
const UPKEEP_ALARM_KEY: &str = "upkeep-alarm";
/// How soon after a change the summary is rewritten: changes in between share one write.
const SUMMARY_DELAY_MS: i64 = 5000;
/// The least time between two summary writes after changes: each write reads the
/// index's tables (about two rows per path, billed per row), so the spacing grows by a
/// second per thousand paths past this (docs/metrics.md).
const SUMMARY_SPACING_MS: u64 = 60_000;

/// Operations after which the summary is stale.
fn changes_summary(op: &str) -> bool {
    use crate::core::index::ops::{
        AdoptOp, CommitOp, FinishBatchOp, ForgetDoneOp, GcStepOp, OrphansOp, RemovePinOp, SetPinOp,
        SweptOp,
    };
    [
        <CommitOp as Op>::NAME,
        <FinishBatchOp as Op>::NAME,
        <ForgetDoneOp as Op>::NAME,
        <AdoptOp as Op>::NAME,
        <SetPinOp as Op>::NAME,
        <RemovePinOp as Op>::NAME,
        <ReconcileStepOp as Op>::NAME,
        <GcStepOp as Op>::NAME,
        <SweptOp as Op>::NAME,
        <OrphansOp as Op>::NAME,
    ]
    .contains(&op)
}

/// The object's `SqlStorage` as the core's SQL interface.
struct ObjectSql(SqlStorage);

fn binding(value: &Value) -> SqlStorageValue {
    match value {
        Value::Null => SqlStorageValue::Null,
        Value::Integer(n) => SqlStorageValue::Integer(*n),
        Value::Text(text) => SqlStorageValue::String(text.clone()),
    }
}

impl Sql for ObjectSql {
    fn exec(&self, query: &str, params: &[Value]) -> Result<(), SqlError> {
        self.0
            .exec(query, params.iter().map(binding).collect::<Vec<_>>())
            .map(drop)
            .map_err(|err| SqlError(err.to_string()))
    }

    fn rows<T: DeserializeOwned>(&self, query: &str, params: &[Value]) -> Result<Vec<T>, SqlError> {
        self.0
            .exec(query, params.iter().map(binding).collect::<Vec<_>>())
            .and_then(|cursor| cursor.to_array())
            .map_err(|err| SqlError(err.to_string()))
    }

    fn size(&self) -> u64 {
        self.0.database_size() as u64
    }
}

#[durable_object(alarm)]
pub struct Index {
    index: crate::core::index::Index<ObjectSql>,
    state: State,
    env: Env,
    /// Something changed since the summary was last written (lost with the instance:
    /// a fresh one writes at its first alarm anyway).
    summary_stale: Cell<bool>,
    summary_written_at: Cell<Option<u64>>,
    /// Paths the last summary counted: sets the spacing of the next write.
    summary_paths: Cell<u64>,
}

impl DurableObject for Index {
    fn new(state: State, env: Env) -> Self {
        // Migrations run here; a failure is kept and every request answers with it.
        let index = crate::core::index::Index::open(ObjectSql(state.storage().sql()));
        Self {
            index,
            state,
            env,
            summary_stale: Cell::new(false),
            summary_written_at: Cell::new(None),
            summary_paths: Cell::new(0),
        }
    }

    async fn fetch(&self, mut req: Request) -> worker::Result<Response> {
        let path = req.path();
        let op = path.trim_start_matches('/');
        let body = req.bytes().await?;
        let answer = match ops::serve(&self.index, op, &body) {
            Some(answer) => answer,
            None => match op {
                <ReconcileStepOp as Op>::NAME => self.reconcile_step(&body).await,
                <TickOp as Op>::NAME => self.tick(&body).await,
                _ => Err(IndexError::UnknownOperation(op.to_owned())),
            },
        };
        // Counted unless the name is unknown (the counters' labels stay a fixed set).
        if !matches!(answer, Err(IndexError::UnknownOperation(_))) {
            if let Err(err) = self.index.count_operation(op, answer.is_ok()) {
                console_error!("index: counting {op}: {err}");
            }
        }
        if answer.is_ok() && changes_summary(op) {
            self.summary_stale.set(true);
            // An alarm already set (a pass under way, an earlier change) will do.
            let storage = self.state.storage();
            if matches!(storage.get_alarm().await, Ok(None)) {
                if let Err(err) = storage.set_alarm(SUMMARY_DELAY_MS).await {
                    console_error!("index: setting the summary alarm failed: {err}");
                }
            }
        }
        match answer {
            Ok(text) => Response::ok(text),
            Err(err) => Response::error(err.to_string(), 500),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        // One alarm serves two purposes; upkeep goes on only when upkeep asked for it (a
        // summary's alarm must not carry a pass forward that nothing else would).
        let storage = self.state.storage();
        let upkeep_wanted = matches!(storage.get::<bool>(UPKEEP_ALARM_KEY).await, Ok(Some(true)));
        let mut done = false;
        if upkeep_wanted {
            let upkeep = self.upkeep(Caller::Alarm, None).await;
            // The last alarm of a pass: what it removed shows at once.
            done = matches!(&upkeep, Ok(ticked) if !ticked.more);
            match upkeep {
                Ok(ticked) => console_log!(
                    "index alarm: {} reconcile steps, gc {:?}, more: {}",
                    ticked.reconcile_steps,
                    ticked.gc.map(|run| run.phase),
                    ticked.more
                ),
                Err(err) => console_error!("index alarm: {err}"),
            }
        }
        self.write_summary(done).await;
        Response::ok("")
    }
}

impl Index {
    fn config(&self) -> Result<CacheConfig, IndexError> {
        CacheConfig::from_vars(|name| self.env.var(name).ok().map(|v| v.to_string()))
            .map_err(|err| IndexError::Unavailable(format!("misconfigured: {err}")))
    }

    fn bucket(&self) -> Result<worker::Bucket, IndexError> {
        self.env
            .bucket(super::BUCKET_BINDING)
            .map_err(|err| IndexError::Unavailable(format!("no bucket binding: {err}")))
    }

    fn request<O: Op>(body: &[u8]) -> Result<O::Request, IndexError> {
        ops::read_request::<O>(body)
    }

    /// `reconcile/step`: one step of the lap, taken here (the worker's request costs
    /// it one subrequest; the step's R2 operations are this invocation's).
    async fn reconcile_step(&self, body: &[u8]) -> Result<String, IndexError> {
        let at = Self::request::<ReconcileStepOp>(body)?;
        let config = self.config()?;
        let bucket = self.bucket()?;
        let laps = ObjectLaps {
            bucket: &R2(&bucket),
            index: &self.index,
            store_dir: &config.store_dir,
            now: at.now,
        };
        let step = laps
            .reconcile_step(&mut Budget::new(R2_OPS_PER_INVOCATION))
            .await
            .map_err(pass_error)?
            .ok_or_else(|| IndexError::Unavailable("no budget for a reconcile step".into()))?;
        Ok(api::render(&step))
    }

    /// `tick`: the cron's share, the rest for the alarm.
    async fn tick(&self, body: &[u8]) -> Result<String, IndexError> {
        let at = Self::request::<TickOp>(body)?;
        let ticked = self.upkeep(Caller::Cron, Some(at.now)).await?;
        self.write_summary(true).await;
        Ok(api::render(&ticked))
    }

    /// Rewrites the summary in R2 if `always` (a cron tick, the end of a pass), or if
    /// something changed and the last write is far enough back (else the alarm comes
    /// back when it is). Failures are logged: the page shows the previous summary.
    async fn write_summary(&self, always: bool) {
        let result = async {
            let config = self.config()?;
            let now = config.clock_ms(worker::Date::now().as_millis());
            if !always {
                if !self.summary_stale.get() {
                    return Ok(());
                }
                let spacing = SUMMARY_SPACING_MS.max(self.summary_paths.get());
                let next = self.summary_written_at.get().map_or(0, |at| at + spacing);
                if now < next {
                    let storage = self.state.storage();
                    if matches!(storage.get_alarm().await, Ok(None)) {
                        let wait = i64::try_from(next - now).unwrap_or(i64::MAX);
                        storage.set_alarm(wait).await.map_err(|err| {
                            IndexError::Unavailable(format!("setting the summary alarm: {err}"))
                        })?;
                    }
                    return Ok(());
                }
            }
            self.summary_stale.set(false);
            let summary = self.index.summary(SummaryRequest {
                now,
                retain_days: config.retain_days,
                budget_bytes: config.max_cache_bytes,
            })?;
            self.bucket()?
                .put(api::SUMMARY_KEY, api::render(&summary).into_bytes())
                .execute()
                .await
                .map_err(|err| IndexError::Unavailable(format!("writing the summary: {err}")))?;
            self.summary_written_at.set(Some(now));
            self.summary_paths.set(summary.paths);
            Ok::<(), IndexError>(())
        };
        if let Err(err) = result.await {
            self.summary_stale.set(true);
            console_error!("index: {err}");
        }
    }

    async fn upkeep(&self, caller: Caller, now: Option<u64>) -> Result<Ticked, IndexError> {
        let config = self.config()?;
        let bucket = self.bucket()?;
        let now = now.unwrap_or_else(|| config.clock_ms(worker::Date::now().as_millis()));
        let mut budget = Budget::new(R2_OPS_PER_INVOCATION);
        let ticked = upkeep(
            &R2(&bucket),
            &self.index,
            (config.retention(), &config.store_dir),
            now,
            caller,
            &mut budget,
        )
        .await
        .map_err(pass_error)?;
        let storage = self.state.storage();
        if ticked.more {
            // Marked first: the alarm goes on with upkeep only when this asked for it.
            let marked = storage.put(UPKEEP_ALARM_KEY, true).await;
            // An offset from now.
            if let Err(err) = marked.and(storage.set_alarm(ALARM_DELAY_MS).await) {
                console_error!("index: setting the alarm failed: {err}");
            }
        } else if let Err(err) = storage.delete(UPKEEP_ALARM_KEY).await {
            // Cleared only once nothing is under way, never before a step: an instance
            // that dies mid-step leaves it set for the next alarm.
            console_error!("index: clearing the upkeep mark failed: {err}");
        }
        Ok(ticked)
    }
}

fn pass_error(err: PassError) -> IndexError {
    match err {
        PassError::Index(err) => err,
        other => IndexError::Unavailable(other.to_string()),
    }
}
