//! `nixflare push`: uploads the closures of store paths.
//!
//! 1. Ask the cache for its limits and keys (`/_nixflare/info`) and check the token
//!    (`/_nixflare/whoami`) and that the cache trusts our signing key: fail before any
//!    work is done.
//! 2. `nix path-info --json --recursive` gives the closure; batch queries
//!    (`/_nixflare/missing`, a thousand paths a request) tell what the cache lacks, and
//!    narinfo HEADs to the upstream caches (those the cache declares, or `--upstream`)
//!    which of those need not be pushed at all. Against a cache older than the index,
//!    one HEAD per path.
//! 3. Missing paths are dumped, checked and compressed into the spool (`nar.rs`), then
//!    uploaded in parallel (`upload.rs`).
//! 4. Narinfos are signed here and published once the path's NAR and every reference
//!    are on the cache, so the cache never shows a path it cannot fully serve.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use indicatif::HumanBytes;

use super::client::{parse_rate, retryable_status, Auth, Client};
use super::endpoints::NarinfoOutcome;
use super::nar::{self, Codec, Prepared};
use super::nix_tool;
use super::parallel;
use super::pathinfo::{self, PathInfo};
use super::progress::Reporter;
use super::spool::Spool;
use super::upload::{NarOutcome, NarUpload};
use crate::core::api::{CacheInfo, NarinfoOutcome as BatchOutcome, NarinfoResult};
use crate::core::index::passes::publish::references_first;
use crate::core::index::MAX_QUERY_HASHES;
use crate::core::nix::keys::SecretKey;
use crate::core::nix::nar_file::NarFile;
use crate::core::nix::narinfo::NarInfo;
use crate::core::nix::store_path::StorePathHash;
use crate::core::publish::MAX_BATCH_REFERENCES;
use crate::core::token::Permissions;

#[derive(Clone)]
pub struct PushOptions {
    pub cache: String,
    pub key: SecretKey,
    pub auth: Auth,
    pub paths: Vec<String>,
    pub jobs: usize,
    pub codec: Codec,
    pub spool: PathBuf,
    pub limit_rate: Option<String>,
    pub attempts: u32,
    pub quiet: bool,
    /// Caches whose paths are not pushed; `None`: those the cache declares.
    pub upstreams: Option<Vec<String>>,
    /// Ask with one HEAD per path instead of batch queries (what a cache older than
    /// the index needs; the benchmark's baseline).
    pub per_path_queries: bool,
}

/// What a push did, in paths of the closure.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushReport {
    pub closure: usize,
    /// Sent and published now.
    pub pushed: usize,
    /// On the cache already.
    pub present: usize,
    /// Left to the upstream caches.
    pub upstream: usize,
}

/// Marks an error of the checks before any work (cache unreachable, token refused, key
/// not trusted): it says nothing about the paths, so a watcher waits and retries.
#[derive(Debug)]
pub struct Preflight;

impl std::fmt::Display for Preflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the cache cannot take pushes")
    }
}

pub fn run(options: PushOptions) -> Result<PushReport> {
    let started = Instant::now();
    let reporter = Arc::new(Reporter::new(options.quiet));
    let mut client =
        Client::with_auth(&options.cache, Some(options.auth.clone()), options.attempts);
    if let Some(rate) = &options.limit_rate {
        client.limit_rate(parse_rate(rate)?);
    }
    let sent = Arc::clone(&reporter);
    client.on_sent(Arc::new(move |n| sent.sent(n)));

    let info = preflight(&client, &options.key).context(Preflight)?;
    let closure = closure_of(&options.paths, &info.store_dir)?;
    let upstreams = options
        .upstreams
        .clone()
        .unwrap_or_else(|| info.upstream_caches.clone());
    let lacking = find_missing(&client, &closure, options.jobs, options.per_path_queries)?;
    let (missing, upstream) = skip_upstream(&lacking, &closure, &upstreams, &options)?;
    let present = closure.len() - missing.len() - upstream;
    let report = PushReport {
        closure: closure.len(),
        pushed: missing.len(),
        present,
        upstream,
    };
    if missing.is_empty() {
        reporter.finish();
        if !reporter.quiet() {
            eprintln!(
                "nothing to push: of {} paths, {present} are already in {} and {upstream} in its upstream caches",
                closure.len(),
                client.base()
            );
        }
        return Ok(report);
    }
    let spool = Spool::open(&options.spool)?;

    let context = Context {
        client: &client,
        options: &options,
        spool: &spool,
        info: &info,
        reporter: &reporter,
        cancelled: AtomicBool::new(false),
    };
    let totals = context.transfer(&closure, &missing)?;
    reporter.finish();
    let seconds = started.elapsed().as_secs_f64();
    if reporter.quiet() {
        return Ok(report);
    }
    eprintln!(
        "pushed {} paths to {} ({} already there, {upstream} in its upstream caches): {} of NARs as {} compressed, {} sent in {:.1}s ({:.1} MB/s)",
        missing.len(),
        client.base(),
        present,
        HumanBytes(totals.nar_bytes),
        HumanBytes(totals.file_bytes),
        HumanBytes(totals.sent_bytes),
        seconds,
        totals.sent_bytes as f64 / 1e6 / seconds.max(0.001)
    );
    Ok(report)
}

/// Checks reachability, the token and the signing key before any work.
fn preflight(client: &Client, key: &SecretKey) -> Result<CacheInfo> {
    let info = client.info()?;
    let ours = key.public_key();
    if !info.public_keys.contains(&ours) {
        bail!(
            "the cache does not trust the signing key {:?}: add {ours} to its PUBLIC_KEYS, or push with the key it trusts",
            key.name()
        );
    }
    let whoami = client.whoami()?;
    if !whoami.permissions.contains(Permissions::WRITE) {
        bail!(
            "the token for {:?} cannot upload (its permissions: {})",
            whoami.subject,
            whoami.permissions
        );
    }
    Ok(info)
}

/// The closure of `paths`, from Nix.
fn closure_of(paths: &[String], store_dir: &str) -> Result<Vec<PathInfo>> {
    let args = ["path-info", "--json", "--recursive"].map(String::from);
    let json = nix_tool::stdout("nix", args.iter().chain(paths))?;
    pathinfo::parse(&json, store_dir)
}

/// A path the cache lacks, and whether the cache's index knows an upstream to serve it.
struct Lacking {
    index: usize,
    in_upstream: bool,
}

/// The paths of `closure` whose narinfo the cache lacks: batch queries, or one HEAD per
/// path where the cache has no batch endpoint (or `per_path` asks for it).
fn find_missing(
    client: &Client,
    closure: &[PathInfo],
    jobs: usize,
    per_path: bool,
) -> Result<Vec<Lacking>> {
    if !per_path {
        if let Some(lacking) = query_batches(client, closure, jobs)? {
            return Ok(lacking);
        }
    }
    let missing = head_each(client, closure, jobs)?;
    Ok(missing
        .into_iter()
        .map(|index| Lacking {
            index,
            in_upstream: false,
        })
        .collect())
}

/// `None` when the cache predates batch queries.
fn query_batches(
    client: &Client,
    closure: &[PathInfo],
    jobs: usize,
) -> Result<Option<Vec<Lacking>>> {
    let hashes: Vec<StorePathHash> = closure.iter().map(|p| *p.path.hash()).collect();
    let batches: Vec<&[StorePathHash]> = hashes.chunks(MAX_QUERY_HASHES).collect();
    let answers = Mutex::new(Vec::new());
    let unsupported = AtomicBool::new(false);
    parallel::try_for_each(&batches, jobs, |batch| {
        match client.query_missing(batch)? {
            Some(mut answer) => {
                // What the cache has is pushed again: GC roots from now (no NAR is
                // sent). A path a GC removed since the query is missing after all.
                let lacks: HashSet<&StorePathHash> = answer.missing.iter().collect();
                let present: Vec<StorePathHash> = batch
                    .iter()
                    .filter(|h| !lacks.contains(h))
                    .copied()
                    .collect();
                if !present.is_empty() {
                    if let Some(refreshed) = client.refresh_roots(&present)? {
                        answer.missing.extend(refreshed.missing);
                    }
                }
                answers
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .push(answer)
            }
            None => unsupported.store(true, Ordering::Relaxed),
        }
        Ok(())
    })
    .context("asking the cache which paths it has")?;
    if unsupported.load(Ordering::Relaxed) {
        return Ok(None);
    }
    let answers = answers
        .into_inner()
        .map_err(|_| anyhow!("a query thread panicked"))?;
    let position: HashMap<StorePathHash, usize> =
        hashes.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    let mut lacking = Vec::new();
    for answer in answers {
        let upstream: HashSet<StorePathHash> = answer.in_upstream.into_iter().collect();
        for hash in answer.missing {
            let index = *position
                .get(&hash)
                .ok_or_else(|| anyhow!("the cache answered about {hash}, which was not asked"))?;
            lacking.push(Lacking {
                index,
                in_upstream: upstream.contains(&hash),
            });
        }
    }
    lacking.sort_by_key(|l| l.index);
    lacking.dedup_by_key(|l| l.index);
    Ok(Some(lacking))
}

/// Splits what the cache lacks into what must be pushed and how many paths an upstream
/// cache serves (known to the cache's index, or found with a narinfo HEAD here).
fn skip_upstream(
    lacking: &[Lacking],
    closure: &[PathInfo],
    upstreams: &[String],
    options: &PushOptions,
) -> Result<(Vec<usize>, usize)> {
    if upstreams.is_empty() {
        return Ok((lacking.iter().map(|l| l.index).collect(), 0));
    }
    let clients: Vec<Client> = upstreams
        .iter()
        // An upstream that does not answer only means "push it": no long backoff.
        .map(|url| Client::new(url, None, options.attempts.min(2)))
        .collect();
    let served = Mutex::new(HashSet::new());
    let unknown: Vec<usize> = lacking
        .iter()
        .filter(|l| !l.in_upstream)
        .map(|l| l.index)
        .collect();
    parallel::try_for_each(&unknown, options.jobs, |&index| {
        let hash = closure[index].path.hash();
        for upstream in &clients {
            // An upstream that cannot answer just does not count: the path is pushed.
            if upstream.serves(hash).unwrap_or(false) {
                served
                    .lock()
                    .map_err(|_| anyhow!("poisoned"))?
                    .insert(index);
                break;
            }
        }
        Ok(())
    })?;
    let served = served
        .into_inner()
        .map_err(|_| anyhow!("an upstream query panicked"))?;
    let (skipped, missing): (Vec<&Lacking>, Vec<&Lacking>) = lacking
        .iter()
        .partition(|l| l.in_upstream || served.contains(&l.index));
    Ok((missing.iter().map(|l| l.index).collect(), skipped.len()))
}

/// Indices into `closure` of the paths whose narinfo the cache lacks, one HEAD each.
fn head_each(client: &Client, closure: &[PathInfo], jobs: usize) -> Result<Vec<usize>> {
    let found = Mutex::new(vec![false; closure.len()]);
    let indices: Vec<usize> = (0..closure.len()).collect();
    parallel::try_for_each(&indices, jobs, |&index| {
        let present = client.has_narinfo(closure[index].path.hash())?;
        if let Ok(mut found) = found.lock() {
            found[index] = present;
        }
        Ok(())
    })
    .context("asking the cache which paths it has")?;
    let found = found
        .into_inner()
        .map_err(|_| anyhow!("a query thread panicked"))?;
    Ok((0..closure.len()).filter(|&i| !found[i]).collect())
}

struct Context<'a> {
    client: &'a Client,
    options: &'a PushOptions,
    spool: &'a Spool,
    info: &'a CacheInfo,
    reporter: &'a Reporter,
    cancelled: AtomicBool,
}

#[derive(Default)]
struct Totals {
    nar_bytes: u64,
    file_bytes: u64,
    sent_bytes: u64,
}

/// A path whose NAR is on the cache, ready to be described by a narinfo.
struct Uploaded {
    index: usize,
    prepared: Prepared,
}

impl Context<'_> {
    /// Prepares and uploads every missing path, publishing narinfos as their
    /// references become available. Three stages joined by channels: preparers
    /// (dump, check, compress), uploaders, and this thread publishing narinfos.
    fn transfer(&self, closure: &[PathInfo], missing: &[usize]) -> Result<Totals> {
        let queue = Mutex::new(VecDeque::from(upload_order(closure, missing)));
        let (prepared_tx, prepared_rx) = mpsc::channel::<(usize, Prepared, bool)>();
        let prepared_rx = Mutex::new(prepared_rx);
        let (done_tx, done_rx) = mpsc::channel::<Result<Uploaded>>();
        self.reporter.start(
            missing.len(),
            missing.iter().map(|&i| closure[i].nar_size).sum(),
        );
        let mut totals = Totals::default();
        let result = thread::scope(|scope| -> Result<()> {
            // Compression runs zstd on every core already; two at a time keep the
            // cores busy while one waits on nix-store.
            for _ in 0..2.min(missing.len()) {
                let (prepared_tx, done_tx) = (prepared_tx.clone(), done_tx.clone());
                let queue = &queue;
                scope.spawn(move || self.prepare_queued(closure, queue, prepared_tx, done_tx));
            }
            drop(prepared_tx);
            for _ in 0..self.options.jobs.clamp(1, missing.len()) {
                let done_tx = done_tx.clone();
                let prepared_rx = &prepared_rx;
                scope.spawn(move || self.upload_prepared(closure, prepared_rx, done_tx));
            }
            drop(done_tx);
            let outcome = self.publish_as_ready(closure, missing, &done_rx, &mut totals);
            if outcome.is_err() {
                self.cancelled.store(true, Ordering::Relaxed);
            }
            outcome
        });
        totals.sent_bytes = self.reporter.sent_total();
        result.map(|()| totals)
    }

    /// A preparer: takes paths from `queue` until it is empty, sends each prepared NAR
    /// on; the first failure goes to the publisher and ends this worker.
    fn prepare_queued(
        &self,
        closure: &[PathInfo],
        queue: &Mutex<VecDeque<usize>>,
        prepared: mpsc::Sender<(usize, Prepared, bool)>,
        done: mpsc::Sender<Result<Uploaded>>,
    ) {
        while !self.cancelled.load(Ordering::Relaxed) {
            let Some(index) = queue.lock().ok().and_then(|mut q| q.pop_front()) else {
                return;
            };
            match self.prepare(&closure[index]) {
                Ok((nar, resumed)) => {
                    let _ = prepared.send((index, nar, resumed));
                }
                Err(err) => {
                    let _ = done.send(Err(err));
                    return;
                }
            }
        }
    }

    /// An uploader: uploads prepared NARs as they come, reporting each to the publisher.
    fn upload_prepared(
        &self,
        closure: &[PathInfo],
        prepared: &Mutex<mpsc::Receiver<(usize, Prepared, bool)>>,
        done: mpsc::Sender<Result<Uploaded>>,
    ) {
        loop {
            let next = prepared.lock().ok().and_then(|rx| rx.recv().ok());
            let Some((index, mut nar, resumed)) = next else {
                return;
            };
            if self.cancelled.load(Ordering::Relaxed) {
                return;
            }
            let outcome = self
                .upload(&closure[index], &mut nar, resumed)
                .map(|()| Uploaded {
                    index,
                    prepared: nar,
                });
            let _ = done.send(outcome);
        }
    }

    /// The path's NAR file, and whether an earlier run had prepared it (and may have
    /// sent it).
    fn prepare(&self, info: &PathInfo) -> Result<(Prepared, bool)> {
        let entry = self.spool.entry(info, &self.options.codec);
        let (prepared, resumed) = match entry.load(info, self.options.codec.compression) {
            Some(prepared) => (prepared, true),
            None => {
                let prepared =
                    nar::prepare(&self.info.store_dir, info, &self.options.codec, &entry)
                        .with_context(|| format!("preparing {}", info.path))?;
                (prepared, false)
            }
        };
        self.reporter.compressed(info, prepared.file_size);
        Ok((prepared, resumed))
    }

    fn upload(&self, info: &PathInfo, prepared: &mut Prepared, resumed: bool) -> Result<()> {
        let entry = self.spool.entry(info, &self.options.codec);
        let nar = prepared.nar_file(self.options.codec.compression);
        let log = |line: String| self.reporter.line(line);
        let outcome = NarUpload {
            client: self.client,
            nar: &nar,
            entry: &entry,
            max_request_bytes: self.info.max_request_bytes,
            jobs: self.options.jobs,
            // A HEAD costs a round trip; sending a small NAR the cache has costs less,
            // unless an earlier run may well have sent it.
            ask_first: resumed || prepared.file_size > SMALL_NAR_BYTES,
            cancelled: &self.cancelled,
            log: &log,
        }
        .run(prepared)
        .with_context(|| format!("uploading the NAR of {}", info.path))?;
        let how = match outcome {
            NarOutcome::Present => "already on the cache".to_owned(),
            NarOutcome::Single => "sent".to_owned(),
            NarOutcome::Multipart { parts, resumed: 0 } => format!("sent in {parts} parts"),
            NarOutcome::Multipart { parts, resumed } => {
                format!("sent in {parts} parts ({resumed} from an earlier run)")
            }
        };
        self.reporter.line(format!(
            "{}: NAR {how} ({} bytes)",
            info.path, prepared.file_size
        ));
        Ok(())
    }

    /// Publishes each uploaded path's narinfo once all its references are published
    /// (or were on the cache before, or go in the same batch): in batches where the
    /// cache takes them, else one PUT each.
    fn publish_as_ready(
        &self,
        closure: &[PathInfo],
        missing: &[usize],
        done: &mpsc::Receiver<Result<Uploaded>>,
        totals: &mut Totals,
    ) -> Result<()> {
        if self.info.max_batch_narinfos == 0 {
            return self.publish_each_as_ready(closure, missing, done, totals);
        }
        let mut publisher = Batches::new(closure, missing);
        let mut waiting: Vec<Uploaded> = Vec::new();
        let mut uploads_left = missing.len();
        let full = self.info.max_batch_narinfos as usize;
        // Since when something could be published.
        let mut ready_since: Option<Instant> = None;
        while !publisher.all_published() {
            let mut take = |uploaded: Uploaded, waiting: &mut Vec<Uploaded>| {
                totals.nar_bytes += closure[uploaded.index].nar_size;
                totals.file_bytes += uploaded.prepared.file_size;
                waiting.push(uploaded);
            };
            while let Ok(uploaded) = done.try_recv() {
                uploads_left -= 1;
                take(uploaded?, &mut waiting);
            }
            let ready = publisher.ready(&waiting);
            if ready.is_empty() && uploads_left == 0 {
                bail!("narinfos wait for references that will not be published");
            }
            // Publish a full batch at once, the rest once uploads end or after a
            // moment: fewer, larger batches while uploads go on.
            let held = ready_since.map_or(Duration::ZERO, |since| since.elapsed());
            let due = !ready.is_empty()
                && (uploads_left == 0 || ready.len() >= full || held >= BATCH_HOLD);
            if !due {
                let wait = if ready.is_empty() {
                    ready_since = None;
                    done.recv().map_err(|_| RecvTimeoutError::Disconnected)
                } else {
                    ready_since.get_or_insert_with(Instant::now);
                    done.recv_timeout(BATCH_HOLD - held)
                };
                match wait {
                    Ok(uploaded) => {
                        uploads_left -= 1;
                        take(uploaded?, &mut waiting);
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        bail!("the upload workers stopped early")
                    }
                }
                continue;
            }
            ready_since = None;
            let (now, later): (Vec<Uploaded>, Vec<Uploaded>) =
                waiting.drain(..).partition(|u| ready.contains(&u.index));
            waiting = later;
            let retry = self.publish_batches(closure, &mut publisher, now)?;
            waiting.extend(retry);
        }
        Ok(())
    }

    /// Publishes `ready` (every reference published or among them) in batches, in
    /// order; what must be sent again comes back (after a pause if nothing went).
    fn publish_batches(
        &self,
        closure: &[PathInfo],
        publisher: &mut Batches,
        mut ready: Vec<Uploaded>,
    ) -> Result<Vec<Uploaded>> {
        ready.sort_by_key(|u| publisher.rank[&u.index]);
        let store_dir = &self.info.store_dir;
        let codec = &self.options.codec;
        let texts: Vec<String> = ready
            .iter()
            .map(|u| {
                let nar = u.prepared.nar_file(codec.compression);
                signed_narinfo(
                    &closure[u.index],
                    &nar,
                    u.prepared.file_size,
                    &self.options.key,
                    store_dir,
                )
            })
            .collect();
        let mut retry: Vec<usize> = Vec::new();
        let mut sent_any = false;
        let mut chunk: Vec<usize> = Vec::new();
        let mut chunk_bytes = 0u64;
        let mut chunk_references = 0usize;
        let references = |k: usize| closure[ready[k].index].references.len();
        let max_count = self.info.max_batch_narinfos as usize;
        // JSON quoting and escapes, generously.
        let json_size = |text: &String| text.len() as u64 * 6 / 5 + 16;
        let limit = self.info.max_batch_bytes.saturating_sub(64);
        let mut k = 0;
        while k <= ready.len() {
            let fits = k < ready.len()
                && chunk.len() < max_count
                && chunk_bytes + json_size(&texts[k]) <= limit
                && chunk_references + references(k) <= MAX_BATCH_REFERENCES;
            if k < ready.len() && (fits || chunk.is_empty()) {
                chunk_bytes += json_size(&texts[k]);
                chunk_references += references(k);
                chunk.push(k);
                k += 1;
                continue;
            }
            if chunk.is_empty() {
                break;
            }
            // What an earlier batch of this round failed to publish holds back those
            // that reference it (the chunk is in order: references first).
            let mut send: Vec<usize> = Vec::new();
            let mut sending: HashSet<usize> = HashSet::new();
            for c in chunk.drain(..) {
                let index = ready[c].index;
                if publisher.references_published(index, |j| sending.contains(&j)) {
                    sending.insert(index);
                    send.push(c);
                } else {
                    retry.push(c);
                }
            }
            chunk_bytes = 0;
            chunk_references = 0;
            if send.is_empty() {
                continue;
            }
            let send_texts: Vec<String> = send.iter().map(|&c| texts[c].clone()).collect();
            let results = if send.len() == 1 && json_size(&texts[send[0]]) > limit {
                // Too large for any batch: a PUT of its own.
                let u = &ready[send[0]];
                let hash = closure[u.index].path.hash();
                vec![match self.client.put_narinfo(hash, &texts[send[0]]) {
                    Ok(NarinfoOutcome::Published) => Outcome::Published,
                    Ok(NarinfoOutcome::AlreadyPublished) => Outcome::AlreadyPublished,
                    Err(err) => Outcome::Failed(format!("{err:#}"), false),
                }]
            } else {
                self.client
                    .publish_narinfos(&send_texts)
                    .with_context(|| format!("publishing a batch of {} narinfos", send.len()))?
                    .into_iter()
                    .map(Outcome::of)
                    .collect()
            };
            for (&c, outcome) in send.iter().zip(results) {
                let info = &closure[ready[c].index];
                match outcome {
                    Outcome::Published | Outcome::AlreadyPublished => {
                        sent_any = true;
                        publisher.published.insert(ready[c].index);
                        self.published(info, matches!(outcome, Outcome::AlreadyPublished));
                    }
                    Outcome::Failed(reason, true) => {
                        publisher.note_failure(ready[c].index, &reason, self.options.attempts)?;
                        retry.push(c);
                    }
                    Outcome::Failed(reason, false) => {
                        bail!("publishing {}: {reason}", info.path)
                    }
                }
            }
        }
        if !retry.is_empty() && !sent_any {
            thread::sleep(publisher.backoff());
        }
        let mut again = Vec::new();
        for (p, u) in ready.into_iter().enumerate() {
            if retry.contains(&p) {
                again.push(u);
            }
        }
        Ok(again)
    }

    /// Publishes each uploaded path's narinfo with a PUT of its own once all its
    /// references are published (or were on the cache before): a cache without batches.
    fn publish_each_as_ready(
        &self,
        closure: &[PathInfo],
        missing: &[usize],
        done: &mpsc::Receiver<Result<Uploaded>>,
        totals: &mut Totals,
    ) -> Result<()> {
        let mut publisher = Batches::new(closure, missing);
        let mut waiting: Vec<Uploaded> = Vec::new();
        while !publisher.all_published() {
            let uploaded = done
                .recv()
                .map_err(|_| anyhow!("the upload workers stopped early"))??;
            totals.nar_bytes += closure[uploaded.index].nar_size;
            totals.file_bytes += uploaded.prepared.file_size;
            waiting.push(uploaded);
            // Publish everything that became ready, in waves: a wave may unlock more.
            loop {
                let (wave, rest): (Vec<Uploaded>, Vec<Uploaded>) = waiting
                    .drain(..)
                    .partition(|u| publisher.references_published(u.index, |_| false));
                waiting = rest;
                if wave.is_empty() {
                    break;
                }
                self.publish_wave(closure, &wave)?;
                publisher.published.extend(wave.iter().map(|u| u.index));
            }
        }
        Ok(())
    }

    fn publish_wave(&self, closure: &[PathInfo], wave: &[Uploaded]) -> Result<()> {
        parallel::try_for_each(wave, self.options.jobs, |uploaded| {
            self.publish(&closure[uploaded.index], &uploaded.prepared)
        })
    }

    fn publish(&self, info: &PathInfo, prepared: &Prepared) -> Result<()> {
        let store_dir = &self.info.store_dir;
        let nar = prepared.nar_file(self.options.codec.compression);
        let narinfo = signed_narinfo(info, &nar, prepared.file_size, &self.options.key, store_dir);
        let outcome = self
            .client
            .put_narinfo(info.path.hash(), &narinfo)
            .with_context(|| format!("publishing {}", info.path))?;
        self.published(info, outcome == NarinfoOutcome::AlreadyPublished);
        Ok(())
    }

    /// `info`'s narinfo is on the cache: its spool entry goes. `already`: someone
    /// published the path meanwhile (with other signatures): it is there all the same.
    fn published(&self, info: &PathInfo, already: bool) {
        if already {
            self.reporter
                .line(format!("{}: already published by another push", info.path));
        }
        self.spool.entry(info, &self.options.codec).remove();
        self.reporter.published(info);
    }
}

/// NARs up to this size go up without asking first whether the cache has them: a HEAD
/// costs a round trip, and a small NAR sent again costs less (the cache keeps the copy
/// it has).
const SMALL_NAR_BYTES: u64 = 256 << 10;

/// How long a narinfo ready to publish may wait for others to fill its batch while
/// uploads go on.
const BATCH_HOLD: Duration = Duration::from_millis(3000);

/// NARs at least this large are prepared first: their compression overlaps the rest.
const EARLY_NAR_BYTES: u64 = 1 << 20;

/// The order paths are prepared and uploaded in: the large ones first, biggest first,
/// then the rest references first, so their narinfos can be published while the
/// uploads go on.
fn upload_order(closure: &[PathInfo], missing: &[usize]) -> Vec<usize> {
    let (mut early, rest): (Vec<usize>, Vec<usize>) = references_first_of(closure, missing)
        .into_iter()
        .partition(|&i| closure[i].nar_size >= EARLY_NAR_BYTES);
    early.sort_by_key(|&i| std::cmp::Reverse(closure[i].nar_size));
    early.extend(rest);
    early
}

/// `missing` (indices into `closure`), each after those it references.
fn references_first_of(closure: &[PathInfo], missing: &[usize]) -> Vec<usize> {
    let position: HashMap<&crate::core::nix::store_path::StorePathBaseName, usize> = missing
        .iter()
        .enumerate()
        .map(|(k, &i)| (&closure[i].path, k))
        .collect();
    let inside: Vec<Vec<usize>> = missing
        .iter()
        .enumerate()
        .map(|(k, &i)| {
            closure[i]
                .references
                .iter()
                .filter_map(|r| position.get(r).copied())
                .filter(|&j| j != k)
                .collect()
        })
        .collect();
    references_first(&inside)
        .into_iter()
        .map(|k| missing[k])
        .collect()
}

/// What became of one narinfo sent.
enum Outcome {
    Published,
    /// A different narinfo for the path was there first (409): the path is on the cache.
    AlreadyPublished,
    /// The reason, and whether sending it again may work (a reference in the batch that
    /// was not published, the cache busy or failing).
    Failed(String, bool),
}

impl Outcome {
    fn of(result: NarinfoResult) -> Self {
        match result.outcome {
            BatchOutcome::Created | BatchOutcome::Unchanged | BatchOutcome::Replaced => {
                Outcome::Published
            }
            BatchOutcome::Refused if result.status == 409 => Outcome::AlreadyPublished,
            BatchOutcome::Refused => Outcome::Failed(
                result
                    .reason
                    .unwrap_or_else(|| format!("HTTP {}", result.status)),
                result.status == 424 || retryable_status(result.status),
            ),
        }
    }
}

/// The publisher's bookkeeping: which paths are published, the order references
/// first, and how often each was sent in vain.
struct Batches {
    /// Position of each missing path in references-first order.
    rank: HashMap<usize, usize>,
    published: HashSet<usize>,
    /// The missing paths each path references.
    needs: HashMap<usize, Vec<usize>>,
    failures: HashMap<usize, u32>,
    rounds_in_vain: u32,
    total: usize,
}

impl Batches {
    fn new(closure: &[PathInfo], missing: &[usize]) -> Self {
        let missing_set: HashSet<usize> = missing.iter().copied().collect();
        let index_of: HashMap<&crate::core::nix::store_path::StorePathBaseName, usize> = closure
            .iter()
            .enumerate()
            .map(|(i, p)| (&p.path, i))
            .collect();
        let needs = missing
            .iter()
            .map(|&i| {
                let refs = closure[i]
                    .references
                    .iter()
                    .filter_map(|r| index_of.get(r).copied())
                    .filter(|&j| j != i && missing_set.contains(&j))
                    .collect();
                (i, refs)
            })
            .collect();
        Batches {
            rank: references_first_of(closure, missing)
                .into_iter()
                .enumerate()
                .map(|(k, i)| (i, k))
                .collect(),
            published: HashSet::new(),
            needs,
            failures: HashMap::new(),
            rounds_in_vain: 0,
            total: missing.len(),
        }
    }

    fn all_published(&self) -> bool {
        self.published.len() == self.total
    }

    /// The waiting paths that can be published now: each of their references is
    /// published or among them (references first).
    fn ready(&self, waiting: &[Uploaded]) -> Vec<usize> {
        let mut candidates: Vec<usize> = waiting.iter().map(|u| u.index).collect();
        candidates.sort_by_key(|i| self.rank[i]);
        let mut ready: Vec<usize> = Vec::new();
        let mut chosen: HashSet<usize> = HashSet::new();
        for i in candidates {
            if self.needs[&i]
                .iter()
                .all(|j| self.published.contains(j) || chosen.contains(j))
            {
                chosen.insert(i);
                ready.push(i);
            }
        }
        ready
    }

    /// Whether every path `index` references is published or, by `sent_with`, goes
    /// with it.
    fn references_published(&self, index: usize, sent_with: impl Fn(usize) -> bool) -> bool {
        self.needs[&index]
            .iter()
            .all(|&j| self.published.contains(&j) || sent_with(j))
    }

    fn note_failure(&mut self, index: usize, reason: &str, attempts: u32) -> Result<()> {
        let failures = self.failures.entry(index).or_insert(0);
        *failures += 1;
        if *failures >= attempts.max(1) {
            bail!("{reason} (sent {failures} times)");
        }
        Ok(())
    }

    /// The pause before a round that follows one that published nothing.
    fn backoff(&mut self) -> std::time::Duration {
        self.rounds_in_vain += 1;
        std::time::Duration::from_millis(250 << self.rounds_in_vain.min(5))
    }
}

/// The narinfo of `info` pointing at `nar`, signed with `key` (after any signature
/// Nix already had, except an older one by a key of the same name).
fn signed_narinfo(
    info: &PathInfo,
    nar: &NarFile,
    file_size: u64,
    key: &SecretKey,
    store_dir: &str,
) -> String {
    let mut references = info.references.clone();
    references.sort_by_key(|r| r.to_string());
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url: nar.url(),
        compression: nar.compression,
        file_hash: Some(nar.file_hash),
        file_size: Some(file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references,
        deriver: info.deriver.clone(),
        system: None,
        signatures: info
            .signatures
            .iter()
            .filter(|s| s.key_name() != key.name())
            .cloned()
            .collect(),
        ca: info.ca.clone(),
    };
    let fingerprint = narinfo.fingerprint(store_dir);
    narinfo.signatures.push(key.sign(fingerprint.as_bytes()));
    narinfo.to_text(store_dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nix::hash::Sha256;
    use crate::core::nix::keys::PublicKey;
    use crate::core::nix::nar_file::Compression;

    const SECRET: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";

    /// a <- b <- c (c references b, b references a), d alone and large; `b` and `d`
    /// are already on the cache in some tests.
    fn chain() -> Vec<PathInfo> {
        let path = |name: &str| format!("/nix/store/{}-{name}", name.repeat(32)[..32].to_owned());
        let item = |name: &str, size: u64, refs: &[&str]| {
            let refs: Vec<String> = refs.iter().map(|r| format!("{:?}", path(r))).collect();
            format!(
                r#"{{"path":{:?},"narHash":"sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc","narSize":{size},"references":[{}]}}"#,
                path(name),
                refs.join(",")
            )
        };
        let json = format!(
            "[{},{},{},{}]",
            item("a", 10, &[]),
            item("b", 10, &["a", "b"]),
            item("c", 10, &["b"]),
            item("d", 5 << 20, &[])
        );
        pathinfo::parse(&json, "/nix/store").unwrap()
    }

    fn uploaded(index: usize) -> Uploaded {
        Uploaded {
            index,
            prepared: Prepared {
                file_hash: Sha256([index as u8; 32]),
                file_size: 1,
                upload: None,
            },
        }
    }

    #[test]
    fn a_batch_holds_what_is_ready_references_first() {
        let closure = chain();
        let name = |i: usize| closure[i].path.name().to_owned();
        assert_eq!(name(0), "a");
        let mut batches = Batches::new(&closure, &[0, 1, 2, 3]);
        // c's reference b is neither published nor waiting: c waits.
        assert_eq!(batches.ready(&[uploaded(2), uploaded(0)]), vec![0]);
        // With b uploaded too, all three go, references first.
        let ready = batches.ready(&[uploaded(2), uploaded(1), uploaded(0), uploaded(3)]);
        assert_eq!(ready.len(), 4);
        let position = |i: usize| ready.iter().position(|&j| j == i).unwrap();
        assert!(position(0) < position(1) && position(1) < position(2));
        // Once a and b are published, c alone is ready.
        batches.published.extend([0, 1]);
        assert_eq!(batches.ready(&[uploaded(2)]), vec![2]);
        // What is on the cache already (b) never holds anything back.
        let batches = Batches::new(&closure, &[2]);
        assert_eq!(batches.ready(&[uploaded(2)]), vec![2]);
    }

    #[test]
    fn large_nars_go_first_then_references_first() {
        let closure = chain();
        assert_eq!(upload_order(&closure, &[2, 1, 0, 3]), vec![3, 0, 1, 2]);
    }

    #[test]
    fn a_path_sent_in_vain_too_often_fails_the_push() {
        let closure = chain();
        let mut batches = Batches::new(&closure, &[0]);
        assert!(batches.note_failure(0, "busy", 3).is_ok());
        assert!(batches.note_failure(0, "busy", 3).is_ok());
        let err = batches.note_failure(0, "busy", 3).unwrap_err();
        assert!(err.to_string().contains("sent 3 times"), "{err}");
    }

    #[test]
    fn narinfos_are_signed_and_verify_in_the_core() {
        let key: SecretKey = SECRET.parse().unwrap();
        let json = r#"[{"path":"/nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-nixflare-e2e-top","narHash":"sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc","narSize":1670328,"references":["/nix/store/pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-nixflare-e2e-leaf","/nix/store/anfizv71z26rnrvkpdwsc1f5wwyd9kw6-nixflare-e2e-middle"],"deriver":"/nix/store/h15vw3d8vjq21wraq1p08xcw6jby7s0c-nixflare-e2e-top.drv"}]"#;
        let info = &pathinfo::parse(json, "/nix/store").unwrap()[0];
        let nar = NarFile {
            file_hash: Sha256([7; 32]),
            compression: Compression::Zstd,
        };
        let text = signed_narinfo(info, &nar, 99, &key, "/nix/store");
        let parsed = NarInfo::parse(text.as_bytes(), "/nix/store").unwrap();
        let public: PublicKey = key.public_key();
        assert!(parsed.signed_by_any(&[public], "/nix/store"));
        assert_eq!(parsed.compression, Compression::Zstd);
        assert_eq!(parsed.url, nar.url());
        // References sorted as Nix writes them.
        assert!(
            text.contains("References: anfizv71z26rnrvkpdwsc1f5wwyd9kw6-nixflare-e2e-middle pv22")
        );
    }
}
