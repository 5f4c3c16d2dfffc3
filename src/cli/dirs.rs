//! Where the client keeps its files (the XDG base directories), and private
//! directories made safely.

use std::fs::{self, DirBuilder, Metadata, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// `$<variable>/nixflare/<leaf>`, else `~/<home_default>/nixflare/<leaf>` (the XDG
/// base directory rules); `hint` says what to pass when neither is set.
pub fn xdg(variable: &str, home_default: &str, leaf: &str, hint: &str) -> Result<PathBuf> {
    let base = std::env::var_os(variable)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(home_default)))
        .with_context(|| format!("neither {variable} nor HOME is set: {hint}"))?;
    Ok(base.join("nixflare").join(leaf))
}

/// Creates `dir` 0700 (and its parents) unless it exists, and returns its metadata
/// once sure it is a directory and not a symbolic link; `what` names it in errors.
pub fn create_private(dir: &Path, what: &str) -> Result<Metadata> {
    let context = || format!("{what} {}", dir.display());
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent).with_context(context)?;
    }
    match DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e).with_context(context),
        _ => {}
    }
    let meta = fs::symlink_metadata(dir).with_context(context)?;
    if !meta.is_dir() {
        bail!("{} is not a directory (a symbolic link?)", context());
    }
    Ok(meta)
}

/// Checks that `dir` (whose metadata is `meta`) belongs to the user running this: a
/// file made in it takes our uid, which must be the directory's.
pub fn check_owned(dir: &Path, meta: &Metadata, what: &str, hint: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let context = || format!("{what} {}", dir.display());
    let probe = dir.join(format!(".owner-{}", std::process::id()));
    let _ = fs::remove_file(&probe);
    let owner = super::spool::create_new(&probe).and_then(|file| file.metadata());
    let _ = fs::remove_file(&probe);
    if owner.with_context(context)?.uid() != meta.uid() {
        bail!(
            "{} belongs to another user (uid {}): {hint}",
            context(),
            meta.uid()
        );
    }
    Ok(())
}

/// Replaces `file` with `text`, mode 0600, through a fresh file renamed over it, so a
/// reader never sees half a file and a link planted at the fresh name is not followed.
pub fn replace_private(file: &Path, text: &str) -> Result<()> {
    let dir = file
        .parent()
        .with_context(|| format!("{} has no directory", file.display()))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    let fresh = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = fs::remove_file(&fresh);
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&fresh)
        .with_context(|| format!("creating {}", fresh.display()))?;
    out.write_all(text.as_bytes())
        .and_then(|()| out.sync_all())
        .with_context(|| format!("writing {}", fresh.display()))?;
    fs::rename(&fresh, file).with_context(|| format!("replacing {}", file.display()))
}
