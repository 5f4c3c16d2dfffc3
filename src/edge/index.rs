//! The index's Durable Object: one instance (`crate::core::index::OBJECT_NAME`) with
//! SQLite storage. Everything it decides is the core's (`crate::core::index`): this
//! binds its SQL interface to the object's `SqlStorage`, serves the operations, and runs
//! the upkeep (reconcile laps, GC passes) on the cron's `tick` and on its own alarm.

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
use crate::core::index::{IndexError, Ticked, R2_OPS_PER_INVOCATION};

/// How soon the alarm comes back while a lap or a pass is under way: one invocation
/// (45 R2 operations) a second, about 160,000 narinfos an hour on a first lap.
const ALARM_DELAY_MS: i64 = 1000;

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
}

impl DurableObject for Index {
    fn new(state: State, env: Env) -> Self {
        // Migrations run here; a failure is kept and every request answers with it.
        let index = crate::core::index::Index::open(ObjectSql(state.storage().sql()));
        Self { index, state, env }
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
        match answer {
            Ok(text) => Response::ok(text),
            Err(err) => Response::error(err.to_string(), 500),
        }
    }

    async fn alarm(&self) -> worker::Result<Response> {
        match self.upkeep(Caller::Alarm, None).await {
            Ok(ticked) => console_log!(
                "index alarm: {} reconcile steps, gc {:?}, more: {}",
                ticked.reconcile_steps,
                ticked.gc.map(|run| run.phase),
                ticked.more
            ),
            Err(err) => console_error!("index alarm: {err}"),
        }
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
        Ok(api::render(&ticked))
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
        if ticked.more {
            // An offset from now.
            if let Err(err) = self.state.storage().set_alarm(ALARM_DELAY_MS).await {
                console_error!("index: setting the alarm failed: {err}");
            }
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
