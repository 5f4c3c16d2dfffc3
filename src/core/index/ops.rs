//! Every operation of the index, defined once: its name on the wire, its request, its
//! answer and its handler. The worker calls `IndexCalls::call::<Op>` (a request to the
//! object, or a direct call inside it); the object answers with [`serve`]; the tests
//! call the handlers directly. Nothing else names an operation.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::sql::Sql;
use super::{
    Adopt, Advance, At, Begin, BeginBatch, Begun, BegunBatch, Cursor, Finish, FinishBatch, Forget,
    Forgot, Gauges, GcStep, GcWork, Index, IndexError, OrphanPage, Orphans, OwnLog, PageChecked,
    PinRemoved, PinSet, Query, ReconcilePage, Refresh, RemovePin, SetPin, SummaryRequest, Swept,
    Ticked,
};
use crate::core::api::{
    self, PathQueryAnswer, Pins, ReconcileStep, RootsRefreshed, Stats, Summary,
};

/// One operation: `NAME` is its path on the object (`https://index/<NAME>`).
pub trait Op {
    const NAME: &'static str;
    type Request: Serialize + DeserializeOwned + Clone;
    type Answer: Serialize + DeserializeOwned;
}

/// An operation on the index alone: one atomic handler of [`Index`].
pub trait IndexOp: Op {
    fn apply<S: Sql>(index: &Index<S>, request: Self::Request) -> Result<Self::Answer, IndexError>;
}

/// Operations the object runs itself because they read and delete in the bucket
/// (several awaits, each index step still atomic): `crate::edge::index` serves them.
pub enum ReconcileStepOp {}
impl Op for ReconcileStepOp {
    const NAME: &'static str = "reconcile/step";
    type Request = At;
    type Answer = ReconcileStep;
}

/// The cron's hourly nudge: the object starts a reconcile lap if one is due, takes
/// steps of it and of a GC pass within one invocation's budget, and leaves the rest to
/// its alarm.
pub enum TickOp {}
impl Op for TickOp {
    const NAME: &'static str = "tick";
    type Request = At;
    type Answer = Ticked;
}

macro_rules! operations {
    ($($(#[$doc:meta])* $op:ident $name:literal ($request:ty) -> $answer:ty = $handler:ident;)*) => {
        $(
            $(#[$doc])*
            pub enum $op {}
            impl Op for $op {
                const NAME: &'static str = $name;
                type Request = $request;
                type Answer = $answer;
            }
            impl IndexOp for $op {
                fn apply<S: Sql>(index: &Index<S>, request: $request) -> Result<$answer, IndexError> {
                    index.$handler(request)
                }
            }
        )*

        /// Every operation's name (the tests check they are distinct).
        pub const NAMES: &[&str] = &[$($name,)* <ReconcileStepOp as Op>::NAME, <TickOp as Op>::NAME];

        /// The object's side: reads the request of operation `name` with `read`, runs
        /// it, and renders the answer. `None`: no such operation (the object may
        /// serve it itself: those that read the bucket).
        pub fn serve<S: Sql>(
            index: &Index<S>,
            name: &str,
            body: &[u8],
        ) -> Option<Result<String, IndexError>> {
            Some(match name {
                $($name => run::<$op, S>(index, body),)*
                _ => return None,
            })
        }
    };
}

fn run<O: IndexOp, S: Sql>(index: &Index<S>, body: &[u8]) -> Result<String, IndexError> {
    let request = read_request::<O>(body)?;
    O::apply(index, request).map(|answer| api::render(&answer))
}

/// A request of `Op` as the object receives it.
pub fn read_request<O: Op>(body: &[u8]) -> Result<O::Request, IndexError> {
    crate::core::json_serde::from_slice(body).map_err(|err| IndexError::BadRequest {
        op: O::NAME.to_owned(),
        reason: err.to_string(),
    })
}

/// An answer of `Op` as the worker receives it.
pub fn read_answer<O: Op>(body: &[u8]) -> Result<O::Answer, IndexError> {
    crate::core::json_serde::from_slice(body).map_err(|err| {
        IndexError::Unavailable(format!("{} answered something unreadable: {err}", O::NAME))
    })
}

operations! {
    /// Check a narinfo's references and reserve its path.
    BeginOp "begin" (Begin) -> Begun = begin;
    CommitOp "commit" (Finish) -> api::True = commit;
    AbortOp "abort" (Finish) -> api::True = abort;
    /// A batch of narinfos: all reserved in one call...
    BeginBatchOp "begin/batch" (BeginBatch) -> BegunBatch = begin_batch;
    /// ...and all committed or aborted in another.
    FinishBatchOp "finish/batch" (FinishBatch) -> api::True = finish_batch;
    /// A DELETE of a narinfo asks first...
    ForgetOp "forget" (Forget) -> Forgot = forget;
    /// ...and confirms once R2 deleted it.
    ForgetDoneOp "forget/done" (Forget) -> api::True = forget_done;
    QueryOp "query" (Query) -> PathQueryAnswer = query;
    StatsOp "stats" (api::True) -> Stats = stats;
    /// What the landing page shows (written to R2 by the object, read from there).
    SummaryOp "summary" (SummaryRequest) -> Summary = summary;
    /// What `_nixflare/metrics` reports.
    GaugesOp "gauges" (api::True) -> Gauges = gauges;
    CursorOp "reconcile/cursor" (api::True) -> Cursor = cursor;
    PageOp "reconcile/page" (ReconcilePage) -> PageChecked = reconcile_page;
    AdvanceOp "reconcile/advance" (Advance) -> Cursor = advance;
    AdoptOp "adopt" (Adopt) -> api::True = adopt_all;
    RootsOp "roots" (Refresh) -> RootsRefreshed = refresh;
    PinsOp "pins" (api::True) -> Pins = pins;
    SetPinOp "pins/set" (SetPin) -> PinSet = set_pin;
    RemovePinOp "pins/remove" (RemovePin) -> PinRemoved = remove_pin;
    GcStepOp "gc/step" (GcStep) -> GcWork = gc_step;
    SweptOp "gc/swept" (Swept) -> api::True = gc_swept;
    OrphansOp "gc/orphans" (OrphanPage) -> Orphans = gc_orphans;
    OwnLogOp "logs/own" (OwnLog) -> bool = own_log;
}
