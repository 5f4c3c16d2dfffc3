//! Multipart NAR uploads (protocol and rules in `crate::core::multipart`), and the cron that
//! cleans up uploads their client abandoned.
//!
//! Part bodies stream from the request into R2 and the assembled object streams from
//! R2 back into R2: no NAR byte enters wasm. Completion publishes the NAR with one PUT
//! that R2 verifies against the SHA-256 in its name (as a single-request NAR PUT is).

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use worker::{console_log, Bucket, Data, Method, Request, Response, ResponseBody, UploadedPart};

use super::error::EdgeError;
use super::generated;
use super::write::{authorize, hash_refusal, small_body, stream_body, Stored};
use crate::core::config::CacheConfig;
use crate::core::multipart::{
    json_string, parse_part_list, parse_part_number, pending_key, staging_key, UploadId,
    MAX_OBJECT_BYTES, MAX_PART_LIST_BYTES, PENDING_PREFIX, STAGING_PREFIX,
};
use crate::core::nix::hash::Sha256;
use crate::core::nix::nar_file::NarFile;
use crate::core::route::{Kind, Route};
use crate::core::token::Permissions;

/// What a request under `/_nixflare/uploads/nar/<name>` asks for (S3's query shapes).
enum Action {
    Create,
    UploadPart { id: UploadId, number: u16 },
    Complete { id: UploadId },
    Abort { id: UploadId },
}

fn action(req: &Request) -> Result<Action, EdgeError> {
    let mut upload_id = None;
    let mut part_number = None;
    let mut create = false;
    for (name, value) in crate::core::http::query_pairs(&req.inner().url()) {
        match name.as_str() {
            "uploadId" => upload_id = Some(UploadId::parse(&value).map_err(bad)?),
            "partNumber" => part_number = Some(parse_part_number(&value).map_err(bad)?),
            "uploads" => create = true,
            _ => {}
        }
    }
    let method = req.method();
    Ok(match (method, create, upload_id, part_number) {
        (Method::Post, true, None, None) => Action::Create,
        (Method::Put, false, Some(id), Some(number)) => Action::UploadPart { id, number },
        (Method::Post, false, Some(id), None) => Action::Complete { id },
        (Method::Delete, false, Some(id), None) => Action::Abort { id },
        _ => {
            return Err(EdgeError::BadRequest(
                "expected POST ?uploads, PUT ?partNumber=N&uploadId=ID, POST ?uploadId=ID or DELETE ?uploadId=ID".into(),
            ))
        }
    })
}

fn bad(err: impl ToString) -> EdgeError {
    EdgeError::BadRequest(err.to_string())
}

pub async fn handle(
    mut req: Request,
    nar: NarFile,
    config: &CacheConfig,
    bucket: &Bucket,
) -> Result<Response, EdgeError> {
    let action = action(&req)?;
    let claims = authorize(&req, config, bucket, Permissions::WRITE).await?;
    let nar_key = Route::Nar(nar).to_string();
    let staging = staging_key(&nar);
    let response = match action {
        Action::Create => {
            if bucket.head(&nar_key).await?.is_some() {
                return json(200, "{\"present\":true}".into());
            }
            let upload = bucket.create_multipart_upload(&staging).execute().await?;
            let id = UploadId::parse(&upload.upload_id().await).map_err(|_| {
                EdgeError::Runtime(worker::Error::RustError(
                    "R2 gave an unusable upload id".into(),
                ))
            })?;
            bucket
                .put(pending_key(&nar, &id), Data::Empty)
                .execute()
                .await?;
            console_log!("multipart /{nar_key} started by {}", claims.subject);
            json(
                201,
                format!(
                    "{{\"uploadId\":{},\"maxRequestBytes\":{}}}",
                    json_string(id.as_str()),
                    config.max_request_bytes
                ),
            )?
        }
        Action::UploadPart { id, number } => {
            let body = stream_body(&req, config.max_request_bytes, "one part")?;
            let upload = bucket.resume_multipart_upload(&staging, id.as_str())?;
            let part = upload
                .upload_part(number, Data::ReadableStream(body))
                .await
                .map_err(r2_refusal)?;
            json(
                200,
                format!(
                    "{{\"partNumber\":{number},\"etag\":{}}}",
                    json_string(&part.etag())
                ),
            )?
        }
        Action::Complete { id } => {
            let list = small_body(&mut req, MAX_PART_LIST_BYTES, "a part list").await?;
            let list = core::str::from_utf8(&list).map_err(|_| bad("part list is not UTF-8"))?;
            let parts = parse_part_list(list).map_err(bad)?;
            let pending = pending_key(&nar, &id);
            let upload = bucket.resume_multipart_upload(&staging, id.as_str())?;
            if bucket.head(&nar_key).await?.is_some() {
                // Someone else published these bytes meanwhile: drop ours.
                let _ = upload.abort().await;
                bucket.delete(&pending).await?;
                return Stored::Unchanged.into_response();
            }
            let receipts = parts
                .into_iter()
                .map(|p| UploadedPart::new(p.number, p.etag));
            upload.complete(receipts).await.map_err(r2_refusal)?;
            bucket.delete(&pending).await?;
            publish(bucket, &staging, &nar_key, &nar.file_hash).await?;
            console_log!("multipart /{nar_key} completed by {}", claims.subject);
            Stored::Created.into_response()?
        }
        Action::Abort { id } => {
            let upload = bucket.resume_multipart_upload(&staging, id.as_str())?;
            upload.abort().await.map_err(r2_refusal)?;
            bucket.delete(pending_key(&nar, &id)).await?;
            Response::empty()?.with_status(204)
        }
    };
    Ok(response)
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
            None => Err(bad("the assembled upload vanished; upload it again")),
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
        hash_refusal(
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

/// R2 refusals that are the client's doing (unknown upload id, part too small, wrong
/// etag) become 4xx with R2's own words; anything else is a storage error.
fn r2_refusal(err: worker::Error) -> EdgeError {
    let text = err.to_string();
    if text.contains("10024") || text.contains("does not exist") {
        return EdgeError::UploadNotFound;
    }
    // R2 error codes 100xx are request errors (e.g. 10011 EntityTooSmall, 10025 InvalidPart).
    if text.contains("(100") {
        let reason = text.lines().next().unwrap_or_default();
        return EdgeError::BadRequest(format!("R2 refused the upload: {reason}"));
    }
    EdgeError::Runtime(err)
}

fn json(status: u16, body: String) -> Result<Response, EdgeError> {
    Ok(generated(Kind::Api, body, false)?.with_status(status))
}

/// Cron: aborts uploads whose marker is older than the configured age and deletes
/// staging objects left by a completion that died half-way.
pub async fn clean_up(bucket: &Bucket, config: &CacheConfig, now_ms: u64) -> Result<(), EdgeError> {
    let cutoff = now_ms.saturating_sub(config.abandoned_upload_seconds.saturating_mul(1000));
    let mut aborted = 0;
    for marker in list_older_than(bucket, PENDING_PREFIX, cutoff).await? {
        if let Some((nar, id)) = crate::core::multipart::parse_pending_key(&marker) {
            let staging = staging_key(&nar);
            // Already completed or expired in R2: nothing to abort, the marker still goes.
            if let Ok(upload) = bucket.resume_multipart_upload(&staging, id.as_str()) {
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
