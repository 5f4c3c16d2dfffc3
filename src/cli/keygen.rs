//! `nixflare keygen`: a narinfo signing key pair (or an admin key for tokens) in Nix's
//! key-file format, interchangeable with `nix key generate-secret`.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _, Result};

use crate::core::nix::keys::SecretKey;

pub fn run(name: &str, out: &Path) -> Result<()> {
    let secret = new_secret_key(name)?;
    let public = write_key_pair(&secret, out)?;
    // Data on stdout: the public key, for trusted-public-keys.
    println!("{public}");
    Ok(())
}

/// A fresh key named `name` (Nix's rules: no ':' and no whitespace).
pub fn new_secret_key(name: &str) -> Result<SecretKey> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for the key: {e}"))?;
    SecretKey::from_seed(name, seed).with_context(|| format!("key name {name:?}"))
}

/// Writes `secret` to `out` (0600, never over an existing file) and its public key to
/// `out.pub`; returns the public key's text.
pub fn write_key_pair(secret: &SecretKey, out: &Path) -> Result<String> {
    let public_path = {
        let mut p = out.as_os_str().to_owned();
        p.push(".pub");
        PathBuf::from(p)
    };
    // create_new: never overwrite a key someone may already trust.
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    file.write_all(secret.to_nix_text().as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    let public = secret.public_key().to_string();
    fs::write(&public_path, &public)
        .with_context(|| format!("writing {}", public_path.display()))?;
    eprintln!(
        "wrote secret key to {} and public key to {}",
        out.display(),
        public_path.display()
    );
    Ok(public)
}

/// Reads a secret key file; errors name the file, never the key text.
pub fn read_secret_key(path: &Path) -> Result<SecretKey> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.trim()
        .parse()
        .with_context(|| format!("{} is not a Nix secret key file", path.display()))
}
