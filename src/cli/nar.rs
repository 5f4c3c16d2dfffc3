//! Turning a store path into an upload-ready NAR file: serialised (here, or by
//! `nix-store --dump`), checked
//! against Nix's NarHash/NarSize, compressed with multi-threaded zstd into a spool
//! directory, hashed on the way out (FileHash names the file on the cache).
//!
//! The spool (`spool.rs`) survives an interrupted push: the next run finds the compressed
//! file and its record (`<name>.json`, which also remembers an open multipart upload)
//! and goes on from there instead of compressing again.

use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256 as Sha256Hasher};

use super::pathinfo::PathInfo;
use super::spool::SpoolEntry;
use crate::core::multipart::UploadId;
use crate::core::nix::hash::Sha256;
use crate::core::nix::nar_file::{Compression, NarFile};

/// How NARs are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Codec {
    pub compression: Compression,
    pub level: i32,
    pub threads: u32,
}

/// A NAR ready to upload, and what is known about its upload so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Prepared {
    /// SHA-256 of the compressed file: its name on the cache. Written as bare nix32,
    /// the spool's format since its first version, so an interrupted push resumes.
    #[serde(with = "bare_nix32")]
    pub file_hash: Sha256,
    pub file_size: u64,
    /// An open multipart upload of this file, for resuming. One this version cannot
    /// read (an older upload id) is dropped: the file is reused, the upload started anew.
    #[serde(default, deserialize_with = "readable_or_none")]
    pub upload: Option<OpenUpload>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenUpload {
    /// The cache it was opened on: never resumed against another.
    pub cache: String,
    pub upload_id: UploadId,
    pub part_size: u64,
    /// ETag per part, `None` until that part is acknowledged.
    pub etags: Vec<Option<String>>,
}

fn readable_or_none<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<OpenUpload>, D::Error> {
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// `Sha256` as its bare nix32 digest (a NAR file's name without `.nar`).
mod bare_nix32 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::core::nix::hash::Sha256;
    use crate::core::nix::nix32;

    pub fn serialize<S: Serializer>(hash: &Sha256, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hash.nix32())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Sha256, D::Error> {
        let text = String::deserialize(deserializer)?;
        nix32::decode(&text)
            .map(Sha256)
            .map_err(serde::de::Error::custom)
    }
}

impl Prepared {
    /// The file's name on the cache.
    pub fn nar_file(&self, compression: Compression) -> NarFile {
        NarFile {
            file_hash: self.file_hash,
            compression,
        }
    }
}

/// Dumps, checks and compresses `info`'s path into `entry`: serialised here, or by
/// `nix-store --dump` where that does not give Nix's NarHash (a store elsewhere than
/// its store directory says, a file name that is not UTF-8).
pub fn prepare(
    store_dir: &str,
    info: &PathInfo,
    codec: &Codec,
    entry: &SpoolEntry,
) -> Result<Prepared> {
    let path = format!("{store_dir}/{}", info.path);
    let here = nix_nar::Encoder::new(&path)
        .map_err(anyhow::Error::from)
        .and_then(|mut nar| write_checked(&mut nar, info, codec, entry));
    let record = match here {
        Ok(Some(record)) => record,
        Ok(None) | Err(_) => dump_with_nix(&path, info, codec, entry)?.with_context(|| {
            format!(
                "the NAR of {path} does not match Nix's NarHash/NarSize ({} bytes): \
                 the store may be corrupt (try nix-store --verify --check-contents)",
                info.nar_size
            )
        })?,
    };
    entry.save(&record)?;
    Ok(record)
}

/// `nix-store --dump` of `path`, written and checked as [`write_checked`] does.
fn dump_with_nix(
    path: &str,
    info: &PathInfo,
    codec: &Codec,
    entry: &SpoolEntry,
) -> Result<Option<Prepared>> {
    let mut child = Command::new("nix-store")
        .args(["--dump", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nix-store --dump (is Nix installed?)")?;
    let mut nar = child.stdout.take().context("nix-store has no stdout")?;
    let written = write_checked(&mut nar, info, codec, entry);
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut stderr);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("nix-store --dump {path} failed: {}", stderr.trim());
    }
    written
}

/// Compresses the NAR read from `nar` into `entry`'s file, hashing both sides. `None`
/// (and no file) when the NAR is not the one Nix's NarHash and NarSize describe.
fn write_checked(
    nar: &mut impl Read,
    info: &PathInfo,
    codec: &Codec,
    entry: &SpoolEntry,
) -> Result<Option<Prepared>> {
    let (out, partial) = entry.create_partial()?;
    let mut file = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let (nar_hash, nar_size) = match codec.compression {
        Compression::Zstd => {
            let mut encoder = zstd::stream::Encoder::new(&mut file, codec.level)?;
            // Worker threads pay off on large NARs only: a small one is done before
            // they would start.
            if info.nar_size >= MULTITHREAD_NAR_BYTES {
                encoder.multithread(codec.threads)?;
            }
            let digest = copy_hashing(nar, &mut encoder)?;
            encoder.finish()?;
            digest
        }
        Compression::None => copy_hashing(nar, &mut file)?,
        other => bail!(
            "compression {} is not supported by nixflare push",
            other.narinfo_name()
        ),
    };
    let (file_hash, file_size, inner) = file.finish();
    inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    if nar_hash != info.nar_hash.0 || nar_size != info.nar_size {
        let _ = fs::remove_file(&partial);
        return Ok(None);
    }
    fs::rename(&partial, &entry.data)?;
    Ok(Some(Prepared {
        file_hash: Sha256(file_hash),
        file_size,
        upload: None,
    }))
}

/// NARs from this size are compressed by several zstd threads.
const MULTITHREAD_NAR_BYTES: u64 = 1 << 20;

/// Copies `reader` to `writer`, returning the SHA-256 and length of what passed.
fn copy_hashing(reader: &mut impl Read, writer: &mut impl Write) -> io::Result<([u8; 32], u64)> {
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((hasher.finalize().into(), total))
}

/// Hashes and counts everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256Hasher,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256Hasher::new(),
            written: 0,
        }
    }

    fn finish(self) -> ([u8; 32], u64, W) {
        (self.hasher.finalize().into(), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_records_keep_their_first_format() {
        // As the first nixflare wrote it: a bare nix32 file hash, an open upload.
        let old = r#"{"file_hash":"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73","file_size":3,"upload":{"cache":"http://c","upload_id":"AbC+/=","part_size":5242880,"etags":["e1",null]}}"#;
        let record: Prepared = serde_json::from_str(old).unwrap();
        assert_eq!(
            record.file_hash.nix32(),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        // Its upload predates per-upload staging: the file is kept, the upload dropped.
        assert_eq!(record.upload, None);
        let current = old.replace("\"AbC+/=\"", &format!("\"{}.AbC+/=\"", "0f".repeat(16)));
        let record: Prepared = serde_json::from_str(&current).unwrap();
        assert_eq!(record.upload.as_ref().unwrap().upload_id.r2(), "AbC+/=");
        assert_eq!(serde_json::to_string(&record).unwrap(), current);
    }
}
