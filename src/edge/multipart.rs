//! Multipart NAR uploads (protocol and rules in `crate::core::multipart`, messages in
//! `crate::core::api`): one function per step.
//!
//! Part bodies stream from the request into R2 and the assembled object streams from
//! R2 back into R2: no NAR byte enters wasm. Completion publishes the NAR with one PUT
//! that R2 verifies against the SHA-256 in its name (as a single-request NAR PUT is).

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::{console_log, Bucket, Data, Request, Response, ResponseBody, UploadedPart};

use super::auth::Guarded;
use super::body::{small_body, stream_body, BodyKind};
use super::error::EdgeError;
use super::response::{json, Stored};
use crate::core::api::{render, PartUploaded, True, UploadCompleted, UploadCreated};
use crate::core::multipart::{
    parse_part_list, pending_key, staging_key, staging_key_of_nonce, Action, UploadId,
    MAX_OBJECT_BYTES, MAX_PART_LIST_BYTES, PENDING_PREFIX,
};
use crate::core::nix::hash::Sha256;
use crate::core::nix::nar_file::NarFile;
use crate::core::route::Route;

pub async fn handle(
    req: Request,
    nar: NarFile,
    action: Action,
    cache: &Guarded,
) -> Result<Response, EdgeError> {
    match action {
        Action::Create => create(&nar, cache).await,
        Action::UploadPart { id, number } => upload_part(&req, &nar, &id, number, cache).await,
        Action::Complete { id } => complete(req, &nar, &id, cache).await,
        Action::Abort { id } => abort(&nar, &id, cache).await,
    }
}

async fn create(nar: &NarFile, cache: &Guarded) -> Result<Response, EdgeError> {
    let nar_key = Route::Nar(*nar).to_string();
    if cache.bucket.head(&nar_key).await?.is_some() {
        return json(
            200,
            render(&UploadCreated::Present { present: True }),
            false,
        );
    }
    refuse_past_open_limit(&cache.bucket, cache.config.max_open_uploads).await?;
    let nonce = upload_nonce()?;
    let upload = cache
        .bucket
        .create_multipart_upload(staging_key_of_nonce(nar, &nonce))
        .execute()
        .await?;
    let id = UploadId::new(nonce, &upload.upload_id().await).map_err(|_| {
        EdgeError::Runtime(worker::Error::RustError(
            "R2 gave an unusable upload id".into(),
        ))
    })?;
    cache
        .bucket
        .put(pending_key(nar, &id), Data::Empty)
        .execute()
        .await?;
    console_log!(
        "multipart /{nar_key} started by {}",
        cache.credential.subject
    );
    let started = UploadCreated::Started {
        upload_id: id,
        max_request_bytes: cache.config.max_request_bytes,
    };
    json(201, render(&started), false)
}

/// One list call of at most `limit` markers: at the limit, no new upload.
async fn refuse_past_open_limit(bucket: &Bucket, limit: u32) -> Result<(), EdgeError> {
    let open = bucket
        .list()
        .prefix(PENDING_PREFIX)
        .limit(limit)
        .execute()
        .await?;
    match open.objects().len() < limit as usize {
        true => Ok(()),
        false => Err(EdgeError::TooMany(format!(
            "{limit} multipart uploads are open; complete or abort some, or wait for the hourly cleanup"
        ))),
    }
}

async fn upload_part(
    req: &Request,
    nar: &NarFile,
    id: &UploadId,
    number: u16,
    cache: &Guarded,
) -> Result<Response, EdgeError> {
    let body = stream_body(req, cache.config.max_request_bytes, BodyKind::Part)?;
    let upload = cache
        .bucket
        .resume_multipart_upload(staging_key(nar, id), id.r2())?;
    let part = upload
        .upload_part(number, Data::ReadableStream(body))
        .await
        .map_err(refused)?;
    // The marker's time is the upload's last activity: the cron ages it from there.
    cache
        .bucket
        .put(pending_key(nar, id), Data::Empty)
        .execute()
        .await?;
    let receipt = PartUploaded {
        part_number: number,
        etag: part.etag(),
    };
    json(200, render(&receipt), false)
}

async fn complete(
    mut req: Request,
    nar: &NarFile,
    id: &UploadId,
    cache: &Guarded,
) -> Result<Response, EdgeError> {
    let list = small_body(&mut req, MAX_PART_LIST_BYTES, BodyKind::PartList).await?;
    let list = core::str::from_utf8(&list)
        .map_err(|_| EdgeError::BadRequest("part list is not UTF-8".into()))?;
    let parts = parse_part_list(list)?;
    let (bucket, staging) = (&cache.bucket, staging_key(nar, id));
    let nar_key = Route::Nar(*nar).to_string();
    let upload = bucket.resume_multipart_upload(&staging, id.r2())?;
    if bucket.head(&nar_key).await?.is_some() {
        // Someone else published these bytes meanwhile: drop ours.
        let _ = upload.abort().await;
        bucket.delete(pending_key(nar, id)).await?;
        return json(200, render(&UploadCompleted { created: false }), false);
    }
    let receipts = parts
        .into_iter()
        .map(|p| UploadedPart::new(p.number, p.etag));
    upload.complete(receipts).await.map_err(refused)?;
    bucket.delete(pending_key(nar, id)).await?;
    publish(bucket, &staging, &nar_key, &nar.file_hash).await?;
    console_log!(
        "multipart /{nar_key} completed by {}",
        cache.credential.subject
    );
    json(201, render(&UploadCompleted { created: true }), false)
}

async fn abort(nar: &NarFile, id: &UploadId, cache: &Guarded) -> Result<Response, EdgeError> {
    let upload = cache
        .bucket
        .resume_multipart_upload(staging_key(nar, id), id.r2())?;
    upload.abort().await.map_err(refused)?;
    cache.bucket.delete(pending_key(nar, id)).await?;
    Stored::Deleted.into_response()
}

/// Copies the assembled staging object to the NAR's content address. R2 hashes the
/// copy and refuses it unless it matches the name, so unverified bytes are never
/// visible under `nar/`. The staging object goes either way.
///
/// The copy reads the staging object in ranges, piped one after the other into a
/// FixedLengthStream that feeds the PUT: reading a multipart object whole made the
/// local R2 grow by ~160 MiB per GiB, ranges keep it flat (`make bench`). Every pipe
/// runs in the runtime; no byte enters wasm.
async fn publish(
    bucket: &Bucket,
    staging: &str,
    nar_key: &str,
    file_hash: &Sha256,
) -> Result<(), EdgeError> {
    let Some(staged) = bucket.head(staging).await? else {
        // A concurrent completion of the same NAR moved it already.
        return match bucket.head(nar_key).await? {
            Some(_) => Ok(()),
            None => Err(EdgeError::BadRequest(
                "the assembled upload vanished; upload it again".into(),
            )),
        };
    };
    let size = staged.size();
    if size > MAX_OBJECT_BYTES {
        bucket.delete(staging).await?;
        return Err(EdgeError::TooLarge(format!(
            "{size} bytes is over R2's {MAX_OBJECT_BYTES}-byte object limit"
        )));
    }
    let pipe = FixedLengthStream::new(size as f64).map_err(js_error)?;
    let writable = pipe.writable();
    let put = bucket
        .put(nar_key, Data::ReadableStream(pipe.readable()))
        .sha256(file_hash.0.to_vec())
        .execute();
    let feed = async {
        let result = feed_ranges(bucket, staging, size, &writable).await;
        if result.is_err() {
            // Unblocks the PUT, which then fails instead of waiting for bytes.
            let _ = JsFuture::from(writable.abort()).await;
        }
        result
    };
    let (copied, fed) = futures_util::future::join(put, feed).await;
    bucket.delete(staging).await?;
    fed?;
    copied.map_err(|err| {
        EdgeError::from_r2_put(
            err,
            "the assembled NAR does not hash to the name in the URL; nothing was published",
        )
    })?;
    Ok(())
}

/// Bytes read from the staging object per ranged GET while publishing.
const COPY_RANGE_BYTES: u64 = 32 << 20;

async fn feed_ranges(
    bucket: &Bucket,
    staging: &str,
    size: u64,
    writable: &web_sys::WritableStream,
) -> Result<(), EdgeError> {
    let options = web_sys::StreamPipeOptions::new();
    options.set_prevent_close(true);
    let mut offset = 0;
    while offset < size {
        let length = COPY_RANGE_BYTES.min(size - offset);
        let object = bucket
            .get(staging)
            .range(worker::Range::OffsetWithLength { offset, length })
            .execute()
            .await?
            .ok_or(EdgeError::MissingBody)?;
        let body = match object
            .body()
            .ok_or(EdgeError::MissingBody)?
            .response_body()?
        {
            ResponseBody::Stream(stream) => stream,
            _ => return Err(EdgeError::MissingBody),
        };
        JsFuture::from(body.pipe_to_with_options(writable, &options))
            .await
            .map_err(js_error)?;
        offset += length;
    }
    JsFuture::from(writable.close()).await.map_err(js_error)?;
    Ok(())
}

fn js_error(err: JsValue) -> EdgeError {
    EdgeError::Runtime(worker::Error::from(err))
}

// The runtime's FixedLengthStream, used raw: workers-rs' wrapper pulls chunks through
// wasm.
#[wasm_bindgen]
extern "C" {
    type FixedLengthStream;
    #[wasm_bindgen(constructor, catch)]
    fn new(length: f64) -> Result<FixedLengthStream, JsValue>;
    #[wasm_bindgen(method, getter)]
    fn readable(this: &FixedLengthStream) -> web_sys::ReadableStream;
    #[wasm_bindgen(method, getter)]
    fn writable(this: &FixedLengthStream) -> web_sys::WritableStream;
}

// The runtime's random UUIDs: a nonce per upload, no entropy source in the wasm.
#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = crypto, js_name = randomUUID)]
    fn random_uuid() -> String;
}

/// 16 random bytes from the runtime.
fn upload_nonce() -> Result<[u8; 16], EdgeError> {
    crate::core::lower_hex::decode(&random_uuid().replace('-', "")).ok_or_else(|| {
        EdgeError::Runtime(worker::Error::RustError(
            "the runtime gave no random UUID".into(),
        ))
    })
}

/// An R2 refusal of a multipart step.
fn refused(err: worker::Error) -> EdgeError {
    EdgeError::from_r2_multipart(err)
}
