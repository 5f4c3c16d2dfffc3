//! Putting one prepared NAR file on the cache: one PUT when it fits the request limit,
//! otherwise a multipart upload through the worker (`crate::core::multipart`), with parts in
//! parallel and every acknowledged part recorded in the spool so an interrupted
//! upload resumes where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;

use super::client::{Body, Client, HttpError};
use super::nar::{OpenUpload, Prepared, SpoolEntry};
use super::parallel;
use crate::core::multipart::{render_part_list, PartPlan, PartReceipt};
use crate::core::route::Route;

/// What happened to a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarOutcome {
    /// Already on the cache: nothing sent.
    Present,
    /// Sent in one request.
    Single,
    /// Sent in `parts` parts, `resumed` of which an earlier run had sent.
    Multipart { parts: u16, resumed: u16 },
}

pub struct NarUpload<'a> {
    pub client: &'a Client,
    pub nar: &'a Route,
    pub entry: &'a SpoolEntry,
    pub max_request_bytes: u64,
    /// Parallel requests for the parts of one NAR.
    pub jobs: usize,
    /// Set when the push is being abandoned: stop sending parts.
    pub cancelled: &'a AtomicBool,
    /// Reports progress lines (part numbers).
    pub log: &'a (dyn Fn(String) + Sync),
}

#[derive(Deserialize)]
struct Created {
    #[serde(rename = "uploadId")]
    upload_id: Option<String>,
    #[serde(default)]
    present: bool,
}

#[derive(Deserialize)]
struct PartAck {
    etag: String,
}

impl NarUpload<'_> {
    pub fn run(&self, prepared: &mut Prepared) -> Result<NarOutcome> {
        let path = self.nar.to_string();
        if self.client.exists(&path)? {
            return Ok(NarOutcome::Present);
        }
        if prepared.file_size <= self.max_request_bytes {
            self.client.expect_success(
                "PUT",
                &path,
                Some("application/x-nix-nar"),
                Body::FileRange {
                    file: &self.entry.data,
                    offset: 0,
                    length: prepared.file_size,
                },
            )?;
            return Ok(NarOutcome::Single);
        }
        // One restart if the cache forgot the upload (expired, cleaned up, aborted).
        match self.multipart(prepared) {
            Err(err) if is_gone(&err) => {
                (self.log)(format!(
                    "{path}: the cache no longer has the upload, starting again"
                ));
                prepared.upload = None;
                self.entry.save(prepared)?;
                self.multipart(prepared)
            }
            other => other,
        }
    }

    fn multipart(&self, prepared: &mut Prepared) -> Result<NarOutcome> {
        let size = prepared.file_size;
        let plan = PartPlan::new(size, self.max_request_bytes)?;
        let upload_path = format!("_nixflare/uploads/{}", self.nar);
        let base = self.client.base().to_owned();
        let reusable = prepared
            .upload
            .as_ref()
            .is_some_and(|u| u.cache == base && u.part_size == plan.part_size);
        if !reusable {
            let reply = self.client.expect_success(
                "POST",
                &format!("{upload_path}?uploads"),
                None,
                Body::Empty,
            )?;
            let created: Created = serde_json::from_str(&reply.body)
                .context("the cache's answer to starting an upload is not JSON")?;
            if created.present {
                return Ok(NarOutcome::Present);
            }
            prepared.upload = Some(OpenUpload {
                cache: base,
                upload_id: created
                    .upload_id
                    .ok_or_else(|| anyhow!("the cache started an upload without an id"))?,
                part_size: plan.part_size,
                etags: vec![None; usize::from(plan.count)],
            });
            self.entry.save(prepared)?;
        }
        let open = prepared.upload.clone().context("no open upload")?;
        let resumed = open.etags.iter().filter(|e| e.is_some()).count() as u16;
        if resumed > 0 {
            (self.log)(format!(
                "{}: resuming, {resumed} of {} parts already sent",
                self.nar, plan.count
            ));
        }
        let query_id = encode_query_value(&open.upload_id);
        let todo: Vec<u16> = (1..=plan.count)
            .filter(|&n| open.etags[usize::from(n - 1)].is_none())
            .collect();
        // The spool record, updated (and saved) as each part is acknowledged.
        let record = Mutex::new(prepared.clone());
        parallel::try_for_each(&todo, self.jobs, |&number| {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (offset, length) = plan.part_range(number, size);
            let reply = self.client.expect_success(
                "PUT",
                &format!("{upload_path}?partNumber={number}&uploadId={query_id}"),
                Some("application/octet-stream"),
                Body::FileRange {
                    file: &self.entry.data,
                    offset,
                    length,
                },
            )?;
            let ack: PartAck = serde_json::from_str(&reply.body)
                .context("the cache's part receipt is not JSON")?;
            {
                let mut record = record
                    .lock()
                    .map_err(|_| anyhow!("a part thread panicked"))?;
                let open = record.upload.as_mut().context("no open upload")?;
                open.etags[usize::from(number - 1)] = Some(ack.etag);
                self.entry.save(&record)?;
            }
            (self.log)(format!(
                "{}: part {number}/{} sent ({})",
                self.nar,
                plan.count,
                super::push::human(length)
            ));
            Ok(())
        })?;
        if self.cancelled.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        *prepared = record
            .into_inner()
            .map_err(|_| anyhow!("a part thread panicked"))?;
        let open = prepared.upload.clone().context("no open upload")?;
        let receipts = open
            .etags
            .iter()
            .enumerate()
            .map(|(i, etag)| {
                Ok(PartReceipt {
                    number: u16::try_from(i + 1)?,
                    etag: etag.clone().context("a part was not acknowledged")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let list = render_part_list(&receipts);
        self.client.expect_success(
            "POST",
            &format!("{upload_path}?uploadId={query_id}"),
            Some("text/plain"),
            Body::Bytes(list.as_bytes()),
        )?;
        prepared.upload = None;
        self.entry.save(prepared)?;
        Ok(NarOutcome::Multipart {
            parts: plan.count,
            resumed,
        })
    }
}

/// The worker's 404 for an upload id it does not know.
fn is_gone(err: &anyhow::Error) -> bool {
    err.downcast_ref::<HttpError>()
        .is_some_and(|e| e.status == 404 && e.path.starts_with("_nixflare/uploads/"))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
pub fn encode_query_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_round_trip_through_the_core_parser() {
        let id = "AbC+/= x~";
        let url = format!("https://h/p?uploadId={}", encode_query_value(id));
        assert_eq!(
            crate::core::http::query_pairs(&url),
            [("uploadId".into(), id.into())]
        );
    }
}
