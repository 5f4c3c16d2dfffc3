//! The index of what the cache holds: one Durable Object with SQLite storage, written
//! by publishes, deletes, the reconcile pass and the GC, never read by the anonymous
//! read path (which stays R2 only). docs/index.md and docs/gc.md explain it.
//!
//! Everything the object decides lives here and builds for the host as well as for
//! wasm: its SQL runs against the small [`sql::Sql`] interface, which the Durable
//! Object's `SqlStorage` implements in production (`crate::edge::index`) and SQLite
//! itself implements in the tests, where a model-based test drives it with random
//! operations (`tests/model.rs`).
//!
//! - [`messages`]: what the worker and the object say to each other;
//! - [`ops`]: each operation's name, request and answer, defined once;
//! - [`schema`]: numbered migrations;
//! - [`store`]: [`Index`], the object's state and one atomic handler per operation
//!   (publishing, deleting, queries, stats); `laps.rs`: the reconcile lap's handlers;
//!   `summary.rs`: the landing page's summary;
//! - `gc_store`: the GC's handlers (roots, pins, the steps of a pass); `orphans.rs`:
//!   its orphan step;
//! - [`passes`]: the multi-step procedures that read and delete in the bucket
//!   (publishing, deleting, a reconcile step, GC steps), written against traits for the
//!   bucket and the index so the same code runs in the worker, in the object, and in
//!   the tests.
//!
//! Why a Durable Object and not D1: one object runs one request at a time, so "check
//! the references, then reserve the path" and "check nothing refers to it, then forget
//! it" are atomic without locks; it is on the Free plan; `wrangler deploy` creates it
//! from the migration in wrangler.toml; a batch query is one statement over a JSON
//! array (`json_each`). Where it stops: one object holds 10 GB (docs/index.md).

use thiserror::Error;

mod gc_store;
mod laps;
pub mod messages;
pub mod ops;
mod orphans;
pub mod passes;
pub mod schema;
pub mod sql;
pub mod store;
mod summary;
#[cfg(test)]
pub(crate) mod tests;

pub use messages::*;
pub use store::Index;

use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;

/// The Durable Object binding in wrangler.toml, and the one object's name.
pub const BINDING: &str = "INDEX";
pub const OBJECT_NAME: &str = "index";

/// Most store path hashes one batch query may ask about: a 35 KB body, well inside a
/// Free-plan request's 10 ms of CPU. `nixflare push` sends larger closures in batches.
pub const MAX_QUERY_HASHES: usize = 1000;

/// Most reference lookups one publish may send to the upstream caches (narinfo HEADs).
/// Below the Free plan's 50 outside subrequests per request (R2 and the index count
/// against another budget). More to check is a 503 after remembering what was found.
pub const MAX_UPSTREAM_CHECKS: usize = 40;

/// Most references one publish looks for in the bucket when the index lacks them (one R2
/// GET each, up to a 1 MiB narinfo read into memory each). The rest go on to the
/// upstream caches; a seeded bucket is indexed in bulk by the reconcile pass.
pub const MAX_BUCKET_LOOKUPS: usize = 20;

/// How long an upstream cache's "I have it" is remembered: long enough that a busy
/// cache asks rarely, short enough that a path the upstream dropped stops counting.
pub const UPSTREAM_MEMORY_MS: u64 = 30 * 86_400_000;

/// Most references one request adopts into the index (a reconcile step sends larger
/// sets in batches): bounds the memory and the rows of one request.
pub const MAX_ADOPT_REFERENCES: usize = 20_000;

/// The R2 operations one invocation of the index may spend on the bucket (a reconcile
/// step's list and GETs, a GC step's list, reads and deletes). A Durable Object request
/// or alarm is an invocation of its own; on the Free plan an invocation may make 50
/// subrequests (Cloudflare's services may have a separate, larger allowance, but the
/// docs are ambiguous), so one step stays below 50 and the object runs as many
/// invocations as the work needs (its alarm). docs/index.md has the rates.
pub const R2_OPS_PER_INVOCATION: u32 = 45;

/// Keys one reconcile step lists (one R2 list page): the narinfos among them the index
/// lacks are read one GET each, as many as [`R2_OPS_PER_INVOCATION`] leaves; the page
/// ends at the last one read.
pub const RECONCILE_PAGE_KEYS: u32 = 1000;

/// An index row younger than this (relative to the listing) may belong to a publish
/// that wrote R2 after the listing was taken: the reconcile pass never removes it.
pub const RECONCILE_MARGIN_MS: u64 = 60_000;

/// A reservation older than this belongs to a publish that died between its steps.
pub const STALE_RESERVATION_MS: u64 = 10 * 60_000;

/// A delete marker older than this belongs to a DELETE whose R2 delete never ran: the
/// reconcile pass may index the path again if its narinfo is still in the bucket. (A
/// path the GC removes stays marked until R2 confirms: no expiry.)
pub const STALE_DELETE_MS: u64 = 60 * 60_000;

/// How many referrers or missing references an error message lists.
pub const MAX_LISTED: usize = 10;

/// Why the index could not answer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IndexError {
    /// SQLite refused a statement (or the object's storage failed).
    #[error("index storage: {0}")]
    Storage(String),
    /// The object's schema could not be brought up to date: nothing runs until it is.
    #[error("index schema: {0}")]
    Schema(String),
    /// A request the object could not read: a worker and an object of different
    /// versions, most likely.
    #[error("index request {op}: {reason}")]
    BadRequest { op: String, reason: String },
    #[error("unknown index operation {0:?}")]
    UnknownOperation(String),
    /// A row the object wrote cannot be read back: a bug, or storage damage.
    #[error("the index holds a bad {what}: {value:?}")]
    Corrupt { what: &'static str, value: String },
    /// The object could not be reached, or answered with an error of its own.
    #[error("index unavailable: {0}")]
    Unavailable(String),
    /// The worker has no binding for the object: wrangler.toml is missing it.
    #[error("the worker has no {BINDING} Durable Object binding (see wrangler.toml)")]
    Unbound,
}

impl From<sql::SqlError> for IndexError {
    fn from(err: sql::SqlError) -> Self {
        IndexError::Storage(err.0)
    }
}

/// The hash of a top-level key that is a narinfo (`<hash>.narinfo`).
pub fn narinfo_key_hash(key: &str) -> Option<StorePathHash> {
    key.strip_suffix(".narinfo")?.parse().ok()
}

/// References (other than the path itself) still missing, in the order given, keeping
/// at most [`MAX_LISTED`] for a message.
pub fn describe_missing(missing: &[StorePathHash], narinfo: &NarInfo) -> String {
    let names: Vec<String> = missing
        .iter()
        .take(MAX_LISTED)
        .map(|hash| {
            narinfo
                .references
                .iter()
                .find(|r| r.hash() == hash)
                .map_or_else(|| hash.to_string(), ToString::to_string)
        })
        .collect();
    let more = missing.len().saturating_sub(MAX_LISTED);
    let tail = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!("{}{tail}", names.join(", "))
}

/// What Nix would take for the NAR of a narinfo this cache cannot parse: the last `URL`
/// line, split as Nix splits lines (at the first ':', one character skipped). Keeps
/// the NAR from the orphan step while the narinfo is in the bucket.
pub fn lenient_nar_key(bytes: &[u8]) -> Option<String> {
    let text = core::str::from_utf8(bytes).ok()?;
    let mut url = None;
    for line in text.split('\n') {
        if let Some((key, value)) = line.split_once(':') {
            if key == "URL" {
                url = Some(value.get(1..).unwrap_or_default());
            }
        }
    }
    messages::nar_key(url?)
}
