//! `nixflare login NAME URL` and `nixflare logout NAME`: save (or forget) a cache's
//! URL, upload token and signing key's path (see `settings.rs` for the file).
//!
//! The token comes from a file or stdin, never an argument (arguments show in `ps`).
//! Before anything is saved, the cache is asked what it makes of the token and whether
//! it trusts the signing key, so a typo shows now and not at the first push.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use super::auth::read_token_file;
use super::client::{Auth, Client};
use super::id_token::IdTokens;
use super::keygen::read_secret_key;
use super::settings::{self, SavedCache, Settings};
use crate::core::token::Permissions;

#[derive(Args)]
pub struct LoginArgs {
    /// The name commands will know the cache by (`--cache NAME`).
    name: String,
    /// The cache's URL, e.g. https://cache.example.org.
    url: String,
    /// Read the upload token from FILE (`-`, or leaving this out: from stdin).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Save no token (commands then look in netrc, take --token-file, or in a GitHub job
    /// with `id-token: write` use the job's ID token).
    #[arg(long, conflicts_with = "token_file")]
    no_token: bool,
    /// The narinfo signing key pushes use (its path is saved, not the key).
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Make this the cache commands use when none is named (the first saved cache is).
    #[arg(long)]
    default: bool,
    /// Save without asking the cache (for a cache that is not up yet).
    #[arg(long)]
    no_verify: bool,
}

pub fn run(args: LoginArgs) -> Result<()> {
    settings::check_name(&args.name)?;
    let url = args.url.trim_end_matches('/').to_owned();
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("{url:?} is not an http(s) URL");
    }
    super::auth::host_of(&url)?;
    let token = match (&args.token_file, args.no_token) {
        (_, true) => None,
        (Some(file), false) if file.as_os_str() != "-" => Some(read_token_file(file)?),
        _ => Some(read_token_stdin()?),
    };
    let signing_key = match &args.signing_key {
        Some(file) => {
            // Absolute, so the saved path means the same from any directory.
            let file = std::path::absolute(file)
                .with_context(|| format!("resolving {}", file.display()))?;
            Some((read_secret_key(&file)?, file))
        }
        None => None,
    };
    let mut checked = String::new();
    if !args.no_verify {
        // Without a token to save, a CI job that may ask for an ID token checks with it
        // (what its pushes will use).
        let credential = match &token {
            Some(token) => Some(Auth::Token(token.clone())),
            None => IdTokens::from_env(&url)?.map(|tokens| Auth::IdTokens(Arc::new(tokens))),
        };
        let has_credential = credential.is_some();
        let client = Client::with_auth(&url, credential, 2);
        let info = client.info()?;
        if let Some((key, _)) = &signing_key {
            if !info.public_keys.contains(&key.public_key()) {
                bail!(
                    "the cache does not trust the signing key {:?} (it lists: {}): add {} to its PUBLIC_KEYS, or pass the key it trusts",
                    key.name(),
                    info.public_keys
                        .iter()
                        .map(|k| k.name().to_owned())
                        .collect::<Vec<_>>()
                        .join(", "),
                    key.public_key()
                );
            }
        }
        if has_credential {
            let whoami = client.whoami()?;
            if !whoami.permissions.contains(Permissions::WRITE) {
                eprintln!(
                    "warning: this token cannot upload (its permissions: {})",
                    whoami.permissions
                );
            }
            checked = format!(
                "; the token is {:?}'s ({})",
                whoami.subject, whoami.permissions
            );
        }
    }

    let file = settings::path()?;
    let mut saved = Settings::load(&file)?;
    let replaced = saved.caches.contains_key(&args.name);
    saved.caches.insert(
        args.name.clone(),
        SavedCache {
            url: url.clone(),
            token,
            signing_key: signing_key.map(|(_, path)| path),
        },
    );
    let default_missing = saved
        .default
        .as_ref()
        .is_none_or(|d| !saved.caches.contains_key(d));
    if args.default || default_missing {
        saved.default = Some(args.name.clone());
    }
    saved.save(&file)?;
    eprintln!(
        "{} cache {:?} ({url}) in {}{checked}{}",
        if replaced { "updated" } else { "saved" },
        args.name,
        file.display(),
        if saved.default.as_deref() == Some(args.name.as_str()) {
            "; it is the default"
        } else {
            ""
        }
    );
    Ok(())
}

pub fn logout(name: &str) -> Result<()> {
    let file = settings::path()?;
    let mut saved = Settings::load(&file)?;
    if saved.caches.remove(name).is_none() {
        bail!("no cache named {name:?} is saved in {}", file.display());
    }
    if saved.default.as_deref() == Some(name) {
        saved.default = None;
    }
    saved.save(&file)?;
    eprintln!("forgot cache {name:?} (its token still works until it expires or is revoked)");
    Ok(())
}

fn read_token_stdin() -> Result<String> {
    let stdin = std::io::stdin();
    let mut text = String::new();
    if stdin.is_terminal() {
        eprint!("upload token (from `nixflare token mint`; not shown): ");
        // The terminal's echo off while the token is typed (stty: no crate for one call).
        let echo = |setting: &str| {
            std::process::Command::new("stty")
                .arg(setting)
                .stdin(std::process::Stdio::inherit())
                .status()
                .is_ok_and(|s| s.success())
        };
        let hidden = echo("-echo");
        let read = stdin.read_line(&mut text);
        if hidden {
            echo("echo");
        }
        eprintln!();
        read.context("reading the token")?;
    } else {
        stdin
            .lock()
            .take(64 * 1024)
            .read_to_string(&mut text)
            .context("reading the token from stdin")?;
    }
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("stdin did not hold one token (pass --token-file FILE, or --no-token)");
    }
    Ok(token.to_owned())
}
