//! The reconcile pass: makes the index match the bucket, which stays the truth of what is
//! served. One step lists one page of the bucket's top level (where the narinfos are),
//! removes index entries whose narinfo is gone, and indexes narinfos the index lacks
//! (written behind the worker's back: `nix copy --to s3://`, `wrangler r2 object put`,
//! or a publish whose index call failed). The cursor lives in the index and moves only
//! from where a step started, so steps may run from the cron and the CLI at once.

use worker::Bucket;

use super::closure::read_narinfo;
use super::error::EdgeError;
use super::index_client::IndexClient;
use crate::core::api::ReconcileStep;
use crate::core::index::{
    narinfo_key_hash, Adopt, Advance, ReconcilePage, MAX_ADOPT_REFERENCES, RECONCILE_PAGE_KEYS,
};

/// One step of the pass.
pub async fn step(
    bucket: &Bucket,
    index: &IndexClient,
    store_dir: &str,
    now: u64,
) -> Result<ReconcileStep, EdgeError> {
    let after = index.cursor().await?.after;
    let mut list = bucket.list().delimiter("/").limit(RECONCILE_PAGE_KEYS);
    if !after.is_empty() {
        list = list.start_after(after.clone());
    }
    let page = list.execute().await?;
    let objects = page.objects();
    let keys: Vec<String> = objects.iter().map(|o| o.key()).collect();
    let through = match (page.truncated(), keys.last()) {
        (false, _) => None,
        (true, Some(last)) => Some(last.clone()),
        (true, None) => {
            return Err(EdgeError::Index(
                "a truncated bucket listing held no keys".into(),
            ))
        }
    };
    let narinfos = keys
        .iter()
        .filter_map(|key| narinfo_key_hash(key))
        .collect();
    let checked = index
        .reconcile_page(&ReconcilePage {
            after: after.clone(),
            through: through.clone(),
            listed_at: now,
            narinfos,
        })
        .await?;
    let mut adopt = Vec::new();
    let mut references = 0;
    let mut indexed = 0;
    let mut unreadable = 0;
    for hash in &checked.unindexed {
        match read_narinfo(bucket, hash, store_dir).await? {
            Some(entry) => {
                references += entry.references.len();
                indexed += 1;
                adopt.push(entry);
            }
            // Gone since the listing, or not a narinfo this cache can read.
            None => unreadable += 1,
        }
        // Narinfos with thousands of references each: send them on in batches, so
        // neither this step nor one request to the index grows without bound.
        if references > MAX_ADOPT_REFERENCES {
            let entries = std::mem::take(&mut adopt);
            index.adopt(&Adopt { entries, now }).await?;
            references = 0;
        }
    }
    let cursor = index
        .advance(&Advance {
            after,
            through,
            adopt,
            now,
        })
        .await?;
    Ok(ReconcileStep {
        listed: keys.len() as u64,
        indexed,
        removed: checked.removed,
        unreadable,
        pass_complete: cursor.moved && cursor.after.is_empty(),
        after: cursor.after,
    })
}
