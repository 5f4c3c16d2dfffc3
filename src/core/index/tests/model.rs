//! The model-based test of everything that decides what is deleted.
//!
//! A simulated deployment, in memory and deterministic: a bucket (a map of keys to
//! bytes and upload times), the real index on SQLite, and the real procedures
//! (`passes`) the worker, the cron and the object's alarm run. Proptest throws random
//! sequences of operations at it: publishes through the worker, writes and deletes
//! behind its back (`nix copy --to s3://`, `rclone`), DELETEs, pins, root refreshes,
//! reconcile steps, GC requests (dry and real, with and without edge purge), cron ticks
//! and alarms, settings changes, clock jumps and an index wipe (a new Durable Object).
//! Any operation may be killed at any await (the request dies there: what it did so
//! far stays, nothing more), before or after that await's effect.
//!
//! After every operation the bucket is held against a plain model of what must hold:
//!
//! - **closure**: every narinfo in the bucket has its NAR and the narinfos of its
//!   references, unless the missing object was absent when the narinfo was written,
//!   or removed by the operator (DELETE of a NAR) or behind the worker's back, or the
//!   narinfo was written behind the worker's back after the reconcile lap that the
//!   deleting step relied on began;
//! - **retention**: the GC deletes no narinfo reachable from a root (pushed within
//!   `RETAIN_DAYS`, as the model saw the pushes) or a pin, and none at all when no rule
//!   is configured; a budget may drop roots, never pins;
//! - **knowledge**: the GC deletes no object that the last complete lap (whose claim
//!   is itself checked: every narinfo in the bucket when it began is known) could not
//!   have seen unused, i.e. stored less than the grace period before it began;
//! - **grace**: a NAR goes only a grace period after the last narinfo naming it left
//!   the bucket;
//! - **dry runs** delete nothing;
//! - **liveness**, at the end: with the clock moved on and enough cron ticks, alarms and
//!   GC requests, everything no rule keeps is gone (no retention: every unused NAR; with
//!   retention: every narinfo no pin reaches).
//!
//! `PROPTEST_CASES` sets the number of cases (`make soak` runs many more); a failure
//! prints the shrunk sequence of operations, and the seed in
//! `proptest-regressions/` replays it.

// The simulation is single-threaded and nothing borrows the index mutably while a
// request runs (only `Wipe`, between requests).
#![allow(clippy::await_holding_refcell_ref)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use proptest::prelude::*;

use super::sqlite::Sqlite;
use crate::core::api;
use crate::core::gc::{Retention, DAY_MS, HOUR_MS};
use crate::core::index::ops::{IndexOp, RemovePinOp, RootsOp, SetPinOp};
use crate::core::index::passes::gc::{steps, Laps, Mode};
use crate::core::index::passes::publish::{
    delete_narinfo, publish, publish_batch, BatchItem, Sources,
};
use crate::core::index::passes::upkeep::{upkeep, Caller, ObjectLaps};
use crate::core::index::passes::{
    Bucket, Budget, EdgePurge, Fetched, Found, IndexCalls, Listing, Object, PassError,
    StorageError, Upstreams,
};
use crate::core::index::sql::Sql;
use crate::core::index::{
    Entry, Index, IndexError, Refresh, RemovePin, SetPin, R2_OPS_PER_INVOCATION,
};
use crate::core::nix::hash::Sha256;
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;
use crate::core::pin_name::PinName;
use crate::core::route::METADATA_MAX_AGE_SECS;

const STORE_DIR: &str = "/nix/store";
const PATHS: usize = 7;
const GRACE_MS: u64 = 25 * HOUR_MS;
const START: u64 = 1_700_000_000_000;

/// Where the worker's publishes look for references: the bucket; no upstream.
fn sources<'a>(bucket: &'a SimBucket<'a>) -> Sources<'a, SimBucket<'a>, NoUpstreams> {
    Sources {
        bucket,
        upstreams: &NoUpstreams,
        upstream_caches: &[],
        store_dir: STORE_DIR,
    }
}

/// The worker's write of narinfo `i` by the one rule for stored keys (create if
/// absent, the same bytes again is fine): whether they were there already.
async fn put_narinfo(sim: &Sim, model: &Model, i: usize, bytes: &[u8]) -> Result<bool, PassError> {
    let key = narinfo_key(i);
    let gate = sim.gate();
    if gate == Some(false) {
        return killed().await;
    }
    let stored = sim.objects.borrow().get(&key).map(|s| s.bytes.clone());
    let result = match stored {
        None => {
            sim.assert_may_publish(model, i);
            sim.put(&key, bytes.to_vec());
            Ok(false)
        }
        Some(old) if old == bytes => Ok(true),
        Some(_) => Err(PassError::Conflict("a different narinfo".into())),
    };
    if gate.is_some() {
        return killed().await;
    }
    result
}

// ---------------------------------------------------------------------------------
// The universe of a case: paths, their references (a DAG) and NARs (sometimes shared).

#[derive(Debug, Clone)]
pub(super) struct Universe {
    /// `refs[i]`: paths `i` references (all below `i`).
    refs: Vec<Vec<usize>>,
    /// `nar[i]`: the NAR file path `i` uses.
    nar: Vec<usize>,
    /// Most keys one listing returns (R2 may return fewer than asked): small pages make
    /// laps and orphan listings span many steps, and so interleave with everything.
    page: usize,
}

fn hash(i: usize) -> StorePathHash {
    let mut bytes = [0u8; 20];
    bytes[0] = 7 * i as u8 + 1;
    bytes[19] = i as u8;
    StorePathHash::from_bytes(bytes)
}

fn narinfo_key(i: usize) -> String {
    format!("{}.narinfo", hash(i))
}

fn nar_key(n: usize) -> String {
    format!("nar/{}.nar.zst", Sha256([n as u8 + 1; 32]).nix32())
}

fn nar_size(n: usize) -> u64 {
    1000 * (n as u64 + 1)
}

impl Universe {
    fn narinfo(&self, i: usize) -> Vec<u8> {
        let n = self.nar[i];
        let nar = Sha256([n as u8 + 1; 32]).nix32();
        let refs: Vec<String> = self.refs[i]
            .iter()
            .map(|&j| format!("{}-p{j}", hash(j)))
            .collect();
        format!(
            "StorePath: {STORE_DIR}/{}-p{i}\nURL: nar/{nar}.nar.zst\nCompression: zstd\n\
             FileHash: sha256:{nar}\nFileSize: {size}\nNarHash: sha256:{nar}\nNarSize: {size}\n\
             References: {}\n",
            hash(i),
            refs.join(" "),
            size = nar_size(n),
        )
        .into_bytes()
    }

    /// What narinfo `i` needs in the bucket: its NAR, its references' narinfos.
    fn needs(&self, i: usize) -> Vec<String> {
        let mut keys = vec![nar_key(self.nar[i])];
        keys.extend(self.refs[i].iter().map(|&j| narinfo_key(j)));
        keys
    }

    /// The closure of `roots` over the paths in `present`.
    fn closure(
        &self,
        roots: impl IntoIterator<Item = usize>,
        present: &BTreeSet<usize>,
    ) -> BTreeSet<usize> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<usize> = roots.into_iter().filter(|r| present.contains(r)).collect();
        while let Some(i) = todo.pop() {
            if seen.insert(i) {
                todo.extend(self.refs[i].iter().filter(|j| present.contains(j)));
            }
        }
        seen
    }
}

fn path_of_narinfo(key: &str) -> Option<usize> {
    (0..PATHS).find(|&i| narinfo_key(i) == key)
}

// ---------------------------------------------------------------------------------
// The simulated deployment.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Actor {
    Worker,
    Gc,
    Operator,
    Behind,
}

#[derive(Debug, Clone)]
struct Stored {
    bytes: Vec<u8>,
    uploaded: u64,
}

#[derive(Debug, Clone)]
struct Deletion {
    key: String,
    at: u64,
    by: Actor,
    /// What the index said at that moment: when the last complete lap began.
    lap: Option<u64>,
    uploaded: u64,
    /// The request purged the edge cache of what it deleted.
    purged: bool,
    /// When the GC pass under way then began (a narinfo the sweep deletes relies on a
    /// lap begun after it).
    pass_started: Option<u64>,
}

struct Sim {
    page: usize,
    objects: RefCell<BTreeMap<String, Stored>>,
    index: RefCell<Index<Sqlite>>,
    now: Cell<u64>,
    awaits: Cell<u32>,
    kill: Cell<Option<(u32, bool)>>,
    actor: Cell<Actor>,
    purges: Cell<bool>,
    deletions: RefCell<Vec<Deletion>>,
    /// Calls the worker made to the object.
    index_calls: Cell<u32>,
}

/// Where a request meets the world: `None` goes on; `Some(effect)`: the request dies
/// here, after this await's effect (`true`) or before it.
impl Sim {
    fn new(page: usize) -> Self {
        Sim {
            page,
            objects: RefCell::new(BTreeMap::new()),
            index: RefCell::new(Index::open(Sqlite::memory())),
            now: Cell::new(START),
            awaits: Cell::new(0),
            kill: Cell::new(None),
            actor: Cell::new(Actor::Worker),
            purges: Cell::new(false),
            deletions: RefCell::new(Vec::new()),
            index_calls: Cell::new(0),
        }
    }

    fn gate(&self) -> Option<bool> {
        let n = self.awaits.get();
        self.awaits.set(n + 1);
        match self.kill.get() {
            Some((at, effect)) if at == n => Some(effect),
            _ => None,
        }
    }

    fn lap(&self) -> Option<u64> {
        self.index.borrow().complete_lap_started_at().ok().flatten()
    }

    fn remove(&self, key: &str, by: Actor) {
        if let Some(old) = self.objects.borrow_mut().remove(key) {
            self.deletions.borrow_mut().push(Deletion {
                key: key.to_owned(),
                at: self.now.get(),
                by,
                lap: self.lap(),
                uploaded: old.uploaded,
                purged: self.purges.get(),
                pass_started: self
                    .index
                    .borrow()
                    .load_gc()
                    .ok()
                    .map(|state| state.run.started_at),
            });
        }
    }

    fn put(&self, key: &str, bytes: Vec<u8>) {
        self.objects.borrow_mut().insert(
            key.to_owned(),
            Stored {
                bytes,
                uploaded: self.now.get(),
            },
        );
    }

    fn has(&self, key: &str) -> bool {
        self.objects.borrow().contains_key(key)
    }

    /// The worker is about to write narinfo `i`: all it needs must be in the bucket,
    /// unless the operator or someone behind the worker's back deleted it (the index
    /// cannot know).
    fn assert_may_publish(&self, model: &Model, i: usize) {
        for need in model.universe.needs(i) {
            if self.has(&need) {
                continue;
            }
            let last = (self.deletions.borrow().iter().rev().find(|d| d.key == need))
                .or(model.deleted.get(&need))
                .map(|d| d.by);
            assert!(
                matches!(last, Some(Actor::Operator | Actor::Behind)),
                "the worker wrote {} while {need} was not in the bucket (last deleted by {last:?})",
                narinfo_key(i)
            );
        }
    }
}

/// Runs a request to its end, or to the await where it is killed (the future is then
/// dropped: nothing after that await happens).
fn run<F: Future>(sim: &Sim, kill: Option<(u32, bool)>, future: F) -> Option<F::Output> {
    sim.awaits.set(0);
    sim.kill.set(kill);
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    let result = match future.as_mut().poll(&mut cx) {
        Poll::Ready(value) => Some(value),
        Poll::Pending => {
            explored(|e| e.killed += 1);
            None
        }
    };
    sim.kill.set(None);
    result
}

async fn killed<T>() -> T {
    std::future::pending().await
}

struct SimBucket<'a>(&'a Sim);

impl Bucket for SimBucket<'_> {
    async fn list(
        &self,
        after: &str,
        limit: u32,
        top_level: bool,
    ) -> Result<Listing, StorageError> {
        if self.0.gate().is_some() {
            return killed().await;
        }
        let objects = self.0.objects.borrow();
        let mut listed: Vec<Object> = objects
            .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            .filter(|(key, _)| !top_level || !key.contains('/'))
            .map(|(key, stored)| Object {
                key: key.clone(),
                size: stored.bytes.len() as u64,
                uploaded: stored.uploaded,
            })
            .take(self.0.page.min(limit as usize) + 1)
            .collect();
        let limit = self.0.page.min(limit as usize);
        let truncated = listed.len() > limit;
        listed.truncate(limit);
        Ok(Listing {
            objects: listed,
            truncated,
        })
    }

    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Fetched>, StorageError> {
        if self.0.gate().is_some() {
            return killed().await;
        }
        Ok(self.0.objects.borrow().get(key).map(|stored| Fetched {
            bytes: (stored.bytes.len() as u64 <= max_bytes).then(|| stored.bytes.clone()),
            uploaded: stored.uploaded,
        }))
    }

    async fn delete(&self, keys: &[String]) -> Result<(), StorageError> {
        let gate = self.0.gate();
        if gate != Some(false) {
            for key in keys {
                self.0.remove(key, self.0.actor.get());
            }
        }
        if gate.is_some() {
            return killed().await;
        }
        Ok(())
    }
}

/// The worker's calls to the object: each may die before it reaches the object, or
/// after the object acted but before the answer arrived.
struct SimIndex<'a>(&'a Sim);

impl IndexCalls for SimIndex<'_> {
    async fn call<O: IndexOp>(&self, request: &O::Request) -> Result<O::Answer, IndexError> {
        self.0.index_calls.set(self.0.index_calls.get() + 1);
        let gate = self.0.gate();
        if gate == Some(false) {
            return killed().await;
        }
        let answer = O::apply(&self.0.index.borrow(), request.clone());
        if gate.is_some() {
            return killed().await;
        }
        answer
    }

    fn cost(&self) -> u32 {
        1
    }
}

/// The worker asking the object for a reconcile step.
struct SimObjectSteps<'a>(&'a Sim);

impl Laps for SimObjectSteps<'_> {
    async fn reconcile_step(
        &self,
        budget: &mut Budget,
    ) -> Result<Option<api::ReconcileStep>, PassError> {
        if !budget.take(1) {
            return Ok(None);
        }
        if self.0.gate() == Some(false) {
            return killed().await;
        }
        let index = self.0.index.borrow();
        let laps = ObjectLaps {
            bucket: &SimBucket(self.0),
            index: &index,
            store_dir: STORE_DIR,
            now: self.0.now.get(),
        };
        match laps
            .reconcile_step(&mut Budget::new(R2_OPS_PER_INVOCATION))
            .await?
        {
            Some(step) => Ok(Some(step)),
            None => Err(PassError::Busy("no budget for a step".into())),
        }
    }
}

struct NoUpstreams;

impl Upstreams for NoUpstreams {
    async fn lookup(&self, _caches: &[String], hashes: &[StorePathHash]) -> Vec<Found> {
        vec![Found::Absent; hashes.len()]
    }
}

/// An edge cache that purges (`nixflare gc` on Cloudflare): no edge holds, unless a
/// purge fails.
struct Purging(bool);

impl EdgePurge for Purging {
    fn purges(&self) -> bool {
        true
    }
    async fn purge(&self, _keys: &[String]) -> bool {
        self.0
    }
}

// ---------------------------------------------------------------------------------
// Operations.

type Kill = Option<(u32, bool)>;

#[derive(Debug, Clone)]
pub(super) enum Op {
    /// `PUT` of a path's NAR, then of its narinfo, through the worker.
    Push {
        path: usize,
        kill: Kill,
    },
    /// `POST /_nixflare/narinfos`: the NARs of `paths` (a bit set) `PUT` first (a path
    /// in `no_nar` skips its own), then their narinfos in one batch.
    PushBatch {
        paths: u8,
        no_nar: u8,
        kill: Kill,
    },
    /// `nixflare push`: the closure, references first, then the roots refreshed.
    PushClosure {
        path: usize,
    },
    /// Written straight into the bucket; `nar`: the NAR too (if absent); `garbage`: a
    /// narinfo this cache cannot parse that names the NAR.
    Behind {
        path: usize,
        nar: bool,
        garbage: bool,
    },
    BehindDelete {
        path: usize,
        nar: bool,
    },
    Delete {
        path: usize,
        kill: Kill,
    },
    DeleteNar {
        path: usize,
    },
    Pin {
        name: u8,
        path: usize,
        kill: Kill,
    },
    Unpin {
        name: u8,
        kill: Kill,
    },
    Refresh {
        path: usize,
        kill: Kill,
    },
    Reconcile {
        kill: Kill,
    },
    /// A `nixflare gc` request, with as many subrequests as `budget` (a request that
    /// ends part-way leaves the pass under way for whatever comes next).
    Gc {
        dry: bool,
        /// The request can purge the edge cache (`nixflare gc` on Cloudflare); `Some`
        /// of whether each purge works.
        purges: Option<bool>,
        budget: u32,
        kill: Kill,
    },
    Cron {
        kill: Kill,
    },
    Alarm {
        kill: Kill,
    },
    Settings {
        retain_days: Option<u64>,
        budget: Option<u64>,
    },
    Clock {
        hours: u64,
    },
    Wipe,
}

fn kill() -> impl Strategy<Value = Kill> {
    prop_oneof![
        4 => Just(None),
        // Most requests meet the world at their first few awaits.
        1 => (prop_oneof![3 => 0u32..6, 1 => 0u32..14], any::<bool>()).prop_map(Some),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let path = 0..PATHS;
    prop_oneof![
        6 => (path.clone(), kill()).prop_map(|(path, kill)| Op::Push { path, kill }),
        3 => path.clone().prop_map(|path| Op::PushClosure { path }),
        4 => (any::<u8>(), prop::bool::weighted(0.15).prop_flat_map(|some| {
                if some { any::<u8>().boxed() } else { Just(0u8).boxed() }
            }), kill())
            .prop_map(|(paths, no_nar, kill)| Op::PushBatch { paths, no_nar, kill }),
        3 => (path.clone(), any::<bool>(), prop::bool::weighted(0.15))
            .prop_map(|(path, nar, garbage)| Op::Behind { path, nar, garbage }),
        1 => (path.clone(), any::<bool>()).prop_map(|(path, nar)| Op::BehindDelete { path, nar }),
        2 => (path.clone(), kill()).prop_map(|(path, kill)| Op::Delete { path, kill }),
        1 => path.clone().prop_map(|path| Op::DeleteNar { path }),
        2 => (0u8..2, path.clone(), kill()).prop_map(|(name, path, kill)| Op::Pin { name, path, kill }),
        1 => (0u8..2, kill()).prop_map(|(name, kill)| Op::Unpin { name, kill }),
        2 => (path, kill()).prop_map(|(path, kill)| Op::Refresh { path, kill }),
        3 => kill().prop_map(|kill| Op::Reconcile { kill }),
        5 => (
            prop::bool::weighted(0.3),
            prop::option::of(prop::bool::weighted(0.8)),
            prop_oneof![Just(44u32), 2u32..12],
            kill()
        )
            .prop_map(|(dry, purges, budget, kill)| Op::Gc { dry, purges, budget, kill }),
        3 => kill().prop_map(|kill| Op::Cron { kill }),
        2 => kill().prop_map(|kill| Op::Alarm { kill }),
        1 => (prop::option::weighted(0.7, 1u64..4), prop::option::weighted(0.3, 1000u64..12_000))
            .prop_map(|(retain_days, budget)| Op::Settings { retain_days, budget }),
        4 => prop_oneof![Just(1u64), Just(12), Just(26), Just(49), Just(24 * 5)]
            .prop_map(|hours| Op::Clock { hours }),
        1 => Just(Op::Wipe),
    ]
}

fn universe() -> impl Strategy<Value = Universe> {
    (
        prop::collection::vec(prop::collection::vec(any::<bool>(), PATHS), PATHS),
        prop::collection::vec(prop::option::weighted(0.2, 0..PATHS), PATHS),
        prop_oneof![Just(1000usize), 1usize..5],
    )
        .prop_map(|(edges, shared, page)| Universe {
            page,
            refs: (0..PATHS)
                .map(|i| {
                    (0..i)
                        .filter(|&j| edges[i][j] && (i + j) % 2 == 0)
                        .collect()
                })
                .collect(),
            nar: (0..PATHS)
                .map(|i| match shared[i] {
                    Some(j) if j < i => j,
                    _ => i,
                })
                .collect(),
        })
}

// ---------------------------------------------------------------------------------
// The model.

#[derive(Debug, Clone)]
struct Written {
    at: u64,
    by: Actor,
    /// What the narinfo needed that was not in the bucket when it was written.
    absent: BTreeSet<String>,
}

struct Model {
    universe: Universe,
    retention: Retention,
    /// Last successful publish or refresh of each path, as the client saw it.
    pushed: BTreeMap<usize, u64>,
    pins: BTreeMap<u8, usize>,
    /// Pins a killed request may or may not have set (or failed to remove).
    maybe_pins: BTreeSet<(u8, usize)>,
    /// The current incarnation of each narinfo key.
    written: BTreeMap<String, Written>,
    /// Last deletion of each key.
    deleted: BTreeMap<String, Deletion>,
    /// For each NAR: when the last narinfo naming it left the bucket, and whether that
    /// narinfo was one the index could have known (not written and removed behind its
    /// back).
    referrer_gone: BTreeMap<String, (u64, bool)>,
    /// The complete lap the index claimed after the previous operation.
    lap: Option<u64>,
    /// Narinfos deleted by a request that could not purge the edge cache: clients may
    /// still get them from there until the time given.
    edge: BTreeMap<String, (Written, u64)>,
    /// Paths the GC has decided to remove but not yet deleted (a request died between):
    /// the settings in force when it decided. Its deletion is judged by those.
    decided: BTreeMap<usize, Retention>,
}

impl Model {
    fn new(universe: Universe) -> Self {
        Model {
            universe,
            retention: Retention {
                retain_ms: None,
                budget_bytes: None,
                grace_ms: GRACE_MS,
            },
            pushed: BTreeMap::new(),
            pins: BTreeMap::new(),
            maybe_pins: BTreeSet::new(),
            written: BTreeMap::new(),
            deleted: BTreeMap::new(),
            referrer_gone: BTreeMap::new(),
            lap: None,
            edge: BTreeMap::new(),
            decided: BTreeMap::new(),
        }
    }
}

pub(super) struct Case {
    sim: Sim,
    model: Model,
}

fn pin_name(name: u8) -> PinName {
    format!("pin-{name}").parse().expect("a pin name")
}

fn parse(bytes: &[u8]) -> Option<NarInfo> {
    NarInfo::parse(bytes, STORE_DIR).ok()
}

impl Case {
    fn new(universe: Universe) -> Self {
        Case {
            sim: Sim::new(universe.page),
            model: Model::new(universe),
        }
    }

    fn now(&self) -> u64 {
        self.sim.now.get()
    }

    fn present_paths(&self) -> BTreeSet<usize> {
        (0..PATHS)
            .filter(|&i| {
                self.sim
                    .objects
                    .borrow()
                    .get(&narinfo_key(i))
                    .is_some_and(|s| parse(&s.bytes).is_some())
            })
            .collect()
    }

    /// Records a narinfo write (or an object write) for the closure check.
    fn note_written(&mut self, key: &str, by: Actor) {
        let absent = match path_of_narinfo(key) {
            Some(i) => self
                .model
                .universe
                .needs(i)
                .into_iter()
                .filter(|k| !self.sim.has(k))
                .collect(),
            None => BTreeSet::new(),
        };
        self.model.written.insert(
            key.to_owned(),
            Written {
                at: self.now(),
                by,
                absent,
            },
        );
    }

    // -- the worker's requests ------------------------------------------------------

    fn push(&mut self, i: usize, kill: Kill) {
        let nar = nar_key(self.model.universe.nar[i]);
        // The NAR's own request.
        let sim = &self.sim;
        let nar_put = run(sim, kill, async {
            if sim.gate() == Some(false) {
                return killed().await;
            }
            if !sim.has(&nar) {
                sim.put(&nar, vec![0; nar_size(self.model.universe.nar[i]) as usize]);
            }
        });
        if nar_put.is_none() {
            return;
        }
        let key = narinfo_key(i);
        let existed = sim.has(&key);
        let bytes = self.model.universe.narinfo(i);
        let info = parse(&bytes).expect("the model's narinfo parses");
        let now = self.now();
        let entry = Entry::of(&info, now, None);
        let bucket = SimBucket(sim);
        let sources = sources(&bucket);
        let outcome = run(sim, kill, async {
            // The NAR must be there (one HEAD), then the closure rule and the one rule
            // for stored keys (create if absent, same bytes again is fine).
            if sim.gate() == Some(false) {
                return killed().await;
            }
            if !sim.has(&nar) {
                return Err(PassError::Conflict("upload the NAR first".into()));
            }
            let put = || async {
                put_narinfo(sim, &self.model, i, &bytes)
                    .await
                    .map(|u| ((), u))
            };
            publish(&sources, &SimIndex(sim), &info, entry, now, put).await
        });
        if !existed && self.sim.has(&key) {
            self.note_written(&key, Actor::Worker);
        }
        if let Some(Ok(())) = outcome {
            self.model.pushed.insert(i, now);
        }
    }

    /// The batch's answers (the path published, or why not), unless it was killed.
    fn push_batch(
        &mut self,
        paths: u8,
        no_nar: u8,
        kill: Kill,
    ) -> Option<Vec<Result<usize, PassError>>> {
        let chosen: Vec<usize> = (0..PATHS).filter(|&i| paths & (1 << i) != 0).collect();
        let sim = &self.sim;
        let model = &self.model;
        let universe = &model.universe;
        // The NARs' own requests, one by one.
        for &i in &chosen {
            let nar = nar_key(universe.nar[i]);
            if no_nar & (1 << i) != 0 || sim.has(&nar) {
                continue;
            }
            let gate = sim.gate();
            if gate == Some(false) {
                return None;
            }
            sim.put(&nar, vec![0; nar_size(universe.nar[i]) as usize]);
            if gate.is_some() {
                return None;
            }
        }
        let keys: Vec<String> = chosen.iter().map(|&i| narinfo_key(i)).collect();
        let existed: Vec<bool> = keys.iter().map(|key| sim.has(key)).collect();
        let now = self.now();
        let bucket = SimBucket(sim);
        let sources = sources(&bucket);
        let outcome = run(sim, kill, async {
            // Each NAR must be there with its size (one HEAD each, concurrently): the
            // rest go on to the batch.
            if sim.gate() == Some(false) {
                return killed().await;
            }
            let mut items = Vec::new();
            let mut refused = Vec::new();
            let mut bytes_of = Vec::new();
            for &i in &chosen {
                let bytes = universe.narinfo(i);
                let info = parse(&bytes).expect("the model's narinfo parses");
                if sim.has(&nar_key(universe.nar[i])) {
                    let entry = Entry::of(&info, now, None);
                    items.push(BatchItem {
                        narinfo: info,
                        entry,
                    });
                    bytes_of.push((i, bytes));
                } else {
                    refused.push(hash(i));
                }
            }
            let put_wave = |wave: Vec<usize>| {
                let bytes_of = &bytes_of;
                async move {
                    // The worker writes a wave concurrently: here last first.
                    let mut outcomes = Vec::new();
                    for &k in wave.iter().rev() {
                        let (i, bytes) = &bytes_of[k];
                        let unchanged = put_narinfo(sim, model, *i, bytes).await;
                        outcomes.push(unchanged.map(|u| (*i, u)));
                    }
                    outcomes.reverse();
                    outcomes
                }
            };
            publish_batch(&sources, &SimIndex(sim), &items, &refused, now, put_wave).await
        });
        for (key, existed) in keys.iter().zip(existed) {
            if !existed && self.sim.has(key) {
                self.note_written(key, Actor::Worker);
            }
        }
        for i in outcome.iter().flatten().flatten() {
            explored(|e| e.batch_published += 1);
            self.model.pushed.insert(*i, now);
        }
        outcome
    }

    fn push_closure(&mut self, i: usize) {
        let present = (0..PATHS).collect();
        let closure = self.model.universe.closure([i], &present);
        for &j in &closure {
            self.push(j, None);
        }
        self.refresh(i, None);
    }

    fn refresh(&mut self, i: usize, kill: Kill) {
        let present = (0..PATHS).collect();
        let closure: Vec<usize> = self
            .model
            .universe
            .closure([i], &present)
            .into_iter()
            .collect();
        let now = self.now();
        let request = Refresh {
            hashes: closure.iter().map(|&j| hash(j)).collect(),
            now,
        };
        let sim = &self.sim;
        if let Some(Ok(answer)) = run(sim, kill, SimIndex(sim).call::<RootsOp>(&request)) {
            for j in closure {
                if !answer.missing.contains(&hash(j)) {
                    self.model.pushed.insert(j, now);
                }
            }
        }
    }

    fn delete(&mut self, i: usize, kill: Kill) {
        self.sim.actor.set(Actor::Operator);
        let sim = &self.sim;
        let now = self.now();
        let outcome = run(
            sim,
            kill,
            delete_narinfo(
                &SimBucket(sim),
                &SimIndex(sim),
                &Purging(true),
                hash(i),
                now,
            ),
        );
        if outcome.is_none() {
            // Perhaps forgotten, perhaps not: what the client pushed before no longer
            // counts on the model's side (the index may adopt the narinfo afresh, with
            // its upload time).
            self.model.pushed.remove(&i);
        }
    }

    fn pin(&mut self, name: u8, i: usize, kill: Kill) {
        let request = SetPin {
            name: pin_name(name),
            store_path: format!("{}-p{i}", hash(i)).parse().expect("a base name"),
            expires_at: None,
            subject: "model".into(),
            now: self.now(),
        };
        let sim = &self.sim;
        match run(sim, kill, SimIndex(sim).call::<SetPinOp>(&request)) {
            Some(Ok(crate::core::index::PinSet::Pinned { .. })) => {
                self.model.pins.insert(name, i);
                self.model.maybe_pins.retain(|&(n, _)| n != name);
            }
            // Moved or not: the model cannot tell. It counts on neither path, and does
            // not expect either to go.
            None => {
                if let Some(old) = self.model.pins.remove(&name) {
                    self.model.maybe_pins.insert((name, old));
                }
                self.model.maybe_pins.insert((name, i));
            }
            _ => {}
        }
    }

    fn unpin(&mut self, name: u8, kill: Kill) {
        let sim = &self.sim;
        let outcome = run(
            sim,
            kill,
            SimIndex(sim).call::<RemovePinOp>(&RemovePin {
                name: pin_name(name),
            }),
        );
        let old = self.model.pins.remove(&name);
        if outcome.is_some() {
            self.model.maybe_pins.retain(|&(n, _)| n != name);
        } else if let Some(old) = old {
            self.model.maybe_pins.insert((name, old));
        }
    }

    fn reconcile(&mut self, kill: Kill) {
        let sim = &self.sim;
        let _ = run(
            sim,
            kill,
            SimObjectSteps(sim).reconcile_step(&mut Budget::new(44)),
        );
    }

    fn gc(
        &mut self,
        dry: bool,
        purges: Option<bool>,
        budget: u32,
        kill: Kill,
    ) -> Option<api::GcProgress> {
        self.sim.actor.set(Actor::Gc);
        let sim = &self.sim;
        let mode = Mode {
            dry_run: dry,
            start_up_to: if dry { 0 } else { u64::MAX >> 11 },
        };
        let retention = self.model.retention;
        let now = self.now();
        let mut budget = Budget::new(budget);
        let outcome = if let Some(works) = purges {
            run(
                sim,
                kill,
                steps(
                    &SimBucket(sim),
                    &SimIndex(sim),
                    &Purging(works),
                    &SimObjectSteps(sim),
                    retention,
                    now,
                    mode,
                    &mut budget,
                ),
            )
        } else {
            run(
                sim,
                kill,
                steps(
                    &SimBucket(sim),
                    &SimIndex(sim),
                    &crate::core::index::passes::NoPurge,
                    &SimObjectSteps(sim),
                    retention,
                    now,
                    mode,
                    &mut budget,
                ),
            )
        };
        match outcome {
            Some(Ok(progress)) => progress,
            Some(Err(err)) => panic!("a GC request failed: {err}"),
            None => None,
        }
    }

    fn upkeep(&mut self, caller: Caller, kill: Kill) {
        self.sim.actor.set(Actor::Gc);
        let sim = &self.sim;
        let index = sim.index.borrow();
        let mut budget = Budget::new(R2_OPS_PER_INVOCATION);
        let outcome = run(
            sim,
            kill,
            upkeep(
                &SimBucket(sim),
                &index,
                (self.model.retention, STORE_DIR),
                self.now(),
                caller,
                &mut budget,
            ),
        );
        if let Some(Err(err)) = outcome {
            panic!("upkeep failed: {err}");
        }
    }

    // -- behind the worker's back ---------------------------------------------------

    fn behind(&mut self, i: usize, with_nar: bool, garbage: bool) {
        let nar = nar_key(self.model.universe.nar[i]);
        if with_nar && !self.sim.has(&nar) {
            self.sim
                .put(&nar, vec![0; nar_size(self.model.universe.nar[i]) as usize]);
            self.note_written(&nar, Actor::Behind);
        }
        let key = narinfo_key(i);
        if self.sim.has(&key) {
            return;
        }
        let bytes = if garbage {
            format!("this is no narinfo\nURL: {nar}\n").into_bytes()
        } else {
            self.model.universe.narinfo(i)
        };
        self.note_written(&key, Actor::Behind);
        self.sim.put(&key, bytes);
    }

    fn behind_delete(&mut self, i: usize, nar: bool) {
        self.sim.remove(&narinfo_key(i), Actor::Behind);
        if nar {
            self.sim
                .remove(&nar_key(self.model.universe.nar[i]), Actor::Behind);
        }
    }

    // -- one operation, and the checks after it -------------------------------------

    fn apply(&mut self, op: &Op) {
        explored(|e| {
            e.steps += 1;
            e.wipes += u64::from(matches!(op, Op::Wipe));
        });
        self.sim.now.set(self.now() + 1);
        self.sim.actor.set(Actor::Worker);
        self.sim.purges.set(match op {
            Op::Gc { purges, .. } => *purges == Some(true),
            Op::Delete { .. } | Op::DeleteNar { .. } => true,
            _ => false,
        });
        let before = self.present_paths();
        let objects_before: BTreeMap<String, Stored> = self.sim.objects.borrow().clone();
        match *op {
            Op::Push { path, kill } => self.push(path, kill),
            Op::PushBatch {
                paths,
                no_nar,
                kill,
            } => {
                self.push_batch(paths, no_nar, kill);
            }
            Op::PushClosure { path } => self.push_closure(path),
            Op::Behind { path, nar, garbage } => self.behind(path, nar, garbage),
            Op::BehindDelete { path, nar } => self.behind_delete(path, nar),
            Op::Delete { path, kill } => self.delete(path, kill),
            Op::DeleteNar { path } => {
                self.sim
                    .remove(&nar_key(self.model.universe.nar[path]), Actor::Operator);
            }
            Op::Pin { name, path, kill } => self.pin(name, path, kill),
            Op::Unpin { name, kill } => self.unpin(name, kill),
            Op::Refresh { path, kill } => self.refresh(path, kill),
            Op::Reconcile { kill } => self.reconcile(kill),
            Op::Gc {
                dry,
                purges,
                budget,
                kill,
            } => {
                let deleted = self.sim.deletions.borrow().len();
                self.gc(dry, purges, budget, kill);
                if dry {
                    assert_eq!(
                        self.sim.deletions.borrow().len(),
                        deleted,
                        "a dry run deleted something"
                    );
                }
            }
            Op::Cron { kill } => self.upkeep(Caller::Cron, kill),
            Op::Alarm { kill } => self.upkeep(Caller::Alarm, kill),
            Op::Settings {
                retain_days,
                budget,
            } => {
                self.model.retention.retain_ms = retain_days.map(|d| d * DAY_MS);
                self.model.retention.budget_bytes = budget;
            }
            Op::Clock { hours } => self.sim.now.set(self.now() + hours * HOUR_MS),
            Op::Wipe => {
                *self.sim.index.borrow_mut() = Index::open(Sqlite::memory());
                // What the index knew of pushes and pins is gone with it.
                self.model.pushed.clear();
                self.model.pins.clear();
                self.model.maybe_pins.clear();
                self.model.decided.clear();
            }
        }
        self.check(op, &before, &objects_before);
    }

    /// A path's push time as far as the index can know it: the client's last
    /// successful push or refresh, or the upload of its narinfo (what adoption records).
    fn pushed_at(&self, i: usize, objects: &BTreeMap<String, Stored>) -> u64 {
        let uploaded = objects.get(&narinfo_key(i)).map_or(0, |s| s.uploaded);
        self.model
            .pushed
            .get(&i)
            .copied()
            .unwrap_or(0)
            .max(uploaded)
    }

    fn check(
        &mut self,
        op: &Op,
        before: &BTreeSet<usize>,
        objects_before: &BTreeMap<String, Stored>,
    ) {
        let deletions: Vec<Deletion> = self.sim.deletions.borrow_mut().drain(..).collect();
        let retention = self.model.retention;
        for deletion in &deletions {
            if deletion.by == Actor::Gc {
                let narinfo = path_of_narinfo(&deletion.key).is_some();
                explored(|e| {
                    e.gc_narinfos += u64::from(narinfo);
                    e.gc_objects += u64::from(!narinfo);
                });
                self.check_gc_deletion(op, deletion, before, objects_before, retention);
            }
            self.model
                .deleted
                .insert(deletion.key.clone(), deletion.clone());
            let served = objects_before
                .get(&deletion.key)
                .is_some_and(|stored| parse(&stored.bytes).is_some());
            if served && !deletion.purged && deletion.by != Actor::Behind {
                if let Some(written) = self.model.written.get(&deletion.key) {
                    let until = deletion.at + METADATA_MAX_AGE_SECS * 1000;
                    self.model
                        .edge
                        .insert(deletion.key.clone(), (written.clone(), until));
                }
            }
        }
        let now = self.now();
        self.model.edge.retain(|_, (_, until)| *until > now);
        // Narinfos that left the bucket: their NARs' grace starts.
        for (key, stored) in objects_before {
            if self.sim.has(key) {
                continue;
            }
            if let Some(info) = parse(&stored.bytes) {
                let known = self
                    .model
                    .written
                    .get(key)
                    .is_none_or(|w| w.by != Actor::Behind)
                    || deletions
                        .iter()
                        .any(|d| d.key == *key && d.by != Actor::Behind);
                if let Some(nar) = crate::core::index::nar_key(&info.url) {
                    self.model.referrer_gone.insert(nar, (self.now(), known));
                }
            }
        }
        self.check_closures(op);
        self.check_index_claims(op);
        self.check_lap_claim();
        self.note_decided(retention);
    }

    /// Remembers under which settings the paths now pending were decided.
    fn note_decided(&mut self, retention: Retention) {
        let pending: BTreeSet<String> = self
            .sim
            .index
            .borrow()
            .sql
            .rows::<super::super::store::HashRow>("SELECT hash FROM gc_pending", &[])
            .expect("the index reads")
            .into_iter()
            .map(|row| row.hash)
            .collect();
        let pending: BTreeSet<usize> = (0..PATHS)
            .filter(|&i| pending.contains(&hash(i).to_string()))
            .collect();
        self.model.decided.retain(|i, _| pending.contains(i));
        for i in pending {
            self.model.decided.entry(i).or_insert(retention);
        }
    }

    fn check_gc_deletion(
        &self,
        op: &Op,
        deletion: &Deletion,
        before: &BTreeSet<usize>,
        objects_before: &BTreeMap<String, Stored>,
        retention: Retention,
    ) {
        let t = deletion.at;
        if let Some(p) = path_of_narinfo(&deletion.key) {
            // A removal decided by an earlier request that died before deleting: judged
            // by the settings it was decided under.
            let retention = self.model.decided.get(&p).copied().unwrap_or(retention);
            if !objects_before.contains_key(&deletion.key) {
                return;
            }
            assert!(
                retention.retain_ms.is_some() || retention.budget_bytes.is_some(),
                "{op:?}: the GC deleted narinfo p{p} with no retention rule configured"
            );
            let pinned = self
                .model
                .universe
                .closure(self.model.pins.values().copied(), before);
            assert!(
                !pinned.contains(&p),
                "{op:?}: the GC deleted p{p}, which a pin keeps"
            );
            if retention.budget_bytes.is_none() {
                let retain = retention.retain_ms.unwrap_or(u64::MAX);
                let roots = before
                    .iter()
                    .copied()
                    .filter(|&i| self.pushed_at(i, objects_before).saturating_add(retain) >= t);
                let kept = self.model.universe.closure(roots, before);
                assert!(
                    !kept.contains(&p),
                    "{op:?}: the GC deleted p{p}, reachable from a root pushed within RETAIN_DAYS"
                );
            }
        } else {
            // An object: only once the last complete lap could have seen it unused.
            let lap = deletion.lap.unwrap_or_else(|| {
                panic!(
                    "{op:?}: the GC deleted {} with no complete lap",
                    deletion.key
                )
            });
            assert!(
                deletion.uploaded + retention.grace_ms <= lap,
                "{op:?}: the GC deleted {} (stored {}) which the lap of {} could not have seen unused",
                deletion.key,
                deletion.uploaded,
                lap
            );
            if let Some(&(gone, known)) = self.model.referrer_gone.get(&deletion.key) {
                assert!(
                    !known || gone + retention.grace_ms <= t,
                    "{op:?}: the GC deleted {} {} ms after its last narinfo went (grace {})",
                    deletion.key,
                    t - gone,
                    retention.grace_ms
                );
            }
        }
    }

    /// Every narinfo a client can get (from the bucket, or from the edge cache where a
    /// deletion could not purge it) has its NAR and its references' narinfos in the
    /// bucket.
    fn check_closures(&self, op: &Op) {
        let objects = self.sim.objects.borrow();
        let mut served: Vec<(usize, &Written, &str)> = Vec::new();
        for i in 0..PATHS {
            let key = narinfo_key(i);
            if let Some(stored) = objects.get(&key) {
                if parse(&stored.bytes).is_some() {
                    let written = self
                        .model
                        .written
                        .get(&key)
                        .expect("every narinfo was written");
                    served.push((i, written, "bucket"));
                }
            }
            if let Some((written, _)) = self.model.edge.get(&key) {
                served.push((i, written, "edge cache"));
            }
        }
        for (i, written, from) in served {
            for need in self.model.universe.needs(i) {
                if objects.contains_key(&need) || written.absent.contains(&need) {
                    continue;
                }
                let deletion = self
                    .model
                    .deleted
                    .get(&need)
                    .unwrap_or_else(|| panic!("{need} vanished without a delete"));
                if deletion.at < written.at {
                    continue; // absent when the narinfo was written (a later write of it)
                }
                match deletion.by {
                    Actor::Operator | Actor::Behind => {}
                    Actor::Worker => panic!("{op:?}: a publish deleted {need}"),
                    Actor::Gc => {
                        // Written behind the worker's back after what the deleting step
                        // relied on: for a narinfo the sweep removed, the start of its
                        // pass (a lap begun after it has seen everything before); for
                        // an object, the last complete lap.
                        let relied_on = if path_of_narinfo(&need).is_some() {
                            deletion.pass_started
                        } else {
                            deletion.lap
                        };
                        let unseen = written.by == Actor::Behind
                            && relied_on.is_none_or(|since| written.at >= since);
                        assert!(
                            unseen,
                            "{op:?}: p{i}'s narinfo is served ({from}) without {need}, which the \
                             GC deleted (written {} by {:?}, deleted {} with lap {:?})",
                            written.at, written.by, deletion.at, deletion.lap
                        );
                    }
                }
            }
        }
    }

    /// The index never claims a path whose narinfo the GC (or a DELETE) removed from the
    /// bucket: `nixflare push` would build on it.
    fn check_index_claims(&self, op: &Op) {
        #[derive(serde::Deserialize)]
        struct Row {
            hash: String,
        }
        let index = self.sim.index.borrow();
        let claimed: Vec<Row> = index
            .sql
            .rows(
                "SELECT hash FROM paths WHERE hash NOT IN (SELECT hash FROM gc_pending) \
                   AND hash NOT IN (SELECT hash FROM deleting WHERE done = 0)",
                &[],
            )
            .expect("the index reads");
        for row in claimed {
            let Some(i) = (0..PATHS).find(|&i| hash(i).to_string() == row.hash) else {
                continue;
            };
            let key = narinfo_key(i);
            if self.sim.has(&key) {
                continue;
            }
            if let Some(deletion) = self.model.deleted.get(&key) {
                assert!(
                    !matches!(deletion.by, Actor::Gc | Actor::Operator),
                    "{op:?}: the index claims p{i}, whose narinfo {:?} deleted at {}",
                    deletion.by,
                    deletion.at
                );
            }
        }
    }

    /// A lap the index says is complete saw every narinfo that was in the bucket when it
    /// began: each still there is indexed, or on its way out.
    fn check_lap_claim(&mut self) {
        let lap = self.sim.lap();
        if lap == self.model.lap {
            return;
        }
        self.model.lap = lap;
        explored(|e| e.laps += u64::from(lap.is_some()));
        let Some(lap) = lap else {
            return;
        };
        let index = self.sim.index.borrow();
        #[derive(serde::Deserialize)]
        struct Row {
            hash: String,
        }
        let known: BTreeSet<String> = index
            .sql
            .rows::<Row>(
                "SELECT hash FROM paths UNION SELECT hash FROM gc_pending \
                 UNION SELECT hash FROM deleting",
                &[],
            )
            .expect("the index reads")
            .into_iter()
            .map(|row| row.hash)
            .collect();
        let objects = self.sim.objects.borrow();
        for i in 0..PATHS {
            let key = narinfo_key(i);
            let Some(stored) = objects.get(&key) else {
                continue;
            };
            if stored.uploaded < lap && parse(&stored.bytes).is_some() {
                assert!(
                    known.contains(&hash(i).to_string()),
                    "the index claims a lap from {lap} but does not know p{i} (stored {})",
                    stored.uploaded
                );
            }
        }
    }

    /// Moves the clock on and lets the cron, the alarm and `nixflare gc` work, then
    /// checks that what no rule keeps is gone.
    fn settle(&mut self) {
        let pass = |case: &mut Case, op: Op| case.apply(&op);
        for _ in 0..(PATHS + 2) {
            pass(self, Op::Clock { hours: 26 });
            for _ in 0..4 {
                pass(self, Op::Cron { kill: None });
                for _ in 0..10 {
                    pass(self, Op::Alarm { kill: None });
                }
            }
            for _ in 0..30 {
                pass(
                    self,
                    Op::Gc {
                        dry: false,
                        purges: None,
                        budget: 44,
                        kill: None,
                    },
                );
            }
        }
        // Every removal handed out was carried out, whatever the settings now, and the
        // index knows every narinfo the bucket serves.
        {
            let index = self.sim.index.borrow();
            let pending = index
                .sql
                .rows::<super::super::store::HashRow>("SELECT hash FROM gc_pending", &[])
                .expect("reads");
            assert!(
                pending.is_empty(),
                "after settling, removals are still pending: {:?}",
                pending.iter().map(|row| &row.hash).collect::<Vec<_>>()
            );
            let indexed = index
                .sql
                .rows::<super::super::store::HashRow>("SELECT hash FROM paths", &[])
                .expect("reads");
            let indexed: BTreeSet<String> = indexed.into_iter().map(|row| row.hash).collect();
            let objects = self.sim.objects.borrow();
            for i in 0..PATHS {
                if objects
                    .get(&narinfo_key(i))
                    .is_some_and(|stored| parse(&stored.bytes).is_some())
                {
                    assert!(
                        indexed.contains(&hash(i).to_string()),
                        "after settling, p{i}'s narinfo is served but not indexed"
                    );
                }
            }
        }
        let retention = self.model.retention;
        if retention.budget_bytes.is_some() {
            return;
        }
        let objects = self.sim.objects.borrow();
        let present = self.present_paths();
        if retention.retain_ms.is_some() {
            // No push is recent any more: pins alone keep (and perhaps pins a killed
            // request set).
            // A pinned path whose narinfo was replaced behind the worker's back by one the
            // index cannot parse keeps what the index knew it to reference.
            let keys: BTreeSet<usize> = (0..PATHS)
                .filter(|&i| objects.contains_key(&narinfo_key(i)))
                .collect();
            let pins = self.model.pins.values().copied();
            let maybe = self.model.maybe_pins.iter().map(|&(_, path)| path);
            let kept = self.model.universe.closure(pins.chain(maybe), &keys);
            assert!(
                present.is_subset(&kept),
                "after settling, paths {present:?} are still there; only {kept:?} are kept"
            );
        }
        let used: BTreeSet<String> = objects
            .iter()
            .filter(|(key, _)| !key.starts_with("nar/"))
            .filter_map(|(_, stored)| {
                let text = stored.bytes.as_slice();
                parse(text)
                    .and_then(|info| crate::core::index::nar_key(&info.url))
                    .or_else(|| crate::core::index::lenient_nar_key(text))
            })
            .collect();
        for key in objects.keys().filter(|key| key.starts_with("nar/")) {
            assert!(
                used.contains(key),
                "after settling, unused {key} is still there"
            );
        }
    }
}

pub(super) fn run_case(universe: Universe, ops: &[Op]) {
    let mut case = Case::new(universe);
    for op in ops {
        case.apply(op);
    }
    case.settle();
}

/// What the runs explored, for the notes (`make soak` prints it).
#[derive(Default)]
struct Explored {
    cases: u64,
    steps: u64,
    killed: u64,
    gc_narinfos: u64,
    gc_objects: u64,
    laps: u64,
    wipes: u64,
    batch_published: u64,
}

thread_local! {
    static EXPLORED: RefCell<Explored> = RefCell::new(Explored::default());
}

fn explored(count: impl FnOnce(&mut Explored)) {
    EXPLORED.with(|e| count(&mut e.borrow_mut()));
}

#[test]
fn deletions_follow_the_rules_under_any_interleaving() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let config = ProptestConfig {
        cases,
        max_shrink_iters: 4096,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = (universe(), prop::collection::vec(op(), 1..60));
    let result = runner.run(&strategy, |(universe, ops)| {
        explored(|e| e.cases += 1);
        run_case(universe, &ops);
        Ok(())
    });
    EXPLORED.with(|e| {
        let e = e.borrow();
        eprintln!(
            "model: {} cases ({cases} asked; the rest replayed from proptest-regressions or shrinking), {} steps; {} requests killed \
             part-way; the GC deleted {} narinfos and {} objects; {} reconcile laps completed; \
             {} index wipes; {} paths published in batches",
            e.cases, e.steps, e.killed, e.gc_narinfos, e.gc_objects, e.laps, e.wipes,
            e.batch_published
        );
    });
    if let Err(err) = result {
        panic!("{err}");
    }
}

/// The findings that led to this test, each replayed as a fixed sequence (each failed
/// before its fix), with what it must leave behind checked on top of the invariants.
mod scenarios {
    use super::*;
    use crate::core::index::ops::{AdoptOp, ForgetOp, GcStepOp, OrphansOp, OwnLogOp};
    use crate::core::index::{Adopt, Forget, Forgot, GcStep, Listed, OrphanPage, OwnLog};

    fn chain() -> Universe {
        // p1 -> p0, p2 -> p1; the rest alone.
        Universe {
            refs: vec![vec![], vec![0], vec![1], vec![], vec![], vec![], vec![]],
            nar: (0..PATHS).collect(),
            page: 1000,
        }
    }

    /// Records a complete reconcile lap begun at `now`, and gives the step a GC
    /// request at `now` sends.
    fn lapped_step(index: &Index<Sqlite>, now: u64, retain_ms: Option<u64>) -> GcStep {
        index
            .set_meta(
                super::super::super::store::COMPLETE_LAP_KEY,
                now.to_string(),
            )
            .unwrap();
        GcStep {
            dry_run: false,
            start_up_to: 1,
            retention: Retention {
                retain_ms,
                budget_bytes: None,
                grace_ms: GRACE_MS,
            },
            now,
        }
    }

    fn index_has(case: &Case, i: usize) -> bool {
        count(
            case,
            "paths WHERE hash = ?",
            &[crate::core::index::sql::text(hash(i))],
        ) > 0
    }

    /// `SELECT COUNT(*) FROM <from>` in the case's index.
    fn count(case: &Case, from: &str, params: &[crate::core::index::sql::Value]) -> u64 {
        #[derive(serde::Deserialize)]
        struct Row {
            n: u64,
        }
        let rows: Vec<Row> = case
            .sim
            .index
            .borrow()
            .sql
            .rows(&format!("SELECT COUNT(*) AS n FROM {from}"), params)
            .expect("reads");
        rows[0].n
    }

    /// A sweep killed with a layer handed out (forgotten by the index, still in R2); an
    /// hour and more later the cron's lap must not adopt it again (its delete marker
    /// would have expired) before the GC replays the layer: the index would claim a
    /// path R2 no longer has, and a push would build on it.
    #[test]
    fn a_crashed_sweep_replayed_later_leaves_the_index_true() {
        let mut case = crashed_sweep();
        // Over an hour later: the cron's lap, then its GC pass.
        case.apply(&Op::Clock { hours: 2 });
        case.apply(&Op::Cron { kill: None });
        assert!(
            !case.sim.has(&narinfo_key(2)),
            "the pending layer was not replayed"
        );
        assert!(
            !index_has(&case, 2),
            "the index adopted a path it was deleting"
        );
        case.settle();
    }

    /// The same, with retention switched off before the cron: a pass under no rule
    /// removes only orphans, but the layer the dead request was handed out was decided
    /// under the old rule, and goes (else it stays out of the index for ever).
    #[test]
    fn a_crashed_sweep_is_replayed_after_retention_is_switched_off() {
        let mut case = crashed_sweep();
        case.apply(&Op::Settings {
            retain_days: None,
            budget: None,
        });
        case.apply(&Op::Clock { hours: 2 });
        case.apply(&Op::Cron { kill: None });
        for _ in 0..5 {
            case.apply(&Op::Alarm { kill: None });
        }
        assert!(
            !case.sim.has(&narinfo_key(2)),
            "the pending layer was not replayed"
        );
        assert!(!index_has(&case, 2));
        case.settle();
    }

    /// p2 -> p1 -> p0 pushed, expired under RETAIN_DAYS=1, and a GC request killed
    /// with its first layer (p2) handed out: out of the index, still in R2.
    fn crashed_sweep() -> Case {
        let mut case = Case::new(chain());
        case.apply(&Op::PushClosure { path: 2 });
        case.apply(&Op::Settings {
            retain_days: Some(1),
            budget: None,
        });
        case.apply(&Op::Clock { hours: 49 });
        // Kill the GC request at the delete of the first layer (before R2 acts).
        let mut killed_with_pending = false;
        for at in 0..40 {
            case.apply(&Op::Gc {
                dry: false,
                purges: None,
                budget: 44,
                kill: Some((at, false)),
            });
            let pending = case
                .sim
                .index
                .borrow()
                .sql
                .rows::<super::super::super::store::HashRow>("SELECT hash FROM gc_pending", &[])
                .expect("reads");
            if !pending.is_empty() && case.sim.has(&narinfo_key(2)) {
                killed_with_pending = true;
                break;
            }
        }
        assert!(killed_with_pending, "no kill left a layer pending");
        assert!(!index_has(&case, 2));
        case
    }

    /// A narinfo replaced behind the worker's back before a pass began: the pass marks
    /// it by what the index knew (pushed long ago), then the pass's lap reads the new
    /// version. The sweep must judge it by that version, not by the mark.
    #[test]
    fn a_narinfo_replaced_before_the_lap_is_judged_by_what_the_lap_read() {
        let universe = Universe {
            refs: vec![vec![]; PATHS],
            nar: (0..PATHS).collect(),
            page: 1000,
        };
        let mut case = Case::new(universe);
        case.apply(&Op::Push {
            path: 1,
            kill: None,
        });
        case.apply(&Op::Settings {
            retain_days: Some(1),
            budget: None,
        });
        case.apply(&Op::Clock { hours: 27 });
        case.apply(&Op::BehindDelete {
            path: 1,
            nar: false,
        });
        case.apply(&Op::Behind {
            path: 1,
            nar: false,
            garbage: false,
        });
        case.apply(&Op::Gc {
            dry: false,
            purges: None,
            budget: 44,
            kill: None,
        });
        assert!(case.sim.has(&narinfo_key(1)), "the new narinfo was swept");
        case.settle();
    }

    /// With a budget, a write token refreshes every path in one request (or uploads one
    /// path larger than the budget): the next pass must not keep zero bytes.
    #[test]
    fn a_refresh_of_everything_does_not_empty_the_cache() {
        let universe = Universe {
            refs: vec![vec![]; PATHS],
            nar: (0..PATHS).collect(),
            page: 1000,
        };
        let mut case = Case::new(universe);
        for path in 0..PATHS {
            case.apply(&Op::Push { path, kill: None });
            case.apply(&Op::Clock { hours: 1 });
        }
        // Sizes are 1,000 .. 7,000: 28,000 in all; the budget holds 10,000.
        case.apply(&Op::Settings {
            retain_days: None,
            budget: Some(10_000),
        });
        case.apply(&Op::Refresh {
            path: 6,
            kill: None,
        });
        let request = Refresh {
            hashes: (0..PATHS).map(hash).collect(),
            now: case.now(),
        };
        let index = case.sim.index.borrow();
        RootsOp::apply(&index, request).expect("refreshed");
        drop(index);
        case.apply(&Op::Clock { hours: 30 });
        for _ in 0..20 {
            case.apply(&Op::Gc {
                dry: false,
                purges: Some(true),
                budget: 44,
                kill: None,
            });
        }
        let kept: u64 = (0..PATHS)
            .filter(|&i| case.sim.has(&narinfo_key(i)))
            .map(nar_size)
            .sum();
        assert!(kept > 0 && kept <= 10_000, "kept {kept} bytes");
    }

    /// A dry run under one setting, then the setting changed: the pass follows the
    /// setting it runs under, and removes nothing the old one doomed.
    #[test]
    fn a_pass_follows_the_settings_it_runs_under() {
        let mut case = Case::new(chain());
        case.apply(&Op::PushClosure { path: 2 });
        case.apply(&Op::Clock { hours: 49 });
        case.apply(&Op::Settings {
            retain_days: Some(1),
            budget: None,
        });
        let plan = case
            .gc(true, Some(true), 44, None)
            .expect("a dry run")
            .plan
            .expect("a plan");
        assert_eq!(plan.path_count, 3);
        case.apply(&Op::Settings {
            retain_days: None,
            budget: None,
        });
        let plan = case
            .gc(true, Some(true), 44, None)
            .expect("a dry run")
            .plan
            .expect("a plan");
        assert_eq!(
            plan.path_count, 0,
            "the dry run shows what the next step will do"
        );
        for _ in 0..10 {
            case.apply(&Op::Cron { kill: None });
            case.apply(&Op::Gc {
                dry: false,
                purges: Some(true),
                budget: 44,
                kill: None,
            });
        }
        for i in 0..3 {
            assert!(
                case.sim.has(&narinfo_key(i)),
                "p{i} went under settings that keep it"
            );
        }
    }

    /// Paths with many references: a sweep step touches at most MAX_ROWS_PER_STEP
    /// reference rows, however few paths that is.
    #[test]
    fn a_sweep_step_is_bounded_by_the_rows_it_touches() {
        use crate::core::gc::MAX_ROWS_PER_STEP;
        let index = Index::open(Sqlite::memory());
        let now = START;
        let many = |salt: u8| -> Vec<StorePathHash> {
            (0..15_000u32)
                .map(|n| {
                    let mut bytes = [salt; 20];
                    bytes[..4].copy_from_slice(&n.to_be_bytes());
                    StorePathHash::from_bytes(bytes)
                })
                .collect()
        };
        let entries: Vec<Entry> = (0..3)
            .map(|i| {
                let info = parse(&chain().narinfo(3 + i)).expect("parses");
                let mut entry = Entry::of(&info, now, None);
                entry.references = many(100 + i as u8);
                entry
            })
            .collect();
        AdoptOp::apply(&index, Adopt { entries, now }).expect("adopted");
        // A lap that began with the pass, and an index old enough to sweep.
        let step = lapped_step(&index, now + 3 * DAY_MS, Some(DAY_MS));
        let mut swept = Vec::new();
        for _ in 0..10 {
            let work = GcStepOp::apply(&index, step.clone()).expect("a step");
            if !work.sweep.is_empty() {
                swept = work.sweep;
                break;
            }
        }
        assert_eq!(
            swept.len(),
            1,
            "one path of 15,000 references per step (bound {MAX_ROWS_PER_STEP})"
        );
    }

    /// A log uploaded on its own stays, even when a path published later (an unsigned
    /// content-addressed one, whose Deriver nobody vouches for) names its derivation
    /// and is removed.
    #[test]
    fn a_forged_deriver_takes_no_log_with_it() {
        let index = Index::open(Sqlite::memory());
        let drv = format!("{}-x.drv", hash(5));
        let owned = OwnLogOp::apply(&index, OwnLog { drv: drv.clone() }).expect("asked");
        assert!(!owned, "no path names it: the log is its uploader's");
        let mut entry = Entry::of(&parse(&chain().narinfo(3)).unwrap(), START, None);
        entry.deriver = Some(drv.clone());
        AdoptOp::apply(
            &index,
            Adopt {
                entries: vec![entry],
                now: START,
            },
        )
        .unwrap();
        let forgot = ForgetOp::apply(
            &index,
            Forget {
                hash: hash(3),
                now: START,
                purged: true,
                nar: None,
            },
        )
        .unwrap();
        assert!(matches!(forgot, Forgot::Forgotten { .. }));
        index.confirm_removed(&[hash(3)], START, true).unwrap();
        let step = lapped_step(&index, START + 20 * DAY_MS, None);
        let work = GcStepOp::apply(&index, step).unwrap();
        let after = work.list_after.expect("a listing");
        let orphans = OrphansOp::apply(
            &index,
            OrphanPage {
                after,
                through: None,
                objects: vec![Listed {
                    key: format!("log/{drv}"),
                    uploaded: START,
                    points_to: None,
                }],
                now: START + 20 * DAY_MS,
            },
        )
        .unwrap();
        assert!(orphans.delete.is_empty(), "{:?}", orphans.delete);
    }

    /// A pin names a path: a DELETE is refused (409 at the edge), and a pin under
    /// another name for the same hash is refused too.
    #[test]
    fn pins_are_exact_and_block_deletes() {
        let mut case = Case::new(chain());
        case.apply(&Op::Push {
            path: 0,
            kill: None,
        });
        let index = case.sim.index.borrow();
        let wrong = SetPin {
            name: pin_name(0),
            store_path: format!("{}-invented", hash(0)).parse().unwrap(),
            expires_at: None,
            subject: "t".into(),
            now: START + 10,
        };
        assert!(matches!(
            SetPinOp::apply(&index, wrong).unwrap(),
            crate::core::index::PinSet::NotCached { .. }
        ));
        let right = SetPin {
            name: pin_name(0),
            store_path: format!("{}-p0", hash(0)).parse().unwrap(),
            expires_at: None,
            subject: "t".into(),
            now: START + 10,
        };
        SetPinOp::apply(&index, right).unwrap();
        let forgot = ForgetOp::apply(
            &index,
            Forget {
                hash: hash(0),
                now: START + 11,
                purged: true,
                nar: None,
            },
        )
        .unwrap();
        assert!(matches!(forgot, Forgot::Pinned { .. }), "{forgot:?}");
    }

    /// The index alone, with p0 adopted at START (as a lap finds it in the bucket).
    fn p0_adopted() -> Index<Sqlite> {
        let index = Index::open(Sqlite::memory());
        let info = parse(&chain().narinfo(0)).expect("parses");
        AdoptOp::apply(
            &index,
            Adopt {
                entries: vec![Entry::of(&info, START, None)],
                now: START,
            },
        )
        .unwrap();
        index
    }

    /// The index alone, a path `p0` doomed by retention, a pass marked and a lap
    /// completed: what a sweep step hands out next.
    fn doomed_p0() -> (Index<Sqlite>, GcStep) {
        let index = p0_adopted();
        let now = START + 3 * DAY_MS;
        let step = GcStep {
            dry_run: true,
            ..lapped_step(&index, START, Some(DAY_MS))
        };
        let step = GcStep { now, ..step };
        // Marks, and reports p0 doomed.
        let plan = (0..10)
            .find_map(|_| GcStepOp::apply(&index, step.clone()).unwrap().plan)
            .expect("a plan");
        assert_eq!(plan.path_count, 1);
        let step = lapped_step(&index, now, Some(DAY_MS));
        (index, step)
    }

    /// A new version of p0's narinfo, stored behind the worker's back before the pass
    /// began (so not "pushed since"), adopted by a lap after the seed saw the old one
    /// and before the pass computed its doomed list: judged by the new version.
    #[test]
    fn a_version_adopted_between_seed_and_sweep_is_not_doomed_by_the_old_one() {
        let index = p0_adopted();
        let info = parse(&chain().narinfo(0)).expect("parses");
        let now = START + 3 * DAY_MS;
        let step = lapped_step(&index, now, Some(DAY_MS));
        let first = GcStepOp::apply(&index, step.clone()).unwrap();
        assert!(first.sweep.is_empty());
        assert_ne!(
            first.run.phase,
            crate::core::api::GcPhase::Sweep,
            "seeded only"
        );
        AdoptOp::apply(
            &index,
            Adopt {
                entries: vec![Entry::of(&info, now - HOUR_MS, None)],
                now,
            },
        )
        .unwrap();
        for _ in 0..10 {
            assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
        }
    }

    /// A reconcile page of the keys after `after` through `through`, as the bucket
    /// lists them at `at` (every narinfo stored at START), then the cursor moved on.
    fn lap_page(
        index: &Index<Sqlite>,
        after: &str,
        through: Option<String>,
        narinfos: Vec<StorePathHash>,
        at: u64,
    ) {
        use crate::core::index::ops::{AdvanceOp, PageOp};
        use crate::core::index::{Advance, ReconcilePage};
        let uploaded = vec![START; narinfos.len()];
        let checked = PageOp::apply(
            index,
            ReconcilePage {
                after: after.to_string(),
                through: through.clone(),
                listed_at: at,
                narinfos,
                uploaded,
            },
        )
        .unwrap();
        assert!(checked.unindexed.is_empty());
        let moved = AdvanceOp::apply(
            index,
            Advance {
                after: after.to_string(),
                through,
                adopt: vec![],
                unreadable: vec![],
                listed_at: at,
                now: at,
            },
        )
        .unwrap();
        assert!(moved.moved);
    }

    /// A publish of p1 (-> p0) reserves p0 while a lap passes p1's key, then stores its
    /// narinfo and dies before its commit. Over ten minutes later the next lap's first
    /// page (p0's key only) must not drop the reservation: until a page adopts p1's
    /// narinfo, nothing else keeps p0 from the sweep.
    #[test]
    fn a_stale_reservation_is_dropped_only_by_the_page_of_its_narinfo() {
        use crate::core::index::ops::BeginOp;
        use crate::core::index::{Begin, Begun};
        let index = p0_adopted();
        let now = START + 3 * DAY_MS;
        let step = GcStep {
            dry_run: false,
            start_up_to: 1,
            retention: Retention {
                retain_ms: Some(DAY_MS),
                budget_bytes: None,
                grace_ms: GRACE_MS,
            },
            now,
        };
        // The pass begins (p0 has expired), then the publish reserves p0.
        GcStepOp::apply(&index, step.clone()).unwrap();
        let p1 = parse(&chain().narinfo(1)).expect("parses");
        let begun = BeginOp::apply(
            &index,
            Begin {
                entry: Entry::of(&p1, now, None),
                upstreams: vec![],
                adopt: vec![],
                upstream_hits: vec![],
                now,
            },
        )
        .unwrap();
        assert!(matches!(begun, Begun::Reserved { .. }), "{begun:?}");
        // A whole lap in one page, before p1's narinfo is in the bucket.
        lap_page(&index, "", None, vec![hash(0)], now + 1_000);
        // Eleven minutes on: the next lap's first page.
        let later = now + 11 * 60_000;
        lap_page(&index, "", Some(narinfo_key(0)), vec![hash(0)], later);
        let step = GcStep { now: later, ..step };
        for _ in 0..10 {
            assert!(
                !next_sweep(&index, &step).contains(&hash(0)),
                "p0 swept while p1's narinfo needs it"
            );
        }
    }

    fn next_sweep(index: &Index<Sqlite>, step: &GcStep) -> Vec<StorePathHash> {
        GcStepOp::apply(index, step.clone()).unwrap().sweep
    }

    #[test]
    fn the_sweep_hands_out_a_doomed_path_nothing_keeps() {
        let (index, step) = doomed_p0();
        assert_eq!(next_sweep(&index, &step), vec![hash(0)]);
    }

    /// A publish that references p0 reserved it after the mark (its narinfo may be in R2
    /// already, its commit lost): p0 stays.
    #[test]
    fn a_publish_under_way_keeps_what_it_references() {
        use crate::core::index::ops::BeginOp;
        use crate::core::index::{Begin, Begun};
        let (index, step) = doomed_p0();
        let info = parse(&chain().narinfo(1)).expect("parses");
        let begun = BeginOp::apply(
            &index,
            Begin {
                entry: Entry::of(&info, step.now, None),
                upstreams: vec![],
                adopt: vec![],
                upstream_hits: vec![],
                now: step.now,
            },
        )
        .unwrap();
        assert!(matches!(begun, Begun::Reserved { .. }), "{begun:?}");
        assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
    }

    /// A batch of p0..p3 where p1's NAR is missing: p0 and p3 are published, p1 is
    /// refused, p2 (-> p1) waits for it; two index calls for the whole batch.
    #[test]
    fn a_batch_publishes_what_it_can_and_answers_each() {
        let mut case = Case::new(chain());
        let calls = case.sim.index_calls.get();
        let results = case.push_batch(0b1111, 0b0010, None).expect("not killed");
        assert_eq!(
            case.sim.index_calls.get() - calls,
            2,
            "begin/batch, finish/batch"
        );
        // p1 never reached the index (its NAR is missing): the edge refused it.
        assert_eq!(results.len(), 3, "{results:?}");
        assert_eq!(results[0], Ok(0));
        assert!(
            matches!(&results[1], Err(PassError::Dependency(why)) if why.contains(&hash(1).to_string())),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2], Ok(3));
        assert!(index_has(&case, 0) && index_has(&case, 3));
        assert!(!index_has(&case, 1) && !index_has(&case, 2));
        assert!(!case.sim.has(&narinfo_key(2)));
        // With p1's NAR there, the same batch publishes p1 and p2; p0 and p3 unchanged.
        let calls = case.sim.index_calls.get();
        let results = case.push_batch(0b1111, 0, None).expect("not killed");
        assert_eq!(results, vec![Ok(0), Ok(1), Ok(2), Ok(3)]);
        assert_eq!(case.sim.index_calls.get() - calls, 2);
        assert!((0..4).all(|i| index_has(&case, i)));
        case.settle();
    }

    /// A batch whose reference outside it is not in the cache: the batch looks it up
    /// (a third index call) and refuses only the paths that need it.
    #[test]
    fn a_batch_refuses_only_what_lacks_a_reference() {
        let mut case = Case::new(chain());
        let results = case.push_batch(0b1110, 0, None).expect("not killed");
        assert_eq!(results.len(), 3);
        assert!(
            matches!(&results[0], Err(PassError::MissingReferences(_))),
            "{:?}",
            results[0]
        );
        assert!(
            matches!(&results[1], Err(PassError::Dependency(_))),
            "{:?}",
            results[1]
        );
        assert_eq!(results[2], Ok(3));
        // Written behind the worker's back, p0 is found in the bucket and adopted.
        case.apply(&Op::Behind {
            path: 0,
            nar: true,
            garbage: false,
        });
        let results = case.push_batch(0b0110, 0, None).expect("not killed");
        assert_eq!(results, vec![Ok(1), Ok(2)]);
        case.settle();
    }

    /// `begin/batch` of paths of the chain, in the order given.
    fn begin_batch(
        index: &Index<Sqlite>,
        paths: &[usize],
        now: u64,
    ) -> Vec<crate::core::index::Begun> {
        use crate::core::index::ops::BeginBatchOp;
        let entries = paths
            .iter()
            .map(|&i| Entry::of(&parse(&chain().narinfo(i)).expect("parses"), now, None))
            .collect();
        let batch = crate::core::index::BeginBatch {
            entries,
            present: vec![],
            upstreams: vec![],
            adopt: vec![],
            upstream_hits: vec![],
            now,
        };
        BeginBatchOp::apply(index, batch).unwrap().begun
    }

    /// The index fails the second `begin/batch` (p1's reference p0 was found in the
    /// bucket): every path is answered with the error, and what the first call reserved
    /// (p3) is released at once, not when it expires.
    #[test]
    fn a_batch_that_fails_half_way_releases_its_reservations() {
        struct FailsSecondBegin<'a> {
            sim: &'a Sim,
            begins: Cell<u32>,
        }
        impl IndexCalls for FailsSecondBegin<'_> {
            async fn call<O: IndexOp>(
                &self,
                request: &O::Request,
            ) -> Result<O::Answer, IndexError> {
                if O::NAME == "begin/batch" {
                    self.begins.set(self.begins.get() + 1);
                    if self.begins.get() == 2 {
                        return Err(IndexError::Unavailable("the object restarted".into()));
                    }
                }
                O::apply(&self.sim.index.borrow(), request.clone())
            }
            fn cost(&self) -> u32 {
                1
            }
        }
        let mut case = Case::new(chain());
        case.apply(&Op::Behind {
            path: 0,
            nar: true,
            garbage: false,
        });
        let universe = chain();
        let items: Vec<BatchItem> = [3, 1]
            .iter()
            .map(|&i| {
                let narinfo = parse(&universe.narinfo(i)).expect("parses");
                let entry = Entry::of(&narinfo, case.now(), None);
                BatchItem { narinfo, entry }
            })
            .collect();
        for i in [1, 3] {
            case.sim.put(
                &nar_key(universe.nar[i]),
                vec![0; nar_size(universe.nar[i]) as usize],
            );
        }
        let index = FailsSecondBegin {
            sim: &case.sim,
            begins: Cell::new(0),
        };
        let bucket = SimBucket(&case.sim);
        let put_wave = |_wave: Vec<usize>| async { panic!("nothing is written") };
        let results: Vec<Result<(), PassError>> = run(
            &case.sim,
            None,
            publish_batch(&sources(&bucket), &index, &items, &[], case.now(), put_wave),
        )
        .expect("not killed");
        assert_eq!(index.begins.get(), 2);
        assert!(
            results
                .iter()
                .all(|r| matches!(r, Err(PassError::Index(_)))),
            "{results:?}"
        );
        assert_eq!(
            count(&case, "reservations", &[]),
            0,
            "a reservation outlived its batch"
        );
    }

    /// A batch racing a GC pass: p0 is doomed (its root expired) when a batch of p1
    /// (-> p0) and p2 (-> p1) reserves; the sweep hands out nothing they need, before
    /// or after the batch commits.
    #[test]
    fn a_batch_racing_a_gc_pass_loses_nothing() {
        use crate::core::index::ops::FinishBatchOp;
        use crate::core::index::{Begun, FinishBatch, Stored};
        let (index, step) = doomed_p0();
        let commit = begin_batch(&index, &[1, 2], step.now)
            .iter()
            .map(|b| match b {
                Begun::Reserved { reservation } => Stored {
                    reservation: *reservation,
                    unchanged: false,
                },
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
        let finish = FinishBatch {
            commit,
            abort: vec![],
            now: step.now,
        };
        FinishBatchOp::apply(&index, finish).unwrap();
        assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
    }

    /// In a batch, a path listed before the one it references is not reserved: the
    /// index counts only what was reserved before it in the call.
    #[test]
    fn a_batch_reference_counts_only_once_reserved() {
        use crate::core::index::Begun;
        let (index, step) = doomed_p0();
        let begun = begin_batch(&index, &[2, 1], step.now);
        assert_eq!(
            begun[0],
            Begun::Missing {
                missing: vec![hash(1)]
            }
        );
        assert!(matches!(begun[1], Begun::Reserved { .. }), "{begun:?}");
    }

    /// Pinned after the mark: p0 stays.
    #[test]
    fn a_pin_set_after_the_mark_keeps_its_path() {
        let (index, step) = doomed_p0();
        SetPinOp::apply(
            &index,
            SetPin {
                name: pin_name(0),
                store_path: format!("{}-p0", hash(0)).parse().unwrap(),
                expires_at: None,
                subject: "t".into(),
                now: step.now,
            },
        )
        .unwrap();
        assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
    }

    /// Pushed again after the mark: p0 stays.
    #[test]
    fn a_push_after_the_mark_keeps_its_path() {
        let (index, step) = doomed_p0();
        RootsOp::apply(
            &index,
            Refresh {
                hashes: vec![hash(0)],
                now: step.now,
            },
        )
        .unwrap();
        assert_eq!(next_sweep(&index, &step), Vec::<StorePathHash>::new());
    }
}
