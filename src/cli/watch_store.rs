//! `nixflare watch-store`: queues every path that becomes valid in the local store and
//! drains the queue as `nixflare watch` does, in one process.
//!
//! How a new path is seen without a hook or a trusted user: Nix locks a path it is
//! about to add (building, substituting, `nix-store --add`) with `<path>.lock` beside
//! it in the store directory, and deletes that file once the path is registered valid
//! (`PathLocks::setDeletion`, libstore/pathlocks.cc). The deletion is an inotify
//! (FSEvents on macOS) event on the store directory, which any user may watch. Each
//! candidate is then checked with Nix itself (`--check-validity`, `path-info`), which
//! needs no trust either; attic's watch-store asks the daemon for more and so needs a
//! trusted user (attic#321).
//!
//! Not everything that appears is ours to push. Skipped before queueing:
//! - `.drv` files (build recipes, not results);
//! - paths signed by an upstream cache's key: substituted from there, so it serves
//!   them. The keys are `--upstream-key`, else the `trusted-public-keys` of Nix's own
//!   configuration minus our signing key. A signature counts only if it verifies.
//!
//! The push then skips paths a declared upstream serves (narinfo HEADs), as `push` does.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use notify::Watcher as _;

use super::nix_tool;
use super::pathinfo;
use super::push::{self, PushOptions};
use super::queue::Queue;
use super::watch::{open_to_drain, subscribe, Drainer};
use super::{PushFlags, Remote};
use crate::core::nix::keys::{any_verifies, PublicKey};
use crate::core::nix::narinfo::fingerprint;

#[derive(Args)]
pub struct WatchStoreArgs {
    #[command(flatten)]
    remote: Remote,
    #[command(flatten)]
    flags: PushFlags,
    /// The queue the found paths go through (default: $XDG_STATE_HOME/nixflare/queue).
    #[arg(long, env = "NIXFLARE_QUEUE", value_name = "DIR")]
    queue: Option<PathBuf>,
    /// Most store paths (roots) per push.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    batch_paths: usize,
    /// The store directory to watch (default: $NIX_STORE_DIR, else /nix/store).
    #[arg(long, value_name = "DIR")]
    store_dir: Option<PathBuf>,
    /// A public key (name:base64) marking paths an upstream cache signed, which are not
    /// pushed (repeat for several). Default: Nix's trusted-public-keys, minus ours.
    #[arg(long, value_name = "KEY")]
    upstream_key: Vec<String>,
}

pub fn run(args: WatchStoreArgs) -> Result<()> {
    let (queue, _lock) = open_to_drain(args.queue.as_deref(), None)?;
    let options = args.flags.options(&args.remote, Vec::new())?;
    let store_dir = args
        .store_dir
        .clone()
        .or_else(|| std::env::var_os("NIX_STORE_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/nix/store"));
    let ours = options.key.public_key();
    let upstream_keys: Vec<PublicKey> = if args.upstream_key.is_empty() {
        nix_trusted_keys()?
    } else {
        args.upstream_key
            .iter()
            .map(|k| k.parse().with_context(|| format!("--upstream-key {k:?}")))
            .collect::<Result<_>>()?
    }
    .into_iter()
    .filter(|k| *k != ours)
    .collect();

    let (found_tx, found_rx) = mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let event = match event {
            Ok(event) => event,
            // E.g. the kernel's event queue overflowed: paths registered meanwhile
            // were not seen. Say so loudly; they can be pushed by hand.
            Err(err) => {
                eprintln!(
                    "nixflare watch-store: warning: store events may have been lost ({err}): push what was built just now with `nixflare push`"
                );
                return;
            }
        };
        if event.need_rescan() {
            eprintln!(
                "nixflare watch-store: warning: the kernel dropped store events: push what was built just now with `nixflare push`"
            );
        }
        if !matches!(event.kind, notify::EventKind::Remove(_)) {
            return;
        }
        for path in event.paths {
            if let Some(stem) = path.to_str().and_then(|p| p.strip_suffix(".lock")) {
                let _ = found_tx.send(PathBuf::from(stem));
            }
        }
    })
    .context("watching the store")?;
    watcher
        .watch(&store_dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", store_dir.display()))?;
    let keys: Vec<String> = upstream_keys.iter().map(|k| k.name().to_owned()).collect();
    eprintln!(
        "watching {} for new paths (skipping those signed by: {}), queue {}",
        store_dir.display(),
        if keys.is_empty() {
            "none".to_owned()
        } else {
            keys.join(", ")
        },
        queue.dir().display()
    );

    let wake = subscribe(&queue)?;
    std::thread::scope(|scope| {
        let collector_queue = &queue;
        let store_dir = store_dir.as_path();
        let upstream_keys = &upstream_keys;
        scope.spawn(move || collect(found_rx, collector_queue, store_dir, upstream_keys));
        let mut pusher = |options: PushOptions| push::run(options);
        let mut drainer = Drainer::new(&queue, options, args.batch_paths.max(1), &mut pusher);
        let outcome = drainer.drain(&wake.events, false, None);
        // The drainer only returns on an error of the queue itself: stop watching.
        drop(watcher);
        outcome
    })
}

/// Gathers candidates (a tenth of a second after the first of a burst), keeps the new
/// valid paths no upstream signed, and queues them as one entry.
fn collect(
    found: mpsc::Receiver<PathBuf>,
    queue: &Queue,
    store_dir: &Path,
    upstream: &[PublicKey],
) {
    while let Ok(first) = found.recv() {
        let mut candidates = vec![first];
        let until = Instant::now() + Duration::from_millis(100);
        while let Ok(more) = found.recv_timeout(until.saturating_duration_since(Instant::now())) {
            candidates.push(more);
        }
        let mut seen = HashSet::new();
        let candidates: Vec<String> = candidates
            .into_iter()
            .filter(|p| p.parent() == Some(store_dir))
            .filter_map(|p| p.to_str().map(str::to_owned))
            .filter(|p| !p.ends_with(".drv"))
            .filter(|p| seen.insert(p.clone()))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        match ours_to_push(&candidates, store_dir, upstream) {
            Ok((push, skipped)) => {
                for path in &skipped {
                    eprintln!(
                        "nixflare watch-store: {path}: signed by an upstream cache, not pushed"
                    );
                }
                let paths: Vec<&str> = push.iter().map(String::as_str).collect();
                if let Err(err) = queue.append(&paths) {
                    eprintln!("nixflare watch-store: {err:#}");
                }
            }
            // Queued unchecked rather than lost: the drainer asks Nix again, and the
            // push skips what the cache's upstreams serve.
            Err(err) => {
                eprintln!(
                    "nixflare watch-store: checking new paths: {err:#}; queueing them unchecked"
                );
                let paths: Vec<&str> = candidates.iter().map(String::as_str).collect();
                if let Err(err) = queue.append(&paths) {
                    eprintln!("nixflare watch-store: {err:#}");
                }
            }
        }
    }
}

/// Splits valid `candidates` into those to push and those an upstream signed.
fn ours_to_push(
    candidates: &[String],
    store_dir: &Path,
    upstream: &[PublicKey],
) -> Result<(Vec<String>, Vec<String>)> {
    let args = ["--check-validity", "--print-invalid"].map(String::from);
    let out = nix_tool::stdout("nix-store", args.iter().chain(candidates))?;
    let invalid: HashSet<&str> = out.lines().collect();
    let valid: Vec<&String> = candidates
        .iter()
        .filter(|p| !invalid.contains(p.as_str()))
        .collect();
    if valid.is_empty() || upstream.is_empty() {
        return Ok((valid.into_iter().cloned().collect(), Vec::new()));
    }
    let json = nix_tool::stdout(
        "nix",
        ["path-info", "--json"]
            .iter()
            .map(|s| s.to_string())
            .chain(valid.iter().map(|p| p.to_string())),
    )?;
    let store = store_dir.to_string_lossy();
    let infos = pathinfo::parse(&json, &store)?;
    let upstream_signed: HashSet<String> = infos
        .iter()
        .filter(|info| {
            let message = fingerprint(
                &store,
                &info.path,
                &info.nar_hash,
                info.nar_size,
                &info.references,
            );
            any_verifies(upstream, &info.signatures, message.as_bytes())
        })
        .map(|info| format!("{store}/{}", info.path))
        .collect();
    let (skipped, push): (Vec<String>, Vec<String>) = valid
        .into_iter()
        .cloned()
        .partition(|p| upstream_signed.contains(p));
    Ok((push, skipped))
}

/// The `trusted-public-keys` of Nix's configuration (as `nix show-config` reports it).
fn nix_trusted_keys() -> Result<Vec<PublicKey>> {
    let json = nix_tool::stdout("nix", ["show-config", "--json"])
        .context("reading Nix's trusted-public-keys (or pass --upstream-key)")?;
    let config: serde_json::Value =
        serde_json::from_str(&json).context("nix show-config printed no JSON")?;
    let keys = config["trusted-public-keys"]["value"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // A key Nix accepts but we cannot read is no reason to stop watching.
    Ok(keys
        .iter()
        .filter_map(|k| k.as_str()?.parse().ok())
        .collect())
}
