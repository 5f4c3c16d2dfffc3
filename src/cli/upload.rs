//! Putting one prepared NAR file on the cache: one PUT when it fits the request limit,
//! otherwise a multipart upload through the worker (`crate::core::multipart`), with parts
//! in parallel and every acknowledged part recorded in the spool so an interrupted
//! upload resumes where it stopped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::HumanBytes;

use super::client::{Client, HttpError};
use super::endpoints::FileRange;
use super::nar::{OpenUpload, Prepared};
use super::parallel;
use super::spool::SpoolEntry;
use crate::core::api::UploadCreated;
use crate::core::multipart::{PartPlan, PartReceipt};
use crate::core::nix::nar_file::NarFile;
use crate::core::route::UPLOADS_PREFIX;

/// What happened to a NAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarOutcome {
    /// Already on the cache: nothing sent (or another push published it first).
    Present,
    /// Sent in one request.
    Single,
    /// Sent in `parts` parts, `resumed` of which an earlier run had sent.
    Multipart { parts: u16, resumed: u16 },
}

pub struct NarUpload<'a> {
    pub client: &'a Client,
    pub nar: &'a NarFile,
    pub entry: &'a SpoolEntry,
    pub max_request_bytes: u64,
    /// Parallel requests for the parts of one NAR.
    pub jobs: usize,
    /// Ask with a HEAD whether the cache has the NAR before sending it.
    pub ask_first: bool,
    /// Set when the push is being abandoned: stop sending parts.
    pub cancelled: &'a AtomicBool,
    /// Reports progress lines (part numbers).
    pub log: &'a (dyn Fn(String) + Sync),
}

impl NarUpload<'_> {
    pub fn run(&self, prepared: &mut Prepared) -> Result<NarOutcome> {
        if self.ask_first && self.client.has_nar(self.nar)? {
            return Ok(NarOutcome::Present);
        }
        if prepared.file_size <= self.max_request_bytes {
            self.client
                .put_nar(self.nar, &self.entry.data, prepared.file_size)?;
            return Ok(NarOutcome::Single);
        }
        // One restart if the cache forgot the upload (expired, cleaned up, aborted).
        match self.multipart(prepared) {
            Err(err) if is_gone(&err) => {
                (self.log)(format!(
                    "{}: the cache no longer has the upload, starting again",
                    self.nar
                ));
                prepared.upload = None;
                self.entry.save(prepared)?;
                self.multipart(prepared)
            }
            other => other,
        }
    }

    fn multipart(&self, prepared: &mut Prepared) -> Result<NarOutcome> {
        let plan = PartPlan::new(prepared.file_size, self.max_request_bytes)?;
        let Some(open) = self.open_upload(prepared, &plan)? else {
            return Ok(NarOutcome::Present);
        };
        let resumed = open.etags.iter().filter(|e| e.is_some()).count() as u16;
        if resumed > 0 {
            (self.log)(format!(
                "{}: resuming, {resumed} of {} parts already sent",
                self.nar, plan.count
            ));
        }
        *prepared = self.send_parts(prepared, &open, &plan)?;
        let open = prepared.upload.clone().context("no open upload")?;
        let completed =
            self.client
                .complete_upload(self.nar, &open.upload_id, &receipts(&open)?)?;
        prepared.upload = None;
        self.entry.save(prepared)?;
        Ok(match completed.created {
            true => NarOutcome::Multipart {
                parts: plan.count,
                resumed,
            },
            false => NarOutcome::Present,
        })
    }

    /// The upload to send parts to: the one an earlier run recorded (same cache, same
    /// part size), or a new one. `None` when the cache already has the NAR.
    fn open_upload(&self, prepared: &mut Prepared, plan: &PartPlan) -> Result<Option<OpenUpload>> {
        let base = self.client.base().to_owned();
        if let Some(open) = &prepared.upload {
            if open.cache == base && open.part_size == plan.part_size {
                return Ok(Some(open.clone()));
            }
        }
        let upload_id = match self.client.create_upload(self.nar)? {
            UploadCreated::Present { .. } => return Ok(None),
            UploadCreated::Started { upload_id, .. } => upload_id,
        };
        let open = OpenUpload {
            cache: base,
            upload_id,
            part_size: plan.part_size,
            etags: vec![None; usize::from(plan.count)],
        };
        prepared.upload = Some(open.clone());
        self.entry.save(prepared)?;
        Ok(Some(open))
    }

    /// Sends the parts `open` has no receipt for, in parallel, saving each receipt to
    /// the spool as it arrives; returns the record with every receipt.
    fn send_parts(
        &self,
        prepared: &Prepared,
        open: &OpenUpload,
        plan: &PartPlan,
    ) -> Result<Prepared> {
        let size = prepared.file_size;
        let todo: Vec<u16> = (1..=plan.count)
            .filter(|&n| open.etags[usize::from(n - 1)].is_none())
            .collect();
        let record = Mutex::new(prepared.clone());
        parallel::try_for_each(&todo, self.jobs, |&number| {
            if self.cancelled.load(Ordering::Relaxed) {
                return Ok(());
            }
            let (offset, length) = plan.part_range(number, size);
            let bytes = FileRange {
                file: &self.entry.data,
                offset,
                length,
            };
            let receipt = self
                .client
                .upload_part(self.nar, &open.upload_id, number, bytes)?;
            self.record_receipt(&record, number, receipt.etag)?;
            (self.log)(format!(
                "{}: part {number}/{} sent ({})",
                self.nar,
                plan.count,
                HumanBytes(length)
            ));
            Ok(())
        })?;
        if self.cancelled.load(Ordering::Relaxed) {
            bail!("cancelled");
        }
        record
            .into_inner()
            .map_err(|_| anyhow!("a part thread panicked"))
    }

    fn record_receipt(&self, record: &Mutex<Prepared>, number: u16, etag: String) -> Result<()> {
        let mut record = record
            .lock()
            .map_err(|_| anyhow!("a part thread panicked"))?;
        let open = record.upload.as_mut().context("no open upload")?;
        open.etags[usize::from(number - 1)] = Some(etag);
        self.entry.save(&record)
    }
}

/// The part list of a fully sent upload.
fn receipts(open: &OpenUpload) -> Result<Vec<PartReceipt>> {
    open.etags
        .iter()
        .enumerate()
        .map(|(i, etag)| {
            Ok(PartReceipt {
                number: u16::try_from(i + 1)?,
                etag: etag.clone().context("a part was not acknowledged")?,
            })
        })
        .collect()
}

/// The worker's 404 for an upload id it does not know.
fn is_gone(err: &anyhow::Error) -> bool {
    err.downcast_ref::<HttpError>()
        .is_some_and(|e| e.status == 404 && e.path.starts_with(UPLOADS_PREFIX))
}
