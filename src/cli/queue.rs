//! The push queue: store paths waiting for `nixflare watch`, fed by `nixflare hook`
//! (Nix's post-build-hook) and `nixflare watch-store`.
//!
//! Format: a directory with one file per entry, one store path per line, as in a
//! maildir. An entry is written to a dot-file, fsync'd, renamed to its final name
//! (`<unix nanoseconds>-<pid>-<n>.paths`, so names sort by age) and the directory
//! fsync'd: after `append` returns, the entry survives a crash or power loss, and a
//! reader never sees half of one. The watcher deletes an entry only after everything
//! in it is on the cache, so a kill at any moment loses nothing; pushing an entry twice
//! costs one query, because the cache is asked what it lacks first.
//!
//! Why not SQLite (WAL) or one append-only log: the hook runs as the Nix daemon's user
//! (root on a multi-user install) and the watcher as someone else. A root-made SQLite
//! `-wal`/`-shm` or a root-owned log could not be written by the watcher, and a log
//! needs a separate, crash-safe "consumed up to" offset. Here root can add files to the
//! watcher's directory, the watcher can read them (0644: store paths are public
//! anyway) and delete them (it owns the directory), and appends from concurrent builds
//! never touch one another.
//!
//! The directory is the watcher's and private (0700; refused if others may write to
//! it): whatever is queued gets signed with the watcher's key, so only its owner (and
//! root) may add entries.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};

/// `$XDG_STATE_HOME/nixflare/queue`, else `~/.local/state/nixflare/queue`.
pub fn default_dir() -> Result<PathBuf> {
    super::dirs::xdg(
        "XDG_STATE_HOME",
        ".local/state",
        "queue",
        "pass --queue DIR",
    )
}

pub struct Queue {
    /// As given, for messages.
    dir: PathBuf,
    /// The directory opened once (its last component not a link); kept open so that
    /// `anchor` stays valid.
    _handle: File,
    /// Where files are made: `/proc/self/fd/N` on Linux, so every later operation
    /// happens in the directory that was checked, even if a path component is swapped
    /// for a link meanwhile (the hook may run as root in a user's directory); the
    /// path elsewhere.
    anchor: PathBuf,
    /// The directory's owner, who gets the entries root's hook makes.
    owner: (u32, u32),
}

/// One queued entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The file's name, which orders entries by age.
    pub name: String,
    pub paths: Vec<String>,
}

/// Held while a process drains the queue; released when dropped or when the process
/// dies, however it dies (the lock, an flock on Unix, belongs to the open file).
pub struct DrainLock {
    _file: File,
}

/// Entries are numbered within a process too: two appends in one nanosecond still
/// get two names.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

impl Queue {
    /// The watcher's side: the queue at `dir`, created (0700, with its parents) if
    /// missing; it must be ours and closed to others.
    pub fn open(dir: &Path) -> Result<Queue> {
        let meta = super::dirs::create_private(dir, "the queue")?;
        super::dirs::check_owned(dir, &meta, "the queue", "choose --queue")?;
        Queue::open_existing(dir)
    }

    /// The hook's side: an existing queue only (made by its watcher, so owned by it),
    /// opened without following a link and checked through the open handle.
    pub fn open_existing(dir: &Path) -> Result<Queue> {
        let context = || format!("the queue {}", dir.display());
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(dir)
            .with_context(|| {
                format!(
                    "opening {} (a directory, not a link; `nixflare watch` makes it)",
                    context()
                )
            })?;
        let meta = handle.metadata().with_context(context)?;
        if meta.mode() & 0o022 != 0 {
            bail!(
                "{} may be written by other users (mode {:o}), and what is queued gets signed: run chmod 700 on it",
                context(),
                meta.mode() & 0o777
            );
        }
        let anchor = {
            use std::os::fd::AsRawFd as _;
            let fd = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
            if fd.is_dir() {
                fd
            } else {
                dir.to_owned()
            }
        };
        Ok(Queue {
            dir: dir.to_owned(),
            _handle: handle,
            anchor,
            owner: (meta.uid(), meta.gid()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds an entry holding `paths` (absolute store paths, one per line); durable
    /// when this returns.
    pub fn append(&self, paths: &[&str]) -> Result<()> {
        for path in paths {
            if !path.starts_with('/') || path.contains(['\n', '\r']) {
                bail!("{path:?} is not a store path");
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let pid = std::process::id();
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{now:020}-{pid}-{n}.paths");
        let temporary = self.anchor.join(format!(".new-{name}"));
        let mut text = paths.join("\n");
        text.push('\n');
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?;
            // Root's hook gives the entry to the queue's owner, who deletes it later.
            if file.metadata()?.uid() != self.owner.0 {
                std::os::unix::fs::fchown(&file, Some(self.owner.0), Some(self.owner.1))?;
            }
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, self.anchor.join(&name))?;
            File::open(&self.anchor)?.sync_all()
        };
        write().with_context(|| format!("adding an entry to {}", self.dir.display()))
    }

    /// Every entry, oldest first. Files being written (dot-files) are not entries; one
    /// a killed writer left behind for more than an hour is removed.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut entries = Vec::new();
        let listing = fs::read_dir(&self.anchor)
            .with_context(|| format!("listing {}", self.dir.display()))?;
        for item in listing {
            let item = item.with_context(|| format!("listing {}", self.dir.display()))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with(".new-") {
                let stale = item
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(3600));
                if stale {
                    let _ = fs::remove_file(item.path());
                }
                continue;
            }
            if !name.ends_with(".paths") {
                continue;
            }
            let text = match fs::read_to_string(item.path()) {
                Ok(text) => text,
                // Drained by another process meanwhile.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // One bad file must not stop the watcher: it stays for a human to see.
                Err(e) => {
                    eprintln!(
                        "nixflare: skipping queue entry {} in {}: {e}",
                        name,
                        self.dir.display()
                    );
                    continue;
                }
            };
            let paths = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            entries.push(Entry { name, paths });
        }
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Deletes a pushed entry, durably.
    pub fn remove(&self, entry: &Entry) -> Result<()> {
        match fs::remove_file(self.anchor.join(&entry.name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing queue entry {}", entry.name))
            }
            _ => {}
        }
        File::open(&self.anchor)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing {}", self.dir.display()))
    }

    /// The right to drain: `None` if another process holds it.
    pub fn try_lock(&self) -> Result<Option<DrainLock>> {
        let path = self.anchor.join(".drain.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        Ok(Some(DrainLock { _file: file }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopening_in_order_and_go_when_removed() {
        let dir = std::env::temp_dir().join(format!("nixflare-queue-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let queue = Queue::open(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        queue.append(&["/nix/store/a-x", "/nix/store/b-y"]).unwrap();
        queue.append(&["/nix/store/c-z"]).unwrap();
        queue.append(&[]).unwrap();
        assert!(queue.append(&["relative"]).is_err());
        assert!(queue.append(&["/nix/store/a\n/etc"]).is_err());
        // A half-written entry is not one.
        fs::write(dir.join(".new-x.paths"), "/nix/store/half").unwrap();
        let reopened = Queue::open(&dir).unwrap();
        let entries = reopened.entries().unwrap();
        let paths: Vec<&Vec<String>> = entries.iter().map(|e| &e.paths).collect();
        assert_eq!(
            paths,
            [
                &vec!["/nix/store/a-x".to_owned(), "/nix/store/b-y".to_owned()],
                &vec!["/nix/store/c-z".to_owned()]
            ]
        );
        reopened.remove(&entries[0]).unwrap();
        reopened.remove(&entries[0]).unwrap();
        assert_eq!(reopened.entries().unwrap().len(), 1);
        // An entry that cannot be read (not UTF-8) is skipped, not fatal, and kept.
        fs::write(dir.join("0-bad.paths"), [0xff, 0xfe]).unwrap();
        assert_eq!(reopened.entries().unwrap().len(), 1);
        assert!(dir.join("0-bad.paths").exists());
        fs::remove_file(dir.join("0-bad.paths")).unwrap();

        let lock = reopened.try_lock().unwrap();
        assert!(lock.is_some());
        assert!(queue.try_lock().unwrap().is_none());
        drop(lock);
        assert!(queue.try_lock().unwrap().is_some());

        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Queue::open(&dir).is_err());
        assert!(Queue::open_existing(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_hooks_side_neither_creates_nor_follows_a_link() {
        let base = std::env::temp_dir().join(format!("nixflare-queue-link-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let missing = base.join("queue");
        assert!(Queue::open_existing(&missing).is_err());
        assert!(!missing.exists());
        let elsewhere = base.join("elsewhere");
        Queue::open(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &missing).unwrap();
        let refused = Queue::open_existing(&missing).err().unwrap();
        assert!(format!("{refused:#}").contains("not a link"), "{refused:#}");
        // Entries written through the checked handle land in the checked directory.
        let queue = Queue::open_existing(&elsewhere).unwrap();
        queue.append(&["/nix/store/a-x"]).unwrap();
        assert_eq!(queue.entries().unwrap().len(), 1);
        fs::remove_dir_all(&base).unwrap();
    }
}
