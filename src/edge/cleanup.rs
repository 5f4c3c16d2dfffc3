//! The hourly cron: aborts multipart uploads their client abandoned and removes staging
//! objects a completion left behind when it died half-way.

use worker::{console_log, Bucket};

use super::error::EdgeError;
use crate::core::config::CacheConfig;
use crate::core::multipart::{parse_pending_key, staging_key, PENDING_PREFIX, STAGING_PREFIX};

/// Aborts uploads whose marker (refreshed by every part) is older than the configured
/// age, and deletes staging objects as old. Every key is one upload's own, so nothing
/// another upload uses can be deleted; an upload that sends a part in the moment between
/// the listing and the abort loses it, and its client starts the upload again.
pub async fn abandoned_uploads(
    bucket: &Bucket,
    config: &CacheConfig,
    now_ms: u64,
) -> Result<(), EdgeError> {
    let now_ms = now_ms.saturating_add(config.test_clock_offset_seconds.saturating_mul(1000));
    let cutoff = now_ms.saturating_sub(config.abandoned_upload_seconds.saturating_mul(1000));
    let mut aborted = 0;
    for marker in list_older_than(bucket, PENDING_PREFIX, cutoff).await? {
        if let Some((nar, id)) = parse_pending_key(&marker) {
            // Already completed or expired in R2: nothing to abort, the marker still goes.
            if let Ok(upload) = bucket.resume_multipart_upload(staging_key(&nar, &id), id.r2()) {
                let _ = upload.abort().await;
            }
        }
        bucket.delete(&marker).await?;
        aborted += 1;
    }
    let staged = list_older_than(bucket, STAGING_PREFIX, cutoff).await?;
    for key in &staged {
        bucket.delete(key).await?;
    }
    console_log!(
        "cleanup: aborted {aborted} abandoned uploads, removed {} staging objects",
        staged.len()
    );
    Ok(())
}

/// Keys under `prefix` uploaded before `cutoff_ms`, over every page of the listing.
async fn list_older_than(
    bucket: &Bucket,
    prefix: &str,
    cutoff_ms: u64,
) -> Result<Vec<String>, EdgeError> {
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let mut list = bucket.list().prefix(prefix);
        if let Some(cursor) = cursor.take() {
            list = list.cursor(cursor);
        }
        let page = list.execute().await?;
        for object in page.objects() {
            if object.uploaded().as_millis() < cutoff_ms {
                keys.push(object.key());
            }
        }
        match (page.truncated(), page.cursor()) {
            (true, Some(next)) => cursor = Some(next),
            _ => return Ok(keys),
        }
    }
}
