//! `nixflare hook`: Nix's post-build-hook. It queues the build's outputs
//! (`$OUT_PATHS`, space-separated; where Nix 2.8.0 leaves that empty, `$DRV_PATH`,
//! whose outputs the watcher looks up) for `nixflare watch` and returns: no network,
//! no settings read, no key touched, so a slow or unreachable cache never slows a
//! build.
//!
//! Nix runs the hook synchronously after every build, as the daemon's user (root on a
//! multi-user install), with no arguments, and a failing hook stops Nix from building
//! further. So this always exits 0: a problem (a full disk, a queue it may not write)
//! is a warning in the build log, and the outputs can still be pushed by hand.

use std::path::PathBuf;

use clap::Args;

use super::queue::{self, Queue};

#[derive(Args)]
pub struct HookArgs {
    /// The queue `nixflare watch` drains (default: $XDG_STATE_HOME/nixflare/queue).
    #[arg(long, env = "NIXFLARE_QUEUE", value_name = "DIR")]
    queue: Option<PathBuf>,
}

pub fn run(args: HookArgs) -> anyhow::Result<()> {
    let outcome = (|| -> anyhow::Result<usize> {
        let dir = match args.queue {
            Some(dir) => dir,
            None => queue::default_dir()?,
        };
        let out_paths = std::env::var("OUT_PATHS").unwrap_or_default();
        let drv_path = std::env::var("DRV_PATH").unwrap_or_default();
        let mut paths: Vec<&str> = out_paths.split_whitespace().collect();
        if paths.is_empty() && !drv_path.is_empty() {
            // Nix 2.8.0 sets OUT_PATHS to "": queue the derivation, whose outputs the
            // watcher looks up (a Nix query here would cost the build ~30 ms).
            paths.push(drv_path.trim());
        }
        if paths.is_empty() {
            return Ok(0);
        }
        Queue::open_existing(&dir)?.append(&paths)?;
        Ok(paths.len())
    })();
    if let Err(err) = outcome {
        // Not an error exit: that would stop the user's builds.
        eprintln!("nixflare hook: warning: the outputs were not queued for pushing: {err:#}");
    }
    Ok(())
}
