//! PUT and DELETE of protocol files: verified, then stored. Nothing reaches R2 under a
//! protocol name before it has been checked (the rules are `crate::core::publish`).

use worker::{console_error, console_log, Data, Request, Response};

use super::auth::Guarded;
use futures_util::future::join_all;

use super::body::{json_body, reject_content_encoding, small_body, stream_body, BodyKind};
use super::bucket::R2;
use super::error::EdgeError;
use super::purge::EdgeCache;
use super::response::{self, Stored};
use super::store;
use super::upstream::Http;
use crate::core::api::{self, NarinfoBatch, NarinfoOutcome, NarinfoResult, NarinfosPublished};
use crate::core::credential::Credential;
use crate::core::index::ops::OwnLogOp;
use crate::core::index::passes::publish::BatchItem;
use crate::core::index::passes::{self, publish::Sources, EdgePurge, IndexCalls};
use crate::core::index::{Entry, OwnLog};
use crate::core::nix::nar_file::NarFile;
use crate::core::nix::store_path::StorePathHash;
use crate::core::publish::{
    self, CheckedNarinfo, SideFile, MAX_BATCH_BYTES, MAX_BATCH_REFERENCES, MAX_NARINFO_BYTES,
};
use crate::core::route::Route;
use crate::core::token::TokenId;

/// PUT of a protocol file (the core planned `Operation::Store` for this route).
pub async fn store(
    req: Request,
    route: &Route,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    let outcome = match route {
        Route::Nar(nar) => store_nar(&req, nar, cache).await?,
        Route::Narinfo(hash) => store_narinfo(req, route, hash, cache).await?,
        Route::Log(_) => store_log(&req, route, cache).await?,
        _ => match SideFile::of(route) {
            Some(kind) => store_side_file(req, route, &kind, cache).await?,
            None => return Err(EdgeError::NotFound),
        },
    };
    log_write("PUT", route, &cache.credential, &outcome);
    match outcome {
        Stored::Replaced => {
            edge.purge(&[route.to_string()]).await;
        }
        Stored::Created if route.kind().kept_for_private_reads() => {
            edge.created(&[route.to_string()]).await
        }
        _ => {}
    }
    outcome.into_response()
}

/// A NAR in one request. R2 hashes the stream and refuses bytes that do not match the
/// name: no hashing in wasm. One R2 operation: a write only if nothing is there (a NAR
/// is named by its SHA-256, so what is there is already these bytes).
async fn store_nar(req: &Request, nar: &NarFile, cache: &Guarded) -> Result<Stored, EdgeError> {
    let body = stream_body(req, cache.config.max_request_bytes, BodyKind::Nar)?;
    let key = Route::Nar(*nar).to_string();
    let created = cache
        .bucket
        .put(&key, Data::ReadableStream(body))
        .sha256(nar.file_hash.0.to_vec())
        .only_if(store::absent())
        .execute()
        .await
        .map_err(|err| {
            EdgeError::from_r2_put(err, "NAR bytes do not hash to the name in the URL")
        })?;
    Ok(match created {
        Some(_) => Stored::Created,
        None => Stored::Unchanged,
    })
}

/// A narinfo: checked by the core, its NAR present with the stated size, then stored
/// unless a different one is there.
async fn store_narinfo(
    mut req: Request,
    route: &Route,
    hash: &StorePathHash,
    cache: &Guarded,
) -> Result<Stored, EdgeError> {
    let bytes = small_body(&mut req, MAX_NARINFO_BYTES, BodyKind::Narinfo).await?;
    let checked = publish::check_narinfo(&bytes, hash, &cache.config)
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    nar_is_stored(&checked, cache).await?;
    // The references must be there (and stay there) before the narinfo is.
    let index = cache.index()?;
    let now = cache.now_ms();
    let entry = entry_of(&checked, now, cache);
    let put = || async { put_narinfo(&route.to_string(), bytes, &checked, cache).await };
    let bucket = R2(&cache.bucket);
    passes::publish::publish(
        &sources(&bucket, cache),
        &index,
        &checked.info,
        entry,
        now,
        put,
    )
    .await
}

/// POST `_nixflare/narinfos`: each narinfo checked, its NAR looked at, and stored as
/// [`store_narinfo`] does (`crate::core::publish::check_batch`), the index called once
/// to reserve and once to commit for the whole batch (`passes::publish::publish_batch`).
/// 200 with one result per narinfo.
pub async fn publish_batch(
    mut req: Request,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    if cache.config.max_batch_narinfos == 0 {
        // Switched off: answered as a worker without batches answers.
        return Err(EdgeError::NotFound);
    }
    let batch: NarinfoBatch =
        json_body(&mut req, MAX_BATCH_BYTES, "{\"narinfos\": [narinfo texts]}").await?;
    let most = cache.config.max_batch_narinfos as usize;
    if batch.narinfos.len() > most {
        return Err(EdgeError::TooLarge(format!(
            "at most {most} narinfos per batch"
        )));
    }
    let checks = publish::check_batch(&batch.narinfos, &cache.config);
    let references: usize = checks
        .iter()
        .filter_map(|(_, check)| check.as_ref().ok())
        .map(|checked| checked.info.references.len())
        .sum();
    if references > MAX_BATCH_REFERENCES {
        return Err(EdgeError::TooLarge(format!(
            "the narinfos of one batch may name at most {MAX_BATCH_REFERENCES} references ({references} here): send fewer"
        )));
    }
    let hashes: Vec<Option<StorePathHash>> = checks.iter().map(|(hash, _)| *hash).collect();
    // The NARs, one HEAD each, all at once.
    let stored_nars = join_all(checks.iter().map(|(_, check)| async move {
        match check {
            Ok(checked) => nar_is_stored(checked, cache).await,
            Err(why) => Err(EdgeError::BadRequest(why.clone())),
        }
    }))
    .await;
    let mut answers: Vec<Option<Result<Stored, EdgeError>>> = Vec::new();
    let mut items = Vec::new();
    let mut checked_items = Vec::new();
    let mut positions = Vec::new();
    let mut refused = Vec::new();
    let now = cache.now_ms();
    for (position, ((hash, check), nar)) in checks.into_iter().zip(stored_nars).enumerate() {
        match (check, nar) {
            (Ok(checked), Ok(())) => {
                items.push(BatchItem {
                    narinfo: checked.info.clone(),
                    entry: entry_of(&checked, now, cache),
                });
                checked_items.push(checked);
                positions.push(position);
                answers.push(None);
            }
            (_, Err(err)) => {
                refused.extend(hash);
                answers.push(Some(Err(err)));
            }
            (Err(why), Ok(())) => answers.push(Some(Err(EdgeError::BadRequest(why)))),
        }
    }
    let index = cache.index()?;
    let texts = &batch.narinfos;
    let put_wave = |wave: Vec<usize>| {
        let (checked_items, positions) = (&checked_items, &positions);
        async move {
            join_all(wave.into_iter().map(|i| {
                let key = Route::Narinfo(*checked_items[i].info.store_path.hash()).to_string();
                let bytes = texts[positions[i]].as_bytes().to_vec();
                async move { put_narinfo(&key, bytes, &checked_items[i], cache).await }
            }))
            .await
        }
    };
    let bucket = R2(&cache.bucket);
    let sources = sources(&bucket, cache);
    let published =
        passes::publish::publish_batch(&sources, &index, &items, &refused, now, put_wave).await;
    for (position, result) in positions.into_iter().zip(published) {
        answers[position] = Some(result);
    }
    let mut replaced = Vec::new();
    let mut created = Vec::new();
    let mut counts = [0usize; 4];
    let results = answers
        .into_iter()
        .zip(&hashes)
        .map(|(answer, hash)| {
            let answer = answer.unwrap_or(Err(EdgeError::NotFound));
            let (outcome, status, reason) = match answer {
                Ok(stored) => {
                    match (&stored, hash) {
                        (Stored::Replaced, Some(hash)) => {
                            replaced.push(Route::Narinfo(*hash).to_string())
                        }
                        (Stored::Created, Some(hash)) => {
                            created.push(Route::Narinfo(*hash).to_string())
                        }
                        _ => {}
                    }
                    let (outcome, status) = stored.batch_outcome();
                    (outcome, status, None)
                }
                Err(err) => {
                    let (status, reason) = err.status_and_reason();
                    if status >= 500 {
                        console_error!("a narinfo of a batch: {err}");
                    }
                    (NarinfoOutcome::Refused, status, Some(reason))
                }
            };
            counts[outcome as usize] += 1;
            NarinfoResult {
                outcome,
                status,
                reason,
            }
        })
        .collect();
    console_log!(
        "POST /_nixflare/narinfos by {}: {} created, {} unchanged, {} replaced, {} refused; {} index calls",
        cache.credential.subject,
        counts[NarinfoOutcome::Created as usize],
        counts[NarinfoOutcome::Unchanged as usize],
        counts[NarinfoOutcome::Replaced as usize],
        counts[NarinfoOutcome::Refused as usize],
        index.calls(),
    );
    if !replaced.is_empty() {
        edge.purge(&replaced).await;
    }
    edge.created(&created).await;
    response::json(200, api::render(&NarinfosPublished { results }), false)
}

/// The NAR a checked narinfo names is stored, with the size it states (one R2 HEAD).
async fn nar_is_stored(checked: &CheckedNarinfo, cache: &Guarded) -> Result<(), EdgeError> {
    let nar_key = Route::Nar(checked.nar).to_string();
    let nar = cache.bucket.head(&nar_key).await?.ok_or_else(|| {
        EdgeError::BadRequest(format!(
            "{nar_key} is not in the cache: upload the NAR first"
        ))
    })?;
    if checked.file_size != nar.size() {
        return Err(EdgeError::BadRequest(format!(
            "narinfo FileSize {} but the stored NAR has {} bytes",
            checked.file_size,
            nar.size()
        )));
    }
    Ok(())
}

/// What the index records of a narinfo this token publishes now.
fn entry_of(checked: &CheckedNarinfo, now: u64, cache: &Guarded) -> Entry {
    Entry {
        signed: checked.signed,
        ..Entry::of(&checked.info, now, Some(&cache.credential))
    }
}

fn sources<'a>(bucket: &'a R2<'a>, cache: &'a Guarded) -> Sources<'a, R2<'a>, Http> {
    Sources {
        bucket,
        upstreams: &Http,
        upstream_caches: &cache.config.upstream_caches,
        store_dir: &cache.config.store_dir,
    }
}

/// Stores a checked narinfo by the one rule for stored keys; whether R2 already held
/// these very bytes.
async fn put_narinfo(
    key: &str,
    bytes: Vec<u8>,
    checked: &CheckedNarinfo,
    cache: &Guarded,
) -> Result<(Stored, bool), EdgeError> {
    let supersedes = |old: &[u8]| publish::signed_replaces_unsigned(old, checked, &cache.config);
    let stored = store::put_small(&cache.bucket, key, bytes, &cache.credential, supersedes).await?;
    let unchanged = matches!(stored, Stored::Unchanged);
    Ok((stored, unchanged))
}

/// A build log, streamed into R2. The index hears of it: a log uploaded while a path
/// names its derivation goes with that path; any other log stays (docs/gc.md).
async fn store_log(req: &Request, route: &Route, cache: &Guarded) -> Result<Stored, EdgeError> {
    reject_content_encoding(req)?;
    let body = stream_body(req, cache.config.max_request_bytes, BodyKind::Log)?;
    let stored =
        store::put_stream(&cache.bucket, &route.to_string(), body, &cache.credential).await?;
    if let Route::Log(_) = route {
        let drv = route.to_string().trim_start_matches("log/").to_owned();
        // Best effort: a log the index did not hear of is kept, which is safe.
        if let Err(err) = cache.index()?.call::<OwnLogOp>(&OwnLog { drv }).await {
            console_error!("recording the owner of /{route} failed: {err}");
        }
    }
    Ok(stored)
}

/// A JSON side file (`.ls`, realisation, debuginfo): its shape, and a realisation's
/// signature, checked by the core before it is stored.
async fn store_side_file(
    mut req: Request,
    route: &Route,
    kind: &SideFile,
    cache: &Guarded,
) -> Result<Stored, EdgeError> {
    let bytes = small_body(&mut req, kind.max_bytes(), BodyKind::Json).await?;
    kind.check(&bytes, &cache.config)
        .map_err(|e| EdgeError::BadRequest(e.to_string()))?;
    store::put_small(
        &cache.bucket,
        &route.to_string(),
        bytes,
        &cache.credential,
        |_| false,
    )
    .await
}

/// PUT `nix-cache-info`: Nix sends one when it finds none; the worker's is configuration.
pub fn keep_cache_info(route: &Route, cache: &Guarded) -> Result<Response, EdgeError> {
    log_write("PUT", route, &cache.credential, &Stored::Unchanged);
    Stored::Unchanged.into_response()
}

/// PUT `_nixflare/revocations/<id>`: from now on the token is refused.
pub async fn revoke(id: TokenId, cache: &Guarded) -> Result<Response, EdgeError> {
    let route = Route::Revocation(id);
    cache
        .bucket
        .put(route.to_string(), Data::Empty)
        .execute()
        .await?;
    log_write("PUT", &route, &cache.credential, &Stored::Created);
    Stored::Created.into_response()
}

/// DELETE of a narinfo or NAR. A narinfo goes only when no other published (or
/// being published) path references it and no pin names it: the index says, and marks
/// it as being deleted so no publish counts on it meanwhile.
pub async fn delete(
    route: &Route,
    cache: &Guarded,
    edge: &EdgeCache,
) -> Result<Response, EdgeError> {
    match route {
        Route::Narinfo(hash) => {
            let index = cache.index()?;
            passes::publish::delete_narinfo(
                &R2(&cache.bucket),
                &index,
                edge,
                *hash,
                cache.now_ms(),
            )
            .await?;
        }
        _ => {
            cache.bucket.delete(route.to_string()).await?;
            edge.purge(&[route.to_string()]).await;
        }
    }
    log_write("DELETE", route, &cache.credential, &Stored::Deleted);
    Stored::Deleted.into_response()
}

/// Subject and path only: the token itself never reaches a log.
fn log_write(method: &str, route: &Route, by: &Credential, outcome: &Stored) {
    console_log!("{method} /{route} by {}: {outcome:?}", by.subject);
}
