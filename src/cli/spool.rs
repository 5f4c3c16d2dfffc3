//! The spool: where compressed NARs wait for upload and an interrupted push resumes.
//!
//! What sits in the spool gets signed for, so it must be ours alone: the directory is
//! created 0700 and refused unless it is private and owned by whoever runs the push;
//! files in it are created fresh and opened without following symbolic links; and a
//! record left by an earlier run is trusted only after its file hashes to what the
//! record says. There is no fallback to a shared temporary directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use sha2::{Digest as _, Sha256 as Sha256Hasher};

use super::nar::{Codec, Prepared};
use super::pathinfo::PathInfo;
use crate::core::nix::nar_file::Compression;

/// `$XDG_CACHE_HOME/nixflare/spool`, else `~/.cache/nixflare/spool`.
pub fn default_dir() -> Result<PathBuf> {
    super::dirs::xdg("XDG_CACHE_HOME", ".cache", "spool", "pass --spool-dir DIR")
}

/// A spool directory that passed the privacy checks.
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Creates `dir` (0700) if needed and checks that it is a private directory of the
    /// user running this.
    pub fn open(dir: &Path) -> Result<Spool> {
        let context = || format!("the spool {}", dir.display());
        let meta = super::dirs::create_private(dir, "the spool")?;
        if meta.mode() & 0o077 != 0 {
            bail!(
                "{} is open to other users (mode {:o}): run chmod 700 on it, or choose --spool-dir",
                context(),
                meta.mode() & 0o777
            );
        }
        super::dirs::check_owned(dir, &meta, "the spool", "choose --spool-dir")?;
        Ok(Spool {
            dir: dir.to_owned(),
        })
    }

    pub fn entry(&self, info: &PathInfo, codec: &Codec) -> SpoolEntry {
        // Keyed by content and settings: a changed level or algorithm never reuses.
        let stem = format!(
            "{}-{}{}-{}",
            info.path.hash(),
            codec.compression.narinfo_name(),
            codec.level,
            &info.nar_hash.nix32()[..12]
        );
        SpoolEntry {
            data: self.dir.join(format!("{stem}.nar")),
            record: self.dir.join(format!("{stem}.json")),
        }
    }
}

/// A file created fresh (an existing name, link or not, is an error), 0600, without
/// following a symbolic link.
pub fn create_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Opens a spool file for reading, refusing a symbolic link.
pub fn open_read(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// SHA-256 and length of everything `reader` gives.
fn digest(mut reader: impl Read) -> Option<([u8; 32], u64)> {
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).ok()? {
            0 => return Some((hasher.finalize().into(), total)),
            n => {
                hasher.update(&buf[..n]);
                total += n as u64;
            }
        }
    }
}

/// Hashes the bytes read through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256Hasher,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: Sha256Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Where one path's spool files live.
pub struct SpoolEntry {
    pub data: PathBuf,
    record: PathBuf,
}

impl SpoolEntry {
    /// A fresh file to compress into, at the data file's name plus `.partial`.
    pub fn create_partial(&self) -> Result<(File, PathBuf)> {
        let partial = self.data.with_extension("nar.partial");
        let _ = fs::remove_file(&partial);
        let file =
            create_new(&partial).with_context(|| format!("creating {}", partial.display()))?;
        Ok((file, partial))
    }

    /// The record of an earlier run, if its file is intact: of the recorded size,
    /// hashing to the recorded FileHash, and decompressing to `info`'s NarHash and
    /// NarSize. A narinfo is about to be signed for it, so a record and file planted
    /// together (consistent with each other, but not the path) must not pass either.
    pub fn load(&self, info: &PathInfo, compression: Compression) -> Option<Prepared> {
        let mut text = Vec::new();
        open_read(&self.record).ok()?.read_to_end(&mut text).ok()?;
        let record: Prepared = serde_json::from_slice(&text).ok()?;
        let file = open_read(&self.data).ok()?;
        if file.metadata().ok()?.len() != record.file_size {
            return None;
        }
        let mut file_hasher = HashingReader::new(file);
        let (nar_hash, nar_size) = match compression {
            Compression::Zstd => digest(zstd::stream::read::Decoder::new(&mut file_hasher).ok()?)?,
            Compression::None => digest(&mut file_hasher)?,
            _ => return None,
        };
        // Whatever the decoder left unread still counts for the file's hash.
        io::copy(&mut file_hasher, &mut io::sink()).ok()?;
        let intact = file_hasher.hasher.finalize().as_slice() == record.file_hash.0
            && nar_hash == info.nar_hash.0
            && nar_size == info.nar_size;
        intact.then_some(record)
    }

    /// Writes the record atomically (a crash leaves the old one or the new one).
    pub fn save(&self, record: &Prepared) -> Result<()> {
        let tmp = self.record.with_extension("json.tmp");
        let _ = fs::remove_file(&tmp);
        let write = |tmp: &Path| -> io::Result<()> {
            let mut file = create_new(tmp)?;
            file.write_all(&serde_json::to_vec(record)?)?;
            file.sync_all()
        };
        write(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &self.record).with_context(|| format!("writing {}", self.record.display()))
    }

    pub fn remove(&self) {
        let _ = fs::remove_file(&self.data);
        let _ = fs::remove_file(&self.record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    /// A fresh directory under the system's temporary one, removed when dropped.
    struct Scratch(PathBuf);

    impl std::ops::Deref for Scratch {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for Scratch {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn scratch(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("nixflare-spool-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        Scratch(dir)
    }

    #[test]
    fn a_new_spool_is_private() {
        let base = scratch("new");
        let dir = base.join("spool");
        Spool::open(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        // Opening it again is fine.
        Spool::open(&dir).unwrap();
    }

    #[test]
    fn a_shared_or_linked_spool_is_refused() {
        let base = scratch("shared");
        let open = base.join("open");
        fs::create_dir_all(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let err = Spool::open(&open).err().unwrap().to_string();
        assert!(err.contains("open to other users (mode 777)"), "{err}");
        let link = base.join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(Spool::open(&link).is_err());
    }

    #[test]
    fn a_record_is_trusted_only_if_its_file_is_the_path_s_nar() {
        use crate::core::nix::hash::Sha256;
        let base = scratch("record");
        fs::create_dir_all(&base).unwrap();
        let entry = SpoolEntry {
            data: base.join("x.nar"),
            record: base.join("x.json"),
        };
        let nar = b"the path's NAR";
        let nar_digest: [u8; 32] = Sha256Hasher::digest(nar).into();
        let json = format!(
            r#"[{{"path":"/nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-x","narHash":"{}","narSize":{},"references":[]}}]"#,
            Sha256(nar_digest),
            nar.len()
        );
        let info = &crate::cli::pathinfo::parse(&json, "/nix/store").unwrap()[0];
        let plant = |bytes: &[u8]| {
            fs::write(&entry.data, bytes).unwrap();
            let record = Prepared {
                file_hash: Sha256(Sha256Hasher::digest(bytes).into()),
                file_size: bytes.len() as u64,
                upload: None,
            };
            entry.save(&record).unwrap();
            record
        };
        let record = plant(nar);
        assert_eq!(entry.load(info, Compression::None), Some(record));
        let zstd = zstd::encode_all(&nar[..], 3).unwrap();
        let record = plant(&zstd);
        assert_eq!(entry.load(info, Compression::Zstd), Some(record));
        // A record and file planted together, consistent but not the path's NAR.
        plant(b"planted bytes");
        assert_eq!(entry.load(info, Compression::None), None);
        // The file changed after its record was written.
        plant(nar);
        fs::write(&entry.data, b"the path's NAX").unwrap();
        assert_eq!(entry.load(info, Compression::None), None);
    }

    #[test]
    fn files_are_not_created_through_links() {
        let base = scratch("links");
        fs::create_dir_all(&base).unwrap();
        let target = base.join("elsewhere");
        let link = base.join("planted");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create_new(&link).is_err());
        assert!(!target.exists());
        fs::write(&target, b"x").unwrap();
        assert!(open_read(&link).is_err());
    }
}
