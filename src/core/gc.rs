//! Retention and garbage collection: the decisions, with no storage (docs/gc.md).
//!
//! A pass runs in phases, each a series of bounded steps the index's Durable Object
//! takes one request at a time, so a pass fits any platform limit and resumes where it
//! stopped:
//!
//! 1. **seed**: every path pushed within `RETAIN_DAYS` is a root, marked with its push
//!    time; every live pin marks its path with [`PINNED`].
//! 2. **mark**: marks flow down the references; a path keeps the newest mark that
//!    reaches it (the push time of the newest root whose closure holds it).
//! 3. **budget**: with `MAX_CACHE_BYTES`, the oldest marks are dropped until the kept
//!    closures fit ([`budget_cut`]); what is left unmarked, or marked below the cut, is
//!    doomed.
//! 4. **sweep**: doomed paths nothing refers to any more are forgotten by the index and
//!    their narinfos deleted, top of each closure first, each checked at that moment
//!    (a push, a publish that references it or a pin since the mark saves it).
//! 5. **orphans**: a listing of the bucket finds NARs nothing references, side files of
//!    removed paths and leftovers of uploads, once older than the grace period
//!    ([`orphan_kind`]), so an upload in flight and a client that still holds a
//!    removed narinfo (the edge cache keeps it up to a day) never miss a NAR.

use serde::{Deserialize, Serialize};

use crate::core::nix::store_path::StorePathHash;

/// The mark of a pinned path: above every root's mark, and exact in a JSON number.
pub const PINNED: u64 = (1 << 53) - 1;

/// A root's mark is its push time (milliseconds) times this, plus ten bits of its
/// hash: the budget weighs roots one by one (paths pushed in one request, or adopted in
/// one millisecond, are still separate roots), and ordering by mark is ordering by push
/// time. Push times up to the year 2250 stay below [`PINNED`].
pub const MARK_SCALE: u64 = 1024;

/// Margin on top of an edge lifetime, for clocks and the edge's own delays.
pub const EDGE_MARGIN_MS: u64 = 3_600_000;

/// How long a path stays after a path referring to it was removed, when the edge cache
/// could not be purged: a narinfo lives [`METADATA_MAX_AGE_SECS`] there, and a client that
/// still gets the referrer must still find its references. Also the shortest grace
/// period between a narinfo's removal and its NAR's (`crate::core::config`).
///
/// [`METADATA_MAX_AGE_SECS`]: crate::core::route::METADATA_MAX_AGE_SECS
pub const EDGE_HOLD_MS: u64 = crate::core::route::METADATA_MAX_AGE_SECS * 1000 + EDGE_MARGIN_MS;

/// Milliseconds in the units of the retention settings.
pub const DAY_MS: u64 = 86_400_000;
pub const HOUR_MS: u64 = 3_600_000;

/// The retention settings a GC step runs under (milliseconds, bytes), from the
/// worker's configuration at that moment. A pass under way with other settings is
/// started again under these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    pub retain_ms: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub grace_ms: u64,
}

/// Paths one seed step reads.
pub const SEED_PAGE: u64 = 2000;
/// Marked paths one mark step follows the references of (fewer if their references
/// pass [`MAX_ROWS_PER_STEP`]).
pub const MARK_BATCH: u64 = 1000;
/// Most paths one sweep step forgets (fewer if their references pass
/// [`MAX_ROWS_PER_STEP`]): one R2 delete.
pub const SWEEP_BATCH: u64 = 500;
/// Most reference rows one mark or sweep step reads or writes: a step's work is
/// bounded by the rows it touches, not by the paths (a path may have 10,000
/// references). A path with more than this still goes alone in its step.
pub const MAX_ROWS_PER_STEP: u64 = 20_000;
/// Keys one orphan step lists (one R2 list page).
pub const ORPHAN_PAGE_KEYS: u32 = 1000;
/// Requests to the index one worker request (`nixflare gc`) spends on a pass: each step
/// is one, plus at most one R2 list or delete and the reads of side files.
pub const STEPS_PER_REQUEST: u32 = 40;
/// Side files read per orphan step to learn what they belong to (debuginfo,
/// realisations): one R2 GET each, within what the invocation has left.
pub const MAX_SIDE_FILE_READS: usize = 40;
/// Paths a dry run lists (it counts them all).
pub const MAX_PLANNED: u64 = 1000;

/// What the budget keeps and drops.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BudgetCut {
    /// Marks whose paths go (rule `budget`), unless a kept mark reaches them.
    pub dropped: Vec<u64>,
    /// NAR bytes the kept marks hold.
    pub kept_bytes: u64,
}

/// The budget's decision. `marks` are (mark, NAR bytes first reached by it), newest
/// first; each unpinned mark is one root (see [`MARK_SCALE`]). Pins are always kept,
/// even past the budget. Then roots are kept newest first, each if its closure fits in
/// what the budget has left; one that does not fit goes, and older ones that still fit
/// are kept. So the newest roots win, and nothing a root brings (a huge push, a path
/// refreshed on purpose, a closure sized to fill the budget) makes the cache keep less
/// than what fits beside it.
pub fn budget_cut(marks: &[(u64, u64)], budget: Option<u64>) -> BudgetCut {
    let total = marks
        .iter()
        .fold(0u64, |sum, &(_, bytes)| sum.saturating_add(bytes));
    let Some(budget) = budget else {
        return BudgetCut {
            dropped: Vec::new(),
            kept_bytes: total,
        };
    };
    let mut cut = BudgetCut::default();
    for &(mark, bytes) in marks {
        if mark >= PINNED || cut.kept_bytes.saturating_add(bytes) <= budget {
            cut.kept_bytes = cut.kept_bytes.saturating_add(bytes);
        } else {
            cut.dropped.push(mark);
        }
    }
    cut
}

/// What a bucket key is to the orphan step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanKind {
    /// `nar/…`: goes when no path (published or being published) uses it.
    Nar,
    /// `<hash>.ls`: goes when its path is not in the cache.
    Listing(StorePathHash),
    /// `log/<drv>`: goes when a removed path had this deriver and no path left has.
    Log(String),
    /// `debuginfo/…`: goes when the NAR it points into is unused; the worker reads it.
    DebugInfo,
    /// `realisations/…`, `build-trace-v2/…`: go when their output path was removed; the
    /// worker reads them.
    Realisation,
    /// Narinfos (the sweep's), the worker's own keys (the upload cleanup's), anything
    /// else: never an orphan.
    Keep,
}

pub fn orphan_kind(key: &str) -> OrphanKind {
    use crate::core::route::Route;
    match Route::parse(&format!("/{key}")) {
        // Only keys that are their route's canonical spelling: anything else was not
        // written by this worker and is left alone.
        Some(route) if route.to_string() == key => match route {
            Route::Nar(_) => OrphanKind::Nar,
            Route::Listing(hash) => OrphanKind::Listing(hash),
            Route::Log(_) => OrphanKind::Log(key.trim_start_matches("log/").to_owned()),
            Route::DebugInfo(_) => OrphanKind::DebugInfo,
            Route::Realisation { .. } | Route::BuildTrace { .. } => OrphanKind::Realisation,
            _ => OrphanKind::Keep,
        },
        _ => OrphanKind::Keep,
    }
}

/// What a side file the orphan step read points at: for debuginfo the key of the NAR it
/// points into, for a realisation the hash of its output path. None: unreadable (it
/// stays).
pub fn side_file_target(kind: &OrphanKind, bytes: &[u8]) -> Option<String> {
    use crate::core::json_read::parse;
    use crate::core::nix::nar_file::NarFile;
    use crate::core::nix::store_path::StorePathBaseName;
    let json = parse(bytes).ok()?;
    match kind {
        OrphanKind::DebugInfo => {
            let archive = json.get("archive")?.as_str()?.strip_prefix("../")?;
            NarFile::parse_url(archive).map(|nar| crate::core::route::Route::Nar(nar).to_string())
        }
        OrphanKind::Realisation => {
            // Legacy and v1 realisations name it at the top, build-trace-v2 under "value".
            let out = json
                .get("outPath")
                .or_else(|| json.get("value")?.get("outPath"))?;
            let base: StorePathBaseName = out.as_str()?.parse().ok()?;
            Some(base.hash().to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_the_newest_roots_that_fit() {
        let marks = [(PINNED, 50), (30, 20), (20, 20), (10, 20)];
        let cut = |budget| {
            let c = budget_cut(&marks, budget);
            (c.dropped, c.kept_bytes)
        };
        assert_eq!(cut(None), (vec![], 110));
        assert_eq!(cut(Some(110)), (vec![], 110));
        assert_eq!(cut(Some(109)), (vec![10], 90));
        assert_eq!(cut(Some(70)), (vec![20, 10], 70));
        // Pins stay even past the budget; nothing else does.
        assert_eq!(cut(Some(10)), (vec![30, 20, 10], 50));
        let lone = budget_cut(&[(5, 10)], Some(9));
        assert_eq!((lone.dropped, lone.kept_bytes), (vec![5], 0));
    }

    #[test]
    fn a_root_that_does_not_fit_goes_alone() {
        // The newest root (a huge push, or one path refreshed on purpose) holds more than
        // the whole budget: it goes, the older roots that fit stay.
        let marks = [(40, 500), (30, 20), (20, 20), (10, 20)];
        let cut = budget_cut(&marks, Some(50));
        assert_eq!(cut.dropped, vec![40, 10]);
        assert_eq!(cut.kept_bytes, 40);
        // A closure sized to just fit the budget, behind a tiny newer root: it goes,
        // and the older roots that fit beside the tiny one stay.
        let cut = budget_cut(&[(50, 1), (40, 100), (30, 20), (20, 20)], Some(100));
        assert_eq!(cut.dropped, vec![40]);
        assert_eq!(cut.kept_bytes, 41);
    }

    #[test]
    fn side_files_name_what_they_belong_to() {
        let nar = "0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar.xz";
        let pointer = format!(r#"{{"archive":"../nar/{nar}","member":"lib/x.debug"}}"#);
        assert_eq!(
            side_file_target(&OrphanKind::DebugInfo, pointer.as_bytes()),
            Some(format!("nar/{nar}"))
        );
        let out = "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top";
        for realisation in [
            format!(r#"{{"id":"x","outPath":"{out}","signatures":[]}}"#),
            format!(r#"{{"key":{{}},"value":{{"outPath":"{out}"}}}}"#),
        ] {
            assert_eq!(
                side_file_target(&OrphanKind::Realisation, realisation.as_bytes()).as_deref(),
                Some(&out[..32])
            );
        }
        assert_eq!(side_file_target(&OrphanKind::Realisation, b"{}"), None);
        assert_eq!(side_file_target(&OrphanKind::DebugInfo, b"not json"), None);
    }

    #[test]
    fn orphans_are_only_keys_this_worker_writes() {
        assert_eq!(
            orphan_kind("nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar.zst"),
            OrphanKind::Nar
        );
        assert!(matches!(
            orphan_kind("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.ls"),
            OrphanKind::Listing(_)
        ));
        assert_eq!(
            orphan_kind("log/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top.drv"),
            OrphanKind::Log("9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-top.drv".into())
        );
        assert_eq!(
            orphan_kind("debuginfo/0123456789abcdef"),
            OrphanKind::DebugInfo
        );
        for keep in [
            "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7.narinfo",
            "nix-cache-info",
            "_nixflare/revocations/0123456789abcdef0123456789abcdef",
            "_nixflare/uploads/nar/0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc.nar.zst",
            "secret.txt",
            "nar/secret.txt",
        ] {
            assert_eq!(orphan_kind(keep), OrphanKind::Keep, "{keep}");
        }
    }
}
