//! One step of the reconcile lap: makes the index match the bucket, which stays the
//! truth of what is served. A step lists one page of the bucket's top level (where the
//! narinfos are), removes index entries whose narinfo is gone, and indexes narinfos the
//! index lacks (written behind the worker's back: `nix copy --to s3://`, `rclone`,
//! `wrangler r2 object put`; or a publish whose index call failed). The cursor lives in
//! the index and moves only from where a step started, so steps may run from several
//! places at once. A lap that went round completely tells the GC that every narinfo the
//! bucket held when it began is known (`ReconcileState::complete_lap_started_at`).
//!
//! Cost: one R2 list and one R2 GET per narinfo the index lacks, as many as the
//! budget allows (the page then ends at the last one read), and three or four index
//! calls (more for narinfos with very many references).

use super::{Bucket, Budget, IndexCalls, PassError};
use crate::core::api::{self, ReconcileStep};
use crate::core::index::ops::{AdoptOp, AdvanceOp, CursorOp, PageOp};
use crate::core::index::{
    lenient_nar_key, narinfo_key_hash, Adopt, Advance, Entry, ReconcilePage, Unreadable,
    MAX_ADOPT_REFERENCES, RECONCILE_PAGE_KEYS,
};
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;
use crate::core::publish::MAX_NARINFO_BYTES;
use crate::core::route::Route;

/// What reading a narinfo from the bucket found.
pub enum Read {
    Entry(Entry),
    Unreadable(Unreadable),
    Gone,
}

/// The narinfo stored under `hash`, as the index records it. One R2 GET.
pub async fn read_narinfo<B: Bucket>(
    bucket: &B,
    hash: &StorePathHash,
    store_dir: &str,
) -> Result<Read, PassError> {
    let Some(object) = bucket
        .get(&Route::Narinfo(*hash).to_string(), MAX_NARINFO_BYTES)
        .await?
    else {
        return Ok(Read::Gone);
    };
    let unreadable = |nar| Read::Unreadable(Unreadable { hash: *hash, nar });
    let Some(bytes) = object.bytes else {
        return Ok(unreadable(None));
    };
    Ok(match NarInfo::parse(&bytes, store_dir) {
        Ok(info) if info.store_path.hash() == hash => {
            Read::Entry(Entry::of(&info, object.uploaded, None))
        }
        _ => unreadable(lenient_nar_key(&bytes)),
    })
}

/// The index calls one step makes at least (cursor, page, advance) and the R2
/// operations (a list and a GET): a step is not begun with less.
pub fn minimum_cost(index_cost: u32) -> u32 {
    3 * index_cost + 2
}

/// One step of the lap; `None` if the budget does not allow one.
pub async fn step<B: Bucket, I: IndexCalls>(
    bucket: &B,
    index: &I,
    store_dir: &str,
    now: u64,
    budget: &mut Budget,
) -> Result<Option<ReconcileStep>, PassError> {
    let cost = index.cost();
    if !budget.take(minimum_cost(cost)) {
        return Ok(None);
    }
    let after = index.call::<CursorOp>(&api::True).await?.after;
    let page = bucket.list(&after, RECONCILE_PAGE_KEYS, true).await?;
    let listed_through = match (page.truncated, page.objects.last()) {
        (false, _) => None,
        (true, Some(last)) => Some(last.key.clone()),
        (true, None) => {
            return Err(PassError::Storage(super::StorageError(
                "a truncated bucket listing held no keys".into(),
            )))
        }
    };
    let narinfos: Vec<(String, StorePathHash, u64)> = page
        .objects
        .iter()
        .filter_map(|o| narinfo_key_hash(&o.key).map(|hash| (o.key.clone(), hash, o.uploaded)))
        .collect();
    let checked = index
        .call::<PageOp>(&ReconcilePage {
            after: after.clone(),
            through: listed_through.clone(),
            listed_at: now,
            narinfos: narinfos.iter().map(|(_, hash, _)| *hash).collect(),
            uploaded: narinfos.iter().map(|(_, _, uploaded)| *uploaded).collect(),
        })
        .await?;
    let mut through = listed_through;
    let mut adopt = Vec::new();
    let mut unreadable = Vec::new();
    let (mut references, mut indexed, mut unread) = (0, 0, 0);
    // One GET was paid for with the step; the rest as the budget allows.
    let mut paid = 1;
    for (key, hash, _) in narinfos
        .iter()
        .filter(|(_, h, _)| checked.unindexed.contains(h))
    {
        if paid == 0 && !budget.take(1) {
            // Out of budget: the page ends before this narinfo, the next step reads it.
            through = Some(previous_key(&page.objects, key));
            break;
        }
        paid = 0;
        match read_narinfo(bucket, hash, store_dir).await? {
            Read::Entry(entry) => {
                references += entry.references.len();
                indexed += 1;
                adopt.push(entry);
            }
            Read::Unreadable(found) => {
                unread += 1;
                unreadable.push(found);
            }
            // Deleted since the listing.
            Read::Gone => {}
        }
        // Narinfos with thousands of references each: send them on in batches, so
        // neither this step nor one request to the index grows without bound.
        if references > MAX_ADOPT_REFERENCES && budget.take(cost) {
            let entries = std::mem::take(&mut adopt);
            index.call::<AdoptOp>(&Adopt { entries, now }).await?;
            references = 0;
        }
    }
    let cursor = index
        .call::<AdvanceOp>(&Advance {
            after: after.clone(),
            through: through.clone(),
            adopt,
            unreadable,
            listed_at: now,
            now,
        })
        .await?;
    let listed = page
        .objects
        .iter()
        .take_while(|o| through.as_ref().is_none_or(|t| o.key <= *t))
        .count();
    Ok(Some(ReconcileStep {
        listed: listed as u64,
        indexed,
        removed: checked.removed,
        unreadable: unread,
        pass_complete: cursor.moved && cursor.after.is_empty(),
        after: cursor.after,
    }))
}

/// The key listed just before `key` ("" if it is the first): a page cut there holds
/// everything before it.
fn previous_key(objects: &[super::Object], key: &str) -> String {
    objects
        .iter()
        .take_while(|o| o.key.as_str() < key)
        .last()
        .map(|o| o.key.clone())
        .unwrap_or_default()
}
