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

use core::fmt;
use core::str::FromStr;

use thiserror::Error;

use crate::core::nix::store_path::StorePathHash;

/// The mark of a pinned path: above every push time (in milliseconds), and exact in a
/// JSON number.
pub const PINNED: u64 = (1 << 53) - 1;

/// How long a path stays after a path referring to it was removed, when the edge cache
/// could not be purged: a narinfo lives a day there (`Kind::Narinfo`'s Cache-Control),
/// and a client that still gets the referrer must still find its references.
pub const EDGE_HOLD_MS: u64 = 25 * 3_600_000;

/// Paths one seed step reads.
pub const SEED_PAGE: u64 = 2000;
/// Marked paths one mark step follows the references of.
pub const MARK_BATCH: u64 = 1000;
/// Most paths one sweep step forgets (one R2 delete per layer of them).
pub const SWEEP_BATCH: u64 = 500;
/// Keys one orphan step lists (one R2 list page).
pub const ORPHAN_PAGE_KEYS: u32 = 1000;
/// Requests to the index one request (or one cron run) spends on a pass: each step is
/// one, plus one R2 delete or list; well inside the Free plan's 1,000 subrequests.
pub const STEPS_PER_REQUEST: u32 = 40;
/// Side files read per orphan step to learn what they belong to (debuginfo,
/// realisations): one R2 GET each.
pub const MAX_SIDE_FILE_READS: usize = 200;
/// Paths a dry run lists (it counts them all).
pub const MAX_PLANNED: u64 = 1000;

/// The name of a pin: what `nixflare pin add NAME` moves from one path to the next.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PinName(String);

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("a pin name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")]
pub struct BadPinName;

impl PinName {
    pub fn parse(text: &str) -> Option<PinName> {
        let valid = (1..=64).contains(&text.len())
            && !text.starts_with('.')
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        valid.then(|| PinName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PinName {
    type Err = BadPinName;
    fn from_str(s: &str) -> Result<Self, BadPinName> {
        PinName::parse(s).ok_or(BadPinName)
    }
}

impl fmt::Display for PinName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

crate::core::serde_via_text!(PinName);

/// Where the budget cuts: `marks` are (mark, bytes of the paths holding it), newest
/// mark first. Keeps the longest run of newest marks whose bytes fit `budget`; pinned
/// paths are always kept, even past it. Returns the lowest mark kept (`None`: nothing
/// needs to go) and the bytes kept.
pub fn budget_cut(marks: &[(u64, u64)], budget: Option<u64>) -> (Option<u64>, u64) {
    let total: u64 = marks.iter().map(|&(_, bytes)| bytes).sum();
    let Some(budget) = budget else {
        return (None, total);
    };
    if total <= budget {
        return (None, total);
    }
    let mut kept = 0u64;
    let mut lowest = PINNED;
    for &(mark, bytes) in marks {
        let pinned = mark >= PINNED;
        if !pinned && kept.saturating_add(bytes) > budget {
            break;
        }
        kept = kept.saturating_add(bytes);
        lowest = mark;
    }
    (Some(lowest), kept)
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
    fn the_budget_keeps_the_newest_marks_that_fit() {
        let marks = [(PINNED, 50), (30, 20), (20, 20), (10, 20)];
        assert_eq!(budget_cut(&marks, None), (None, 110));
        assert_eq!(budget_cut(&marks, Some(110)), (None, 110));
        assert_eq!(budget_cut(&marks, Some(109)), (Some(20), 90));
        assert_eq!(budget_cut(&marks, Some(70)), (Some(30), 70));
        // Pins stay even past the budget; nothing else does.
        assert_eq!(budget_cut(&marks, Some(10)), (Some(PINNED), 50));
        assert_eq!(budget_cut(&[(5, 10)], Some(9)), (Some(PINNED), 0));
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
    fn pin_names_are_plain() {
        assert!(PinName::parse("release-24.05_x").is_some());
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(PinName::parse(bad).is_none(), "{bad:?}");
        }
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
