//! What the worker and the index's Durable Object say to each other: the request and
//! answer of every operation, each defined once ([`super::ops`] pairs them with their
//! names). Rendered by `crate::core::json_write` in the worker, read by serde.

use serde::{Deserialize, Serialize};

use crate::core::api::{GcPlan, GcRun, Pin, True};
use crate::core::credential::Credential;
use crate::core::gc::Retention;
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::{StorePathBaseName, StorePathHash};
use crate::core::pin_name::PinName;
use crate::core::token::TokenId;

/// What the index records of a published path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub hash: StorePathHash,
    pub name: String,
    /// The narinfo's URL: the NAR's key in the bucket.
    pub nar: String,
    pub file_size: u64,
    pub nar_size: u64,
    /// Other paths it needs (its own hash left out).
    pub references: Vec<StorePathHash>,
    pub deriver: Option<String>,
    /// Unix milliseconds: when the narinfo was published (for a path found in the
    /// bucket, when R2 stored it).
    pub published_at: u64,
    /// Who published it; none for a path written behind the worker's back.
    pub token_id: Option<TokenId>,
    pub subject: Option<String>,
    /// Published with a signature by a trusted key (only such a path's `Deriver` makes
    /// a build log its own: an unsigned content-addressed narinfo may name any).
    #[serde(default)]
    pub signed: bool,
}

impl Entry {
    pub fn of(narinfo: &NarInfo, published_at: u64, by: Option<&Credential>) -> Self {
        let hash = *narinfo.store_path.hash();
        let mut references: Vec<StorePathHash> = narinfo
            .references
            .iter()
            .map(|r| *r.hash())
            .filter(|r| *r != hash)
            .collect();
        references.sort();
        references.dedup();
        Self {
            hash,
            name: narinfo.store_path.name().to_owned(),
            // The NAR's key as the bucket spells it, so the GC matches keys to paths.
            nar: nar_key(&narinfo.url).unwrap_or_else(|| narinfo.url.clone()),
            file_size: narinfo.file_size.unwrap_or(0),
            nar_size: narinfo.nar_size,
            references,
            deriver: narinfo.deriver.as_ref().map(ToString::to_string),
            published_at,
            token_id: by.and_then(|c| c.token_id),
            subject: by.map(|c| c.subject.clone()),
            signed: false,
        }
    }
}

/// The bucket key of the NAR a narinfo `URL` names, when it is one this cache serves.
pub fn nar_key(url: &str) -> Option<String> {
    crate::core::nix::nar_file::NarFile::parse_url(url)
        .map(|nar| crate::core::route::Route::Nar(nar).to_string())
}

/// A reference some upstream cache was found to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamHit {
    pub hash: StorePathHash,
    pub cache: String,
}

/// `begin`: check the entry's references and reserve the path. A reference counts as
/// present when the index holds it (and no delete is under way) or a configured upstream
/// is known to serve it. `adopt` and `upstream_hits` are what the worker found for the
/// references a first `begin` reported missing: narinfos in the bucket the index did not
/// know, and upstream HEADs that answered 200.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Begin {
    pub entry: Entry,
    pub upstreams: Vec<String>,
    pub adopt: Vec<Entry>,
    pub upstream_hits: Vec<UpstreamHit>,
    pub now: u64,
}

/// The answer to [`Begin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Begun {
    /// Until committed or aborted, the reservation keeps every reference from being
    /// deleted; the path itself is not yet "in the cache".
    Reserved {
        reservation: u64,
    },
    Missing {
        missing: Vec<StorePathHash>,
    },
    /// A delete of this very path (or of its NAR) is under way: try again once it is
    /// done.
    Deleting {
        deleting: True,
    },
}

/// `commit` / `abort` of a reservation; `now` is the publish time recorded.
/// `unchanged`: R2 already held these very bytes, so an existing record (who published
/// them, when) stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finish {
    pub reservation: u64,
    pub now: u64,
    pub unchanged: bool,
}

/// `begin/batch`: [`Begin`] for the narinfos of one batch, in the order given (the
/// worker puts references first). A path reserved earlier in the same call, or named in
/// `present` (reserved by an earlier call for the same batch), counts as present for
/// the entries after it: the worker stores its narinfo before theirs and commits them
/// together, and commits none whose reference was not stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BeginBatch {
    pub entries: Vec<Entry>,
    pub present: Vec<StorePathHash>,
    pub upstreams: Vec<String>,
    pub adopt: Vec<Entry>,
    pub upstream_hits: Vec<UpstreamHit>,
    pub now: u64,
}

/// The answer to [`BeginBatch`]: one [`Begun`] per entry, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BegunBatch {
    pub begun: Vec<Begun>,
}

/// A stored narinfo's reservation, to commit (see [`Finish`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    pub reservation: u64,
    pub unchanged: bool,
}

/// `finish/batch`: a batch's reservations, committed (narinfo stored) or aborted, in
/// one handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FinishBatch {
    pub commit: Vec<Stored>,
    pub abort: Vec<u64>,
    pub now: u64,
}

/// `adopt`: narinfos read from the bucket that the index lacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Adopt {
    pub entries: Vec<Entry>,
    pub now: u64,
}

/// `forget`: a DELETE of the path's narinfo wants to go ahead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Forget {
    pub hash: StorePathHash,
    pub now: u64,
    /// (`forget/done`) The edge cache was purged of the narinfo. If not, its references
    /// are held while a copy may still be served there.
    #[serde(default)]
    pub purged: bool,
    /// (`forget`) The NAR the stored narinfo names (as Nix reads it), read by the
    /// worker: it gets its grace period even if the index never knew the path (a
    /// narinfo written behind the worker's back, deleted before a lap saw it).
    #[serde(default)]
    pub nar: Option<String>,
}

/// The answer to [`Forget`]. `Forgotten` leaves a delete marker: until the R2 delete is
/// confirmed ([`Forget`] again as `forget/done`) no publish may count on the path, and
/// its references stay recorded (its narinfo may still be in R2); for
/// [`STALE_DELETE_MS`](super::STALE_DELETE_MS) after it no narinfo of the path that R2
/// stored before the delete is adopted (a reader may have fetched it just before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Forgot {
    Forgotten {
        forgotten: True,
    },
    /// Paths (published or being published) that need it: at most
    /// [`MAX_LISTED`](super::MAX_LISTED).
    Referenced {
        referrers: Vec<StorePathHash>,
    },
    /// A publish of this very path is under way: its commit would undo the delete.
    Publishing {
        publishing: True,
    },
    /// Pins name it: removing them is a decision of its own.
    Pinned {
        pins: Vec<PinName>,
    },
}

/// `query`: which of `hashes` the index lacks; `upstreams` are the configured ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub hashes: Vec<StorePathHash>,
    pub upstreams: Vec<String>,
    pub now: u64,
}

/// A narinfo in the bucket that does not parse: what Nix would take for its NAR
/// (none: nothing this cache serves) is kept from the orphan step while it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unreadable {
    pub hash: StorePathHash,
    pub nar: Option<String>,
}

/// `reconcile/page`: the narinfos one page of the bucket's top level holds, keys in
/// `(after, through]` (`through` none: to the end). Index rows in that range that the
/// page lacks, and older than `listed_at` by [`RECONCILE_MARGIN_MS`](super::RECONCILE_MARGIN_MS),
/// are removed; the answer lists the page's narinfos the index lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilePage {
    pub after: String,
    pub through: Option<String>,
    pub listed_at: u64,
    pub narinfos: Vec<StorePathHash>,
    /// When R2 stored each of `narinfos` (same order): a narinfo stored well after the
    /// index recorded it was replaced behind the worker's back, and is read again.
    #[serde(default)]
    pub uploaded: Vec<u64>,
}

/// The answer to [`ReconcilePage`]: the page's narinfos the index lacks, or holds in an
/// older version than the bucket's (to be read and recorded), and how many index
/// entries the page showed to be gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageChecked {
    pub unindexed: Vec<StorePathHash>,
    pub removed: u64,
}

/// `reconcile/advance`: records what the worker read for the unindexed narinfos (the
/// last of them: larger sets go ahead in [`Adopt`] batches), and moves the cursor from
/// `after` to `through` (to the start, lap complete, when none) only if it is still at
/// `after`: two runners at once cannot skip a page. The step that moves the cursor
/// from the start begins a lap at `listed_at`; the one that brings it back completes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Advance {
    pub after: String,
    pub through: Option<String>,
    pub adopt: Vec<Entry>,
    #[serde(default)]
    pub unreadable: Vec<Unreadable>,
    pub listed_at: u64,
    pub now: u64,
}

/// The answer to `reconcile/cursor` and `reconcile/advance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    /// The last key of the bucket's top level already reconciled ("" at the start).
    pub after: String,
    /// Whether this request moved it (always true for `reconcile/cursor`).
    pub moved: bool,
}

/// `roots`: paths a push names again; each present one's push time becomes `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refresh {
    pub hashes: Vec<StorePathHash>,
    pub now: u64,
}

/// `pins/set`: add or move a pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetPin {
    pub name: PinName,
    pub store_path: StorePathBaseName,
    pub expires_at: Option<u64>,
    pub subject: String,
    pub now: u64,
}

/// The answer to [`SetPin`]: the pin, or that the path (hash and name) is not in the
/// cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PinSet {
    Pinned { pin: Pin },
    NotCached { absent: True },
}

/// `pins/remove`; answers whether there was such a pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovePin {
    pub name: PinName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRemoved {
    pub removed: bool,
}

/// `gc/step`: one bounded step of the pass under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcStep {
    /// A dry run: mark (nothing is deleted), then list what would go.
    pub dry_run: bool,
    /// Once the pass under way is done, start a new one only if its number would be at
    /// most this.
    pub start_up_to: u64,
    pub retention: Retention,
    pub now: u64,
}

/// The answer to [`GcStep`]: what the worker must do next. `sweep`: narinfos to delete
/// now (nothing left refers to them), then report them with [`Swept`]. `list_after`:
/// list the bucket after this key and send the page as an [`OrphanPage`]. `plan`: a dry
/// run's answer. `reconcile`: the pass waits for a reconcile lap that began after it
/// did: take a reconcile step. None of those: call again, unless the run is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcWork {
    pub run: GcRun,
    pub sweep: Vec<StorePathHash>,
    pub list_after: Option<String>,
    pub plan: Option<GcPlan>,
    #[serde(default)]
    pub reconcile: bool,
}

/// `gc/swept`: these narinfos are deleted from R2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Swept {
    pub hashes: Vec<StorePathHash>,
    pub now: u64,
    /// The edge cache was purged of them; if not, their references are held.
    pub purged: bool,
}

/// One listed object. `points_to`: for debuginfo the NAR key it points into, for a
/// realisation the hash of its output path (read by the worker; none if unreadable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listed {
    pub key: String,
    pub uploaded: u64,
    pub points_to: Option<String>,
}

/// `gc/orphans`: a page of the bucket, keys in `(after, through]` (`through` none: to
/// the end). Decided only if the pass's cursor is still at `after`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanPage {
    pub after: String,
    pub through: Option<String>,
    pub objects: Vec<Listed>,
    pub now: u64,
}

/// The keys of an [`OrphanPage`] to delete now (their NARs marked as being deleted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Orphans {
    pub delete: Vec<String>,
    pub run: GcRun,
}

/// `logs/own`: a build log was uploaded; the index records it as its derivation's if a
/// path it holds names that derivation (only such logs go with their paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnLog {
    pub drv: String,
}

/// A request that carries only the time (`reconcile/step`, `tick`) or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct At {
    pub now: u64,
}

/// The answer to `tick` (the cron): what the object did in that request, and whether
/// it left work for its alarm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ticked {
    pub reconcile_steps: u64,
    pub gc: Option<GcRun>,
    pub more: bool,
}

/// `summary`: the landing page's [`crate::core::api::Summary`] as of `now`, with the
/// retention settings the worker holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryRequest {
    pub now: u64,
    pub retain_days: Option<u64>,
    pub budget_bytes: Option<u64>,
}

/// `gauges`: what `_nixflare/metrics` reports of the index (`crate::core::metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gauges {
    pub stats: crate::core::api::Stats,
    pub pins: u64,
    /// Publishes under way: reservations holding their references.
    pub reservations: u64,
    /// Operations asked of the index since it was created, by name and outcome.
    pub operations: Vec<OperationCount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationCount {
    pub op: String,
    /// `ok` or `error`.
    pub outcome: String,
    pub count: u64,
}
