//! `nixflare watch`: drains the push queue (`queue.rs`) into the cache.
//!
//! Each round takes the oldest entries (up to `--batch-paths` store paths), pushes
//! their closures with `push::run` (batch queries, upstream skip, multipart, spool
//! resume), and deletes the entries only then. So:
//! - a kill at any moment loses nothing: the entries are still there, and the next
//!   run asks the cache what it lacks before sending anything, while the spool
//!   remembers the parts of a big NAR already sent;
//! - while the cache is down or refusing us (push's preflight fails: unreachable,
//!   token refused, key not trusted), every entry waits: backoff from 1 s doubling to
//!   60 s;
//! - after any other failure the batch's entries each wait alone, with their own
//!   backoff, so a path the cache refuses holds up nothing else;
//! - paths no longer valid in the local store (collected since) are dropped with a
//!   warning: nothing could push them.
//!
//! One drainer per queue (an flock); `--exit-when-empty` makes the end-of-job drain of
//! CI, bounded by `--timeout`, and waits for a watcher that is still stopping.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use clap::Args;
use notify::Watcher as _;

use super::nix_tool;
use super::push::{self, PushOptions, PushReport};
use super::queue::{self, DrainLock, Entry, Queue};
use super::{PushFlags, Remote};
use crate::core::nix::store_path::StorePathHash;

#[derive(Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub remote: Remote,
    #[command(flatten)]
    pub flags: PushFlags,
    /// The queue to drain (default: $XDG_STATE_HOME/nixflare/queue).
    #[arg(long, env = "NIXFLARE_QUEUE", value_name = "DIR")]
    pub queue: Option<PathBuf>,
    /// Stop once the queue is empty instead of waiting for more (the end of a CI job).
    #[arg(long)]
    pub exit_when_empty: bool,
    /// With --exit-when-empty: give up after this many seconds, failing if entries
    /// remain.
    #[arg(long, value_name = "SECONDS", requires = "exit_when_empty")]
    pub timeout: Option<u64>,
    /// Most store paths (roots) per push.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub batch_paths: usize,
}

pub fn run(args: WatchArgs) -> Result<()> {
    // A timeout too large to represent is no timeout.
    let deadline = args
        .timeout
        .and_then(|seconds| Instant::now().checked_add(Duration::from_secs(seconds)));
    // The end-of-job drain waits for a watcher that is still stopping.
    let wait = args.exit_when_empty.then_some(deadline);
    let (queue, _lock) = open_to_drain(args.queue.as_deref(), wait)?;
    // Settings, token and key are checked once, before waiting for anything.
    let options = args.flags.options(&args.remote, Vec::new())?;
    let wake = subscribe(&queue)?;
    let mut pusher = |options: PushOptions| push::run(options);
    let mut drainer = Drainer::new(&queue, options, args.batch_paths.max(1), &mut pusher);
    eprintln!("watching {} for paths to push", queue.dir().display());
    drainer.drain(&wake.events, args.exit_when_empty, deadline)
}

/// The queue at `dir` (or the default), and the right to drain it. With `wait`, a
/// drainer still stopping (a watcher just killed) is waited for, until the deadline if
/// any.
pub fn open_to_drain(
    dir: Option<&std::path::Path>,
    wait: Option<Option<Instant>>,
) -> Result<(Queue, DrainLock)> {
    let dir = match dir {
        Some(dir) => dir.to_owned(),
        None => queue::default_dir()?,
    };
    let queue = Queue::open(&dir)?;
    loop {
        if let Some(lock) = queue.try_lock()? {
            return Ok((queue, lock));
        }
        match wait {
            Some(deadline) if deadline.is_none_or(|d| Instant::now() < d) => {
                std::thread::sleep(Duration::from_millis(100));
            }
            _ => bail!(
                "another `nixflare watch` is draining {} (one drainer per queue)",
                dir.display()
            ),
        }
    }
}

/// Wakes the drainer when the queue changes; held for as long as it watches.
pub struct Subscription {
    _watcher: notify::RecommendedWatcher,
    pub events: mpsc::Receiver<()>,
}

pub fn subscribe(queue: &Queue) -> Result<Subscription> {
    let (tx, events) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only a new entry wakes the drainer: its own listing opens the directory, and
        // waking on that (inotify's IN_OPEN) would spin. An error may mean lost events:
        // wake then too, to list again.
        let new_entry = match &event {
            Ok(event) => {
                matches!(
                    event.kind,
                    notify::EventKind::Create(_)
                        | notify::EventKind::Modify(notify::event::ModifyKind::Name(_))
                ) && event
                    .paths
                    .iter()
                    .any(|p| p.extension().is_some_and(|e| e == "paths"))
            }
            Err(_) => true,
        };
        if new_entry {
            let _ = tx.send(());
        }
    })
    .context("watching the queue")?;
    watcher
        .watch(queue.dir(), notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", queue.dir().display()))?;
    Ok(Subscription {
        _watcher: watcher,
        events,
    })
}

/// When an entry that failed on its own may be tried again (it then goes alone).
struct Wait {
    until: Instant,
    failures: u32,
}

pub struct Drainer<'a> {
    queue: &'a Queue,
    /// The push settings; `paths` is filled in for each round.
    options: PushOptions,
    batch_paths: usize,
    push: &'a mut dyn FnMut(PushOptions) -> Result<PushReport>,
    /// Entries that failed on their own, by name.
    waits: HashMap<String, Wait>,
    /// Store paths pushed (sent now) since the start.
    pushed: usize,
    /// What Nix is asked (replaced in tests).
    invalid_paths: fn(&[String]) -> Result<HashSet<String>>,
    outputs_of: fn(&[String]) -> Result<Vec<String>>,
    /// The first backoff step (1 s; shorter in tests).
    backoff_unit: Duration,
}

/// Backoff after `failures` failures in a row: one `unit`, doubling, at most 60 units.
fn backoff(unit: Duration, failures: u32) -> Duration {
    (unit * (1u32 << failures.saturating_sub(1).min(6))).min(unit * 60)
}

impl<'a> Drainer<'a> {
    pub fn new(
        queue: &'a Queue,
        options: PushOptions,
        batch_paths: usize,
        push: &'a mut dyn FnMut(PushOptions) -> Result<PushReport>,
    ) -> Self {
        Drainer {
            queue,
            options,
            batch_paths,
            push,
            waits: HashMap::new(),
            pushed: 0,
            invalid_paths,
            outputs_of,
            backoff_unit: Duration::from_secs(1),
        }
    }

    pub fn drain(
        &mut self,
        wake: &mpsc::Receiver<()>,
        exit_when_empty: bool,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut cache_failures = 0u32;
        loop {
            let entries = self.queue.entries()?;
            let names: HashSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            self.waits.retain(|name, _| names.contains(name.as_str()));
            if entries.is_empty() && exit_when_empty {
                eprintln!("the queue is empty: {} paths pushed", self.pushed);
                return Ok(());
            }
            let now = Instant::now();
            if let Some(deadline) = deadline {
                if now >= deadline {
                    bail!(
                        "{} queue entries are still waiting after the timeout (in {})",
                        entries.len(),
                        self.queue.dir().display()
                    );
                }
            }
            let batch = self.next_batch(&entries, now);
            if batch.is_empty() {
                // Nothing ready: sleep until an entry's wait ends, something is queued,
                // or (a missed event) half a minute.
                let until = self
                    .waits
                    .values()
                    .map(|w| w.until)
                    .chain(deadline)
                    .min()
                    .unwrap_or(now + Duration::from_secs(30));
                let _ = wake.recv_timeout(until.saturating_duration_since(now));
                // One listing answers every wake-up so far.
                while wake.try_recv().is_ok() {}
                continue;
            }
            match self.push_batch(&batch) {
                Ok(()) => cache_failures = 0,
                Err(err) if cache_level(&err) => {
                    cache_failures += 1;
                    let wait = backoff(self.backoff_unit, cache_failures);
                    eprintln!(
                        "nixflare watch: {err:#}; {} entries wait, retrying in {:.0?}",
                        entries.len(),
                        wait
                    );
                    let wait_until = deadline.map_or(now + wait, |d| d.min(now + wait));
                    std::thread::sleep(wait_until.saturating_duration_since(Instant::now()));
                }
                Err(err) => {
                    cache_failures = 0;
                    for entry in &batch {
                        let failures = self.waits.get(&entry.name).map_or(0, |w| w.failures) + 1;
                        let wait = backoff(self.backoff_unit, failures);
                        self.waits.insert(
                            entry.name.clone(),
                            Wait {
                                until: Instant::now() + wait,
                                failures,
                            },
                        );
                    }
                    eprintln!(
                        "nixflare watch: pushing {} failed: {err:#}; {} retried alone",
                        describe(&batch),
                        if batch.len() == 1 {
                            "it is"
                        } else {
                            "each entry is"
                        }
                    );
                }
            }
        }
    }

    /// The oldest ready entries: one that failed on its own goes alone; others go
    /// together up to `batch_paths` paths.
    fn next_batch(&self, entries: &[Entry], now: Instant) -> Vec<Entry> {
        let mut batch: Vec<Entry> = Vec::new();
        let mut paths = 0;
        for entry in entries {
            match self.waits.get(&entry.name) {
                Some(wait) if wait.until > now => continue,
                Some(_) => {
                    if batch.is_empty() {
                        return vec![entry.clone()];
                    }
                    continue;
                }
                None => {}
            }
            if !batch.is_empty() && paths + entry.paths.len() > self.batch_paths {
                break;
            }
            paths += entry.paths.len();
            batch.push(entry.clone());
        }
        batch
    }

    fn push_batch(&mut self, batch: &[Entry]) -> Result<()> {
        let mut roots: Vec<String> = batch.iter().flat_map(|e| e.paths.clone()).collect();
        roots.sort();
        roots.dedup();
        let mut invalid = (self.invalid_paths)(&roots)?;
        // A derivation stands for its outputs (what `hook` queues under Nix 2.8.0).
        let derivations: Vec<String> = roots
            .iter()
            .filter(|p| p.ends_with(".drv") && !invalid.contains(*p))
            .cloned()
            .collect();
        if !derivations.is_empty() {
            let outputs = (self.outputs_of)(&derivations)?;
            invalid.extend((self.invalid_paths)(&outputs)?);
            roots.retain(|p| !p.ends_with(".drv"));
            roots.extend(outputs);
            roots.sort();
            roots.dedup();
        }
        if !invalid.is_empty() {
            eprintln!(
                "nixflare watch: dropping {} paths no longer in the local store: {}",
                invalid.len(),
                invalid.iter().cloned().collect::<Vec<_>>().join(" ")
            );
            roots.retain(|p| !invalid.contains(p));
        }
        if !roots.is_empty() {
            let mut options = self.options.clone();
            options.paths = roots.clone();
            let report = (self.push)(options)?;
            self.pushed += report.pushed;
            eprintln!(
                "nixflare watch: {}: closure of {} paths, {} sent, {} were on the cache, {} left to upstream caches",
                describe(batch),
                report.closure,
                report.pushed,
                report.present,
                report.upstream
            );
        }
        for entry in batch {
            self.queue.remove(entry)?;
        }
        Ok(())
    }
}

fn describe(batch: &[Entry]) -> String {
    let roots: Vec<&str> = batch
        .iter()
        .flat_map(|e| &e.paths)
        .map(String::as_str)
        .collect();
    match roots.as_slice() {
        [one] => one.to_string(),
        [first, rest @ ..] => format!("{first} and {} more", rest.len()),
        [] => "an empty entry".to_owned(),
    }
}

/// True if `err` says the cache is down or refusing us, not that a path is bad: the
/// checks before any work failed (unreachable, token refused, key not trusted). A
/// failure later, even a 5xx, may be one path's doing, so it isolates the batch's
/// entries instead: were the cache down, their next preflight says so.
fn cache_level(err: &anyhow::Error) -> bool {
    err.downcast_ref::<push::Preflight>().is_some()
}

/// The paths of `paths` that can never be pushed: not store paths at all, or no
/// longer valid in the local store (any user may ask Nix). A failure to ask is an
/// error, never "invalid": dropping an entry loses it.
fn invalid_paths(paths: &[String]) -> Result<HashSet<String>> {
    let mut invalid: HashSet<String> = paths.iter().filter(|p| !well_formed(p)).cloned().collect();
    let candidates: Vec<&String> = paths.iter().filter(|p| well_formed(p)).collect();
    for chunk in candidates.chunks(500) {
        let args = ["--check-validity", "--print-invalid"].map(String::from);
        let out = nix_tool::stdout("nix-store", args.iter().chain(chunk.iter().copied()))?;
        invalid.extend(out.lines().map(str::to_owned));
    }
    Ok(invalid)
}

/// The output paths of valid derivations.
fn outputs_of(derivations: &[String]) -> Result<Vec<String>> {
    let args = ["--query", "--outputs"].map(String::from);
    let out = nix_tool::stdout("nix-store", args.iter().chain(derivations))?;
    Ok(out
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `/<store dir>/<32 nix32 characters>-<name>`, as far as can be told without knowing
/// the store dir. The name is Nix's business (its rules have changed): a path that
/// looks like a store path is asked about, never dropped on our own judgement.
fn well_formed(path: &str) -> bool {
    let path = std::path::Path::new(path);
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    path.is_absolute()
        && path
            .parent()
            .is_some_and(|dir| dir != std::path::Path::new("/"))
        && name.len() > 33
        && name.as_bytes()[32] == b'-'
        && name[..32].parse::<StorePathHash>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::HttpError;
    use crate::core::http::Method;

    const KEY: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";

    fn options() -> PushOptions {
        PushOptions {
            cache: "http://cache.invalid".into(),
            key: KEY.parse().unwrap(),
            auth: crate::cli::client::Auth::Token("t".into()),
            paths: Vec::new(),
            jobs: 1,
            codec: super::super::nar::Codec {
                compression: crate::core::nix::nar_file::Compression::Zstd,
                level: 3,
                threads: 1,
            },
            spool: "/nonexistent".into(),
            limit_rate: None,
            attempts: 1,
            quiet: true,
            upstreams: None,
            per_path_queries: false,
        }
    }

    fn queue(name: &str) -> Queue {
        let dir =
            std::env::temp_dir().join(format!("nixflare-drain-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Queue::open(&dir).unwrap()
    }

    /// Paths named "...-gone" are no longer in the store; "x.drv" built "x-out".
    fn fake_invalid(paths: &[String]) -> Result<HashSet<String>> {
        Ok(paths
            .iter()
            .filter(|p| p.ends_with("-gone"))
            .cloned()
            .collect())
    }

    fn fake_outputs(derivations: &[String]) -> Result<Vec<String>> {
        Ok(derivations
            .iter()
            .map(|d| d.replace(".drv", "-out"))
            .collect())
    }

    fn drainer<'a>(
        queue: &'a Queue,
        push: &'a mut dyn FnMut(PushOptions) -> Result<PushReport>,
    ) -> Drainer<'a> {
        let mut drainer = Drainer::new(queue, options(), 2, push);
        drainer.invalid_paths = fake_invalid;
        drainer.outputs_of = fake_outputs;
        drainer.backoff_unit = Duration::from_millis(1);
        drainer
    }

    fn down() -> anyhow::Error {
        let reply = crate::cli::client::Reply {
            status: 503,
            body: String::new(),
        };
        anyhow::Error::new(HttpError::new(Method::Get, "_nixflare/info", &reply))
    }

    #[test]
    fn a_cache_that_is_down_delays_everything_and_loses_nothing() {
        let queue = queue("down");
        for path in ["/s/a", "/s/b", "/s/c-gone", "/s/d.drv"] {
            queue.append(&[path]).unwrap();
        }
        let mut calls: Vec<Vec<String>> = Vec::new();
        let mut push = |options: PushOptions| {
            calls.push(options.paths.clone());
            if calls.len() <= 3 {
                return Err(down().context(push::Preflight));
            }
            Ok(PushReport {
                pushed: options.paths.len(),
                ..PushReport::default()
            })
        };
        let (_tx, wake) = mpsc::channel();
        drainer(&queue, &mut push).drain(&wake, true, None).unwrap();
        assert!(queue.entries().unwrap().is_empty());
        // Batches of at most two roots, retried whole while the cache was down; the
        // collected path dropped; the derivation pushed as its output.
        let all: Vec<&Vec<String>> = calls.iter().collect();
        assert_eq!(all[0], &vec!["/s/a".to_owned(), "/s/b".to_owned()]);
        assert!(all[..3].iter().all(|c| *c == all[0]));
        assert_eq!(all.last().unwrap(), &&vec!["/s/d-out".to_owned()]);
        assert!(!calls.iter().flatten().any(|p| p.contains("gone")));
    }

    #[test]
    fn store_paths_are_told_by_their_hash_part() {
        assert!(well_formed("/nix/store/00000000000000000000000000000000-x"));
        // A name Nix may accept and our parser does not is still Nix's to judge.
        assert!(well_formed(
            "/nix/store/00000000000000000000000000000000-.hidden"
        ));
        for bad in [
            "relative",
            "/nix/store/short-x",
            "/00000000000000000000000000000000-x",
            "/nix/store/0000000000000000000000000000000e-x",
            "/nix/store/00000000000000000000000000000000x",
        ] {
            assert!(!well_formed(bad), "{bad}");
        }
    }

    #[test]
    fn a_path_the_cache_refuses_waits_alone_and_holds_up_nothing() {
        let queue = queue("refused");
        for path in ["/s/bad", "/s/a", "/s/b", "/s/c"] {
            queue.append(&[path]).unwrap();
        }
        let mut calls: Vec<Vec<String>> = Vec::new();
        let mut push = |options: PushOptions| {
            calls.push(options.paths.clone());
            if options.paths.iter().any(|p| p.ends_with("bad")) {
                anyhow::bail!("the cache refused the narinfo");
            }
            Ok(PushReport::default())
        };
        let (_tx, wake) = mpsc::channel();
        let deadline = Instant::now() + Duration::from_millis(300);
        let outcome = drainer(&queue, &mut push).drain(&wake, true, Some(deadline));
        assert!(outcome.unwrap_err().to_string().contains("1 queue entries"));
        let left = queue.entries().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].paths, ["/s/bad"]);
        // After failing with "/s/a", "bad" was retried alone, again and again.
        let alone = calls
            .iter()
            .filter(|c| *c == &vec!["/s/bad".to_owned()])
            .count();
        assert!(alone >= 2, "{calls:?}");
        assert!(
            calls.contains(&vec!["/s/a".to_owned()])
                || calls.contains(&vec!["/s/a".to_owned(), "/s/b".to_owned()])
        );
        let _ = std::fs::remove_dir_all(queue.dir());
    }
}
