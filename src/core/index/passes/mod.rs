//! The multi-step procedures that act on the bucket in the order the index decides:
//! publishing a narinfo (`publish`), deleting one (`publish::delete_narinfo`), a step
//! of the reconcile lap (`reconcile`), steps of a GC pass (`gc`).
//!
//! They do no I/O of their own: they are written against [`Bucket`], [`IndexCalls`],
//! [`EdgePurge`] and [`Upstreams`], which the worker implements with R2, the object's
//! stub, the edge cache and `fetch` (`crate::edge`), the object implements with R2 and
//! direct calls, and the model test implements in memory (`index/tests`), where any
//! await may be the last (a request killed there leaves what it did so far, nothing
//! more). Each procedure counts what it spends against a [`Budget`], so one invocation
//! stays inside the platform's subrequest limit.

use thiserror::Error;

use super::ops::IndexOp;
use super::IndexError;
use crate::core::nix::store_path::StorePathHash;

pub mod gc;
pub mod publish;
pub mod reconcile;
pub mod upkeep;

/// An R2 operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct StorageError(pub String);

/// Why a procedure stopped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PassError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Work is left for another request (the client sends it again).
    #[error("{0}")]
    Busy(String),
    /// A narinfo names references neither the cache nor an upstream holds.
    #[error("{0}")]
    MissingReferences(String),
    /// An upstream cache could not say whether it has a path.
    #[error("{0}")]
    Upstream(String),
    /// A delete refused: something still needs the path.
    #[error("{0}")]
    Conflict(String),
    /// A narinfo of a batch not published because one it references in the batch was
    /// not: it goes when that one does.
    #[error("{0}")]
    Dependency(String),
}

/// One listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub key: String,
    pub size: u64,
    /// Unix milliseconds: when R2 stored it.
    pub uploaded: u64,
}

/// A page of a listing, keys after `after` in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub objects: Vec<Object>,
    pub truncated: bool,
}

/// An object read whole, if it was at most the size asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// None: larger than the caller would read.
    pub bytes: Option<Vec<u8>>,
    pub uploaded: u64,
}

/// The bucket, as the procedures use it.
#[allow(async_fn_in_trait)] // single-threaded (wasm, the tests): no Send bound wanted
pub trait Bucket {
    /// Keys after `after` (all of them, or only the top level: no '/' in the key).
    async fn list(&self, after: &str, limit: u32, top_level: bool)
        -> Result<Listing, StorageError>;
    /// The object under `key`, read only if at most `max_bytes`.
    async fn get(&self, key: &str, max_bytes: u64) -> Result<Option<Fetched>, StorageError>;
    async fn delete(&self, keys: &[String]) -> Result<(), StorageError>;
}

/// The index, as the procedures call it: a request to the object from the worker, a
/// direct call inside the object.
#[allow(async_fn_in_trait)]
pub trait IndexCalls {
    async fn call<O: IndexOp>(&self, request: &O::Request) -> Result<O::Answer, IndexError>;
    /// What one call costs of an invocation's subrequests (0 inside the object).
    fn cost(&self) -> u32;
}

/// The index called directly, inside the object (and in the tests): no subrequest.
pub struct Local<'a, S: super::sql::Sql>(pub &'a super::Index<S>);

impl<S: super::sql::Sql> IndexCalls for Local<'_, S> {
    async fn call<O: IndexOp>(&self, request: &O::Request) -> Result<O::Answer, IndexError> {
        O::apply(self.0, request.clone())
    }

    fn cost(&self) -> u32 {
        0
    }
}

/// The edge cache in front of the worker.
#[allow(async_fn_in_trait)]
pub trait EdgePurge {
    /// Whether deleted keys can be purged here (else a copy lives as long as its
    /// Cache-Control says, and the GC holds what it names).
    fn purges(&self) -> bool;
    /// Best effort: failures are the implementation's to log. Whether every key was
    /// purged (if not, the GC holds what the keys name, as where nothing purges).
    async fn purge(&self, keys: &[String]) -> bool;
}

/// No edge cache to purge (the object, the cron, the tests).
pub struct NoPurge;

impl EdgePurge for NoPurge {
    fn purges(&self) -> bool {
        false
    }
    async fn purge(&self, _keys: &[String]) -> bool {
        false
    }
}

/// What an upstream cache said about a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    In(String),
    Absent,
    Unreachable(String),
}

/// The upstream caches (`UPSTREAM_CACHES`).
#[allow(async_fn_in_trait)]
pub trait Upstreams {
    /// For each hash, whether one of `caches` serves its narinfo (at most
    /// `MAX_UPSTREAM_CHECKS` hashes: one HEAD per cache each).
    async fn lookup(&self, caches: &[String], hashes: &[StorePathHash]) -> Vec<Found>;
}

/// Subrequests left to one invocation (a worker request, the object's request or
/// alarm): R2 operations, plus index calls where they cost one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub left: u32,
    pub spent: u32,
}

impl Budget {
    pub fn new(subrequests: u32) -> Self {
        Budget {
            left: subrequests,
            spent: 0,
        }
    }

    /// Takes `n` if they are left.
    pub fn take(&mut self, n: u32) -> bool {
        if n > self.left {
            return false;
        }
        self.left -= n;
        self.spent += n;
        true
    }

    pub fn has(&self, n: u32) -> bool {
        n <= self.left
    }
}
