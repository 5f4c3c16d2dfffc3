//! The index of what the cache holds: one Durable Object with SQLite storage
//! (`crate::edge::index`), written by publishes, deletes and the reconcile pass, never
//! read by the anonymous read path (which stays R2 only).
//!
//! Why a Durable Object and not D1 (docs/index.md has the numbers):
//! - one object runs one request at a time, so "check the references, then reserve the
//!   path" and "check nothing refers to it, then forget it" are atomic without locks;
//! - it is on the Free plan, needs no `wrangler d1 create` and no database id: the
//!   migration in wrangler.toml is all `wrangler deploy` and `wrangler dev` need;
//! - SQLite runs in the object's thread, next to the data: a batch query is one
//!   statement over a JSON array (`json_each`), with no 100-parameter limit as in D1.
//!
//! Where it stops: one object holds 10 GB (an estimated 7-10 million paths of ~10
//! references each; docs/index.md) and serialises every write; publishes are short (a few SQL
//! statements each), so it stays far from its ~1,000 requests a second.
//!
//! This module holds what the worker and the object say to each other (each message
//! once, rendered by `crate::core::json_write`), the schema, and the decisions that need
//! no storage. The worker-facing answers (`PathQueryAnswer`, `Stats`, ...) are in
//! `crate::core::api`.

use serde::{Deserialize, Serialize};

use crate::core::api::{GcPlan, GcRun, Pin};
use crate::core::gc::PinName;
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::{StorePathBaseName, StorePathHash};
use crate::core::token::{TokenId, VerifiedToken};

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

/// Most references the reconcile pass sends to the index in one request: bounds the
/// memory of one step whatever the narinfos it adopts look like.
pub const MAX_ADOPT_REFERENCES: usize = 20_000;

/// Keys one reconcile step lists (one R2 list page; a path has a narinfo and at most a
/// `.ls` at the top level). Every narinfo the index lacks costs one R2 GET, so a step
/// stays below the Free plan's 1,000 subrequests to Cloudflare services.
pub const RECONCILE_PAGE_KEYS: u32 = 250;

/// Reconcile steps one cron run takes: 3 x (1 list + up to 250 GETs + 3 index requests)
/// stays under the Free plan's 1,000 subrequests with room for the upload cleanup.
pub const RECONCILE_STEPS_PER_CRON: u32 = 3;

/// An index row younger than this (relative to the listing) may belong to a publish
/// that wrote R2 after the listing was taken: the reconcile pass never removes it.
pub const RECONCILE_MARGIN_MS: u64 = 60_000;

/// A reservation older than this belongs to a publish that died between its steps.
pub const STALE_RESERVATION_MS: u64 = 10 * 60_000;

/// A delete marker older than this belongs to a DELETE whose R2 delete never ran: the
/// reconcile pass may index the path again if its narinfo is still in the bucket.
pub const STALE_DELETE_MS: u64 = 60 * 60_000;

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
    /// Unix milliseconds: when the narinfo was published (for a path found by the
    /// reconcile pass, when R2 stored it).
    pub published_at: u64,
    /// Who published it; none for a path written behind the worker's back.
    pub token_id: Option<TokenId>,
    pub subject: Option<String>,
}

impl Entry {
    pub fn of(narinfo: &NarInfo, published_at: u64, token: Option<&VerifiedToken>) -> Self {
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
            nar: crate::core::nix::nar_file::NarFile::parse_url(&narinfo.url).map_or_else(
                || narinfo.url.clone(),
                |nar| crate::core::route::Route::Nar(nar).to_string(),
            ),
            file_size: narinfo.file_size.unwrap_or(0),
            nar_size: narinfo.nar_size,
            references,
            deriver: narinfo.deriver.as_ref().map(ToString::to_string),
            published_at,
            token_id: token.map(|t| t.id),
            subject: token.map(|t| t.subject.clone()),
        }
    }
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
    /// A delete of this very path is under way: try again once it is done.
    Deleting {
        deleting: crate::core::api::True,
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
}

/// The answer to [`Forget`]. `Forgotten` leaves a delete marker: until the R2 delete is
/// done no publish may count on the path, and for [`STALE_DELETE_MS`] after it no
/// narinfo of the path that R2 stored before the delete is adopted (a reader may have
/// fetched it just before).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum Forgot {
    Forgotten {
        forgotten: crate::core::api::True,
    },
    /// Paths (published or being published) that need it: at most [`MAX_LISTED`].
    Referenced {
        referrers: Vec<StorePathHash>,
    },
    /// A publish of this very path is under way: its commit would undo the delete.
    Publishing {
        publishing: crate::core::api::True,
    },
}

/// How many referrers or missing references an error message lists.
pub const MAX_LISTED: usize = 10;

/// `query`: which of `hashes` the index lacks; `upstreams` are the configured ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Query {
    pub hashes: Vec<StorePathHash>,
    pub upstreams: Vec<String>,
    pub now: u64,
}

/// `reconcile/page`: the narinfos one page of the bucket's top level holds, keys in
/// `(after, through]` (`through` none: to the end). Index rows in that range that the
/// page lacks, and older than `listed_at` by [`RECONCILE_MARGIN_MS`], are removed; the
/// answer lists the page's narinfos the index lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcilePage {
    pub after: String,
    pub through: Option<String>,
    pub listed_at: u64,
    pub narinfos: Vec<StorePathHash>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageChecked {
    pub unindexed: Vec<StorePathHash>,
    pub removed: u64,
}

/// `reconcile/advance`: records what the worker read for the unindexed narinfos (the
/// last of them: larger sets go ahead in [`Adopt`] batches), and moves the cursor from `after` to `through` (to the start, pass complete, when none)
/// only if it is still at `after`: two runs at once cannot skip a page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Advance {
    pub after: String,
    pub through: Option<String>,
    pub adopt: Vec<Entry>,
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

/// The answer to [`SetPin`]: the pin, or that the path is not in the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PinSet {
    Pinned { pin: Pin },
    NotCached { absent: crate::core::api::True },
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

/// `gc/step`: one bounded step of the pass under way, with the settings a new pass
/// starts with (milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcStep {
    /// A dry run: mark (nothing is deleted), then list what would go.
    pub dry_run: bool,
    /// The worker purges the edge cache of what it deletes. If not, a path whose
    /// referrer was just removed waits [`EDGE_HOLD_MS`](crate::core::gc::EDGE_HOLD_MS):
    /// the referrer's narinfo may still be served from the edge.
    pub purges: bool,
    /// Once the pass under way is done, start a new one only if its number would be at
    /// most this.
    pub start_up_to: u64,
    pub retain_ms: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub grace_ms: u64,
    pub now: u64,
}

/// The answer to [`GcStep`]: what the worker must do next. `sweep`: narinfos to delete
/// now, layer by layer (a layer only once the one before it is gone: nothing in a later
/// layer is referenced by anything left), then report them with [`Swept`]. `list_after`:
/// list the bucket after this key and send the page as an [`OrphanPage`]. `plan`: a dry
/// run's answer. None of those: call again, unless the run is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcWork {
    pub run: GcRun,
    pub sweep: Vec<Vec<StorePathHash>>,
    pub list_after: Option<String>,
    pub plan: Option<GcPlan>,
}

/// `gc/swept`: these narinfos are deleted from R2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Swept {
    pub hashes: Vec<StorePathHash>,
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

/// The schema, applied (idempotently) whenever the object starts. Hashes are the 32
/// nix32 characters; times Unix milliseconds.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS paths (
  hash TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  nar TEXT NOT NULL,
  file_size INTEGER NOT NULL,
  nar_size INTEGER NOT NULL,
  deriver TEXT,
  published_at INTEGER NOT NULL,
  token_id TEXT,
  subject TEXT,
  pushed_at INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS paths_by_time ON paths (published_at);
CREATE TABLE IF NOT EXISTS refs (
  referrer TEXT NOT NULL,
  reference TEXT NOT NULL,
  PRIMARY KEY (referrer, reference)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_reference ON refs (reference);
CREATE TABLE IF NOT EXISTS reservations (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  hash TEXT NOT NULL,
  entry TEXT NOT NULL,
  created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS reserved_refs (
  reservation INTEGER NOT NULL,
  reference TEXT NOT NULL,
  PRIMARY KEY (reservation, reference)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reserved_refs_by_reference ON reserved_refs (reference);
CREATE TABLE IF NOT EXISTS upstream (
  hash TEXT NOT NULL,
  cache TEXT NOT NULL,
  checked_at INTEGER NOT NULL,
  PRIMARY KEY (hash, cache)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deleting (
  hash TEXT PRIMARY KEY,
  at INTEGER NOT NULL,
  done INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
  key TEXT PRIMARY KEY,
  value
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS reservations_by_hash ON reservations (hash);
CREATE TABLE IF NOT EXISTS pins (
  name TEXT PRIMARY KEY,
  hash TEXT NOT NULL,
  base TEXT NOT NULL,
  pinned_at INTEGER NOT NULL,
  expires_at INTEGER,
  subject TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS pins_by_hash ON pins (hash);
CREATE TABLE IF NOT EXISTS removed (
  hash TEXT NOT NULL,
  nar TEXT NOT NULL,
  deriver TEXT,
  removed_at INTEGER NOT NULL,
  PRIMARY KEY (hash, nar)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS removed_by_nar ON removed (nar);
CREATE INDEX IF NOT EXISTS removed_by_deriver ON removed (deriver);
CREATE TABLE IF NOT EXISTS nar_deleting (
  nar TEXT PRIMARY KEY,
  at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_mark (
  hash TEXT PRIMARY KEY,
  keep INTEGER NOT NULL,
  expanded INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS gc_mark_frontier ON gc_mark (expanded, keep);
CREATE TABLE IF NOT EXISTS gc_batch (
  hash TEXT PRIMARY KEY,
  keep INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_hold (
  hash TEXT PRIMARY KEY,
  until INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_pending (
  hash TEXT PRIMARY KEY,
  layer INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gc_doomed (
  hash TEXT PRIMARY KEY,
  rule TEXT NOT NULL
) WITHOUT ROWID;
";

/// Run after [`SCHEMA`], each on its own, errors ignored: brings an index made by an
/// older worker up to the schema above (a column that exists already is an error).
pub const MIGRATIONS: &[&str] = &[
    "ALTER TABLE paths ADD COLUMN pushed_at INTEGER NOT NULL DEFAULT 0",
    "UPDATE paths SET pushed_at = published_at WHERE pushed_at = 0",
    "CREATE INDEX IF NOT EXISTS paths_by_nar ON paths (nar)",
    "CREATE INDEX IF NOT EXISTS paths_by_deriver ON paths (deriver)",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::json_write::to_string;

    const NARINFO: &str = "StorePath: /nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top\nURL: nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar.zst\nCompression: zstd\nFileHash: sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc\nFileSize: 7\nNarHash: sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc\nNarSize: 9\nReferences: 9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-leaf anfizv71z26rnrvkpdwsc1f5wwyd9kw6-middle\nDeriver: h15vw3d8vjq21wraq1p08xcw6jby7s0c-top.drv\n";

    fn narinfo() -> NarInfo {
        NarInfo::parse(NARINFO.as_bytes(), "/nix/store").unwrap()
    }

    #[test]
    fn an_entry_leaves_out_the_self_reference_and_sorts() {
        let entry = Entry::of(&narinfo(), 5, None);
        let refs: Vec<String> = entry.references.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            refs,
            [
                "anfizv71z26rnrvkpdwsc1f5wwyd9kw6",
                "pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys"
            ]
        );
        assert_eq!(entry.name, "top");
        assert_eq!(entry.file_size, 7);
        assert_eq!(entry.nar_size, 9);
        assert_eq!(
            entry.deriver.as_deref(),
            Some("h15vw3d8vjq21wraq1p08xcw6jby7s0c-top.drv")
        );
        assert!(entry.nar.starts_with("nar/0n9m"));
    }

    /// Every message the worker and the object exchange is written by the wasm's writer
    /// exactly as serde_json writes it, and reads back unchanged.
    #[test]
    fn messages_round_trip_through_both_writers() {
        let entry = Entry::of(&narinfo(), 5, None);
        let begin = Begin {
            entry: entry.clone(),
            upstreams: vec!["https://cache.nixos.org".into()],
            adopt: vec![entry.clone()],
            upstream_hits: vec![UpstreamHit {
                hash: entry.hash,
                cache: "https://cache.nixos.org".into(),
            }],
            now: 1,
        };
        fn check<T: Serialize + for<'de> Deserialize<'de> + PartialEq + core::fmt::Debug>(
            value: &T,
        ) {
            let ours = to_string(value).unwrap();
            assert_eq!(ours, serde_json::to_string(value).unwrap());
            assert_eq!(&serde_json::from_str::<T>(&ours).unwrap(), value);
        }
        check(&begin);
        check(&Begun::Reserved { reservation: 3 });
        check(&Finish {
            reservation: 3,
            now: 4,
            unchanged: true,
        });
        check(&Query {
            hashes: vec![entry.hash],
            upstreams: vec![],
            now: 5,
        });
        check(&Begun::Deleting {
            deleting: crate::core::api::True,
        });
        check(&Begun::Missing {
            missing: vec![entry.hash],
        });
        check(&Forgot::Forgotten {
            forgotten: crate::core::api::True,
        });
        check(&Forgot::Publishing {
            publishing: crate::core::api::True,
        });
        check(&Forgot::Referenced {
            referrers: vec![entry.hash],
        });
        check(&ReconcilePage {
            after: String::new(),
            through: None,
            listed_at: 1,
            narinfos: vec![entry.hash],
        });
        check(&Advance {
            after: "a".into(),
            through: Some("b".into()),
            adopt: vec![entry.clone()],
            now: 2,
        });
        for dry_run in [true, false] {
            check(&GcStep {
                dry_run,
                purges: !dry_run,
                start_up_to: 7,
                retain_ms: Some(1),
                budget_bytes: None,
                grace_ms: 3,
                now: 4,
            });
        }
        let run = GcRun {
            run: 1,
            phase: crate::core::api::GcPhase::Orphans,
            started_at: 2,
            finished_at: None,
            roots_since: Some(1),
            budget_bytes: Some(crate::core::gc::PINNED),
            grace_ms: 3,
            kept_paths: 4,
            kept_bytes: 5,
            over_budget: true,
            doomed_paths: 6,
            removed_paths: 7,
            removed_bytes: 8,
            spared_paths: 9,
            held_paths: 0,
            removed_objects: 10,
            listed_keys: 11,
        };
        let base: StorePathBaseName = "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top".parse().unwrap();
        check(&GcWork {
            run: run.clone(),
            sweep: vec![vec![entry.hash]],
            list_after: Some("k".into()),
            plan: Some(GcPlan {
                paths: vec![crate::core::api::GcCandidate {
                    store_path: base.clone(),
                    rule: crate::core::api::GcRule::Budget,
                    file_size: 1,
                    pushed_at: 2,
                }],
                path_count: 1,
                path_bytes: 1,
                in_grace: 0,
            }),
        });
        check(&Orphans {
            delete: vec!["nar/x".into()],
            run,
        });
        check(&OrphanPage {
            after: String::new(),
            through: None,
            objects: vec![Listed {
                key: "k".into(),
                uploaded: 1,
                points_to: Some("nar/x".into()),
            }],
            now: 2,
        });
        let pin = Pin {
            name: "release".parse().unwrap(),
            store_path: base.clone(),
            pinned_at: 1,
            expires_at: None,
            subject: "ci".into(),
        };
        check(&PinSet::Pinned { pin: pin.clone() });
        check(&PinSet::NotCached {
            absent: crate::core::api::True,
        });
        check(&crate::core::api::Pins { pins: vec![pin] });
        check(&SetPin {
            name: "release".parse().unwrap(),
            store_path: base,
            expires_at: Some(3),
            subject: "ci".into(),
            now: 1,
        });
        check(&Refresh {
            hashes: vec![entry.hash],
            now: 1,
        });
    }

    #[test]
    fn only_narinfo_keys_name_paths() {
        assert!(narinfo_key_hash("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.narinfo").is_some());
        assert!(narinfo_key_hash("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.ls").is_none());
        assert!(narinfo_key_hash("nix-cache-info").is_none());
        assert!(narinfo_key_hash("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo").is_none());
    }

    #[test]
    fn missing_references_are_named_by_their_store_paths() {
        let info = narinfo();
        let missing: Vec<StorePathHash> = info.references.iter().map(|r| *r.hash()).collect();
        let text = describe_missing(&missing[1..], &info);
        assert_eq!(
            text,
            "pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-leaf, anfizv71z26rnrvkpdwsc1f5wwyd9kw6-middle"
        );
        let many = vec![missing[1]; 12];
        assert!(describe_missing(&many, &info).ends_with(" and 2 more"));
    }
}
