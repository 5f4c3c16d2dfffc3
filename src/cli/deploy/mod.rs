//! Standing up and running a cache on Cloudflare: `nixflare init` (a new cache, or a
//! check that an existing one is whole), `nixflare deploy` (the checkout's worker and
//! the deployment's settings, again), `nixflare rotate` (a new signing or token key
//! next to the old one, later the old one dropped).
//!
//! Keys are made here and stay in the deployment directory (`deployment.rs`); the
//! worker gets their public halves only. Every change is validated with the worker's
//! own configuration rules before wrangler runs, and every deploy ends by asking the
//! cache whether it answers as configured.

mod answers;
mod deployment;
mod wrangler;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, ValueEnum};

use self::answers::Asker;
use self::deployment::{Deployment, MANAGED_VARS};
use self::wrangler::Wrangler;
use super::client::{Body, Client};
use super::keygen::{new_secret_key, read_secret_key, write_key_pair};
use super::settings::{self, SavedCache, Settings};
use super::token::{new_token, now_unix, parse_duration};
use crate::core::api::CacheInfo;
use crate::core::config::{var, CacheConfig, ReadAccess};
use crate::core::http::Method;
use crate::core::nix::keys::{PublicKey, SecretKey};
use crate::core::route::Route;
use crate::core::token::Permissions;

/// Where and how a deployment is deployed: shared by `init`, `deploy` and `rotate`.
#[derive(Args)]
pub struct DeployFlags {
    /// The nixflare checkout whose worker is deployed (default: the current directory
    /// for `init`, the saved one after).
    #[arg(long, value_name = "DIR")]
    checkout: Option<PathBuf>,
    /// The deployment's directory: keys, tokens, settings (default:
    /// $XDG_CONFIG_HOME/nixflare/deployments/WORKER).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print what would be created and run, and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Seconds to wait for a deployed cache to answer as configured (a new workers.dev
    /// route takes a moment).
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    wait: u64,
}

#[derive(Args)]
pub struct InitArgs {
    /// The Worker's name; its workers.dev URL is https://WORKER.<your subdomain>.workers.dev.
    #[arg(long)]
    worker: Option<String>,
    /// The cache's name: its keys are named NAME-1, NAME-2, ... (e.g. cache.example.org).
    #[arg(long, value_name = "NAME")]
    cache_name: Option<String>,
    /// The R2 bucket (created unless the account has it).
    #[arg(long)]
    bucket: Option<String>,
    /// Who may read: public (anyone) or private (reads need a token with read).
    #[arg(long, value_name = "public|private")]
    access: Option<String>,
    /// Days a pushed path's closure is kept after its last push, or forever.
    #[arg(long, value_name = "DAYS|forever")]
    retain_days: Option<String>,
    /// Most bytes of NARs to keep (e.g. 500G, 2TiB), or none.
    #[arg(long, value_name = "SIZE|none")]
    max_cache_size: Option<String>,
    /// Caches your closures lean on, whose paths need not be pushed (URLs), or none.
    #[arg(long, value_name = "URLS|none")]
    upstream: Option<String>,
    /// CI jobs that push with their own OIDC identity, no stored token:
    /// github:OWNER/REPO[@REF] or gitlab:GROUP/PROJECT[@REF] (e.g. @refs/heads/main;
    /// GitLab: @main), comma-separated, or none (written to OIDC_RULES; left out: the
    /// deployment's rules are kept).
    #[arg(long, value_name = "github:OWNER/REPO[@REF],...|none")]
    ci: Option<String>,
    /// Sign with this existing Nix secret key file instead of making one.
    #[arg(long, value_name = "FILE")]
    signing_key: Option<PathBuf>,
    /// Mint tokens with this existing admin key file instead of making one.
    #[arg(long, value_name = "FILE")]
    token_key: Option<PathBuf>,
    /// The cache's URL when it is served on a custom domain (default: the workers.dev
    /// URL `wrangler deploy` prints).
    #[arg(long)]
    url: Option<String>,
    /// Lifetime of the tokens minted for pushing and operating (s, m, h or d).
    #[arg(long, default_value = "365d")]
    token_lifetime: String,
    /// Take the default of every question no flag answers (off a terminal, always).
    #[arg(long, short = 'y')]
    yes: bool,
    /// Change an existing deployment's settings to these answers (keys are kept: see
    /// `nixflare rotate`).
    #[arg(long)]
    update: bool,
    #[command(flatten)]
    flags: DeployFlags,
}

#[derive(Args)]
pub struct DeployArgs {
    /// The deployment (its Worker's name; default: the only one).
    worker: Option<String>,
    #[command(flatten)]
    flags: DeployFlags,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyKind {
    /// The narinfo signing key (PUBLIC_KEYS).
    Signing,
    /// The admin key tokens are minted with (TOKEN_PUBLIC_KEYS).
    Token,
}

#[derive(Args)]
pub struct RotateArgs {
    /// Which key.
    #[arg(value_enum)]
    kind: KeyKind,
    /// The deployment (its Worker's name; default: the only one).
    worker: Option<String>,
    /// Drop every key but the current one: after clients trust the new signing key
    /// (what only the old one signed is then refused), or after every machine has a
    /// token from the new admin key (tokens from the old one then stop working).
    #[arg(long)]
    finish: bool,
    /// Lifetime of the tokens a token-key rotation mints.
    #[arg(long, default_value = "365d")]
    token_lifetime: String,
    #[command(flatten)]
    flags: DeployFlags,
}

/// Secret files of a deployment directory, beside its keys.
const PUSH_TOKEN: &str = "push.token";
const OPERATOR_TOKEN: &str = "operator.token";
const READ_TOKEN: &str = "read.token";
const OPERATOR: Permissions = Permissions::READ
    .union(Permissions::WRITE)
    .union(Permissions::OVERWRITE)
    .union(Permissions::DELETE)
    .union(Permissions::PIN)
    .union(Permissions::REVOKE);
const PUSHER: Permissions = Permissions::READ.union(Permissions::WRITE);

/// A key the deployment uses: its file (as `deployment.toml` names it), and whether
/// this run makes it.
struct KeyChoice {
    file: PathBuf,
    key: SecretKey,
    new: bool,
}

pub fn init(args: InitArgs) -> Result<()> {
    let asker = Asker::new(args.yes);
    let checkout = checkout_dir(args.flags.checkout.as_deref())?;
    let worker = asker.answer(
        "--worker",
        "Worker name (its URL: https://WORKER.<your subdomain>.workers.dev)",
        args.worker.as_deref(),
        "nixflare",
        answers::worker_name,
    )?;
    let dir = match &args.flags.dir {
        Some(dir) => absolute(dir)?,
        None => deployment::default_dir(&worker)?,
    };
    outside_checkout(&dir, &checkout)?;
    let existing = Deployment::load(&dir)?;
    let old = existing.as_ref();
    if let Some(old) = old.filter(|d| d.worker != worker) {
        bail!(
            "--dir: {} holds the deployment of worker {:?}, not {worker:?}",
            dir.display(),
            old.worker
        );
    }
    let cache_name = asker.answer(
        "--cache-name",
        "Cache name: its keys are named NAME-1, ... (e.g. cache.example.org)",
        args.cache_name.as_deref(),
        old.map_or(worker.as_str(), |d| &d.cache_name),
        answers::cache_name,
    )?;
    let bucket = asker.answer(
        "--bucket",
        "R2 bucket",
        args.bucket.as_deref(),
        old.map_or(worker.as_str(), |d| &d.bucket),
        answers::bucket_name,
    )?;
    let access = asker.answer(
        "--access",
        "Who may read: public, or private (reads need a token)",
        args.access.as_deref(),
        match old.map(|d| d.var(var::READ_ACCESS)) {
            Some("token") => "private",
            _ => "public",
        },
        answers::read_access,
    )?;
    let retain_days = asker.answer(
        "--retain-days",
        "Keep a pushed closure for how many days after its last push (or forever)",
        args.retain_days.as_deref(),
        old.map(|d| d.var(var::RETAIN_DAYS))
            .filter(|v| !v.is_empty())
            .unwrap_or("forever"),
        answers::retain_days,
    )?;
    let max_cache_bytes = asker.answer(
        "--max-cache-size",
        "Most bytes of NARs to keep, oldest closures going first (e.g. 500G, or none)",
        args.max_cache_size.as_deref(),
        old.map(|d| d.var(var::MAX_CACHE_BYTES))
            .filter(|v| !v.is_empty())
            .unwrap_or("none"),
        answers::size,
    )?;
    let upstreams = asker.answer(
        "--upstream",
        "Caches your closures lean on, not pushed (URLs, or none)",
        args.upstream.as_deref(),
        match old.map(|d| d.var(var::UPSTREAM_CACHES)) {
            None => "https://cache.nixos.org",
            Some("") => "none",
            Some(urls) => urls,
        },
        answers::upstreams,
    )?;
    let url = match &args.url {
        Some(url) => Some(http_url(url).map_err(|e| anyhow!("--url: {e:#}"))?),
        None => old.and_then(|d| d.url.clone()),
    };

    let signing = choose_key(
        &dir,
        "--signing-key",
        args.signing_key.as_deref(),
        old.map(|d| &d.signing_key),
        "signing-key-1.sec",
        &format!("{cache_name}-1"),
    )?;
    let token_key = choose_key(
        &dir,
        "--token-key",
        args.token_key.as_deref(),
        old.map(|d| &d.token_key),
        "token-key-1.sec",
        &format!("{cache_name}-token-1"),
    )?;
    if let Some(old) = old {
        for (flag, chosen, kept) in [
            ("--signing-key", &signing.file, &old.signing_key),
            ("--token-key", &token_key.file, &old.token_key),
        ] {
            if chosen != kept {
                bail!(
                    "{flag}: the deployment uses {}: keys are replaced only by `nixflare rotate`",
                    dir.join(kept).display()
                );
            }
        }
    }
    let mut vars = old.map(|d| d.vars.clone()).unwrap_or_default();
    // A deployment mid-rotation lists more keys than the current one: kept.
    for (name, key) in [
        (var::PUBLIC_KEYS, &signing.key),
        (var::TOKEN_PUBLIC_KEYS, &token_key.key),
    ] {
        let public = key.public_key().to_string();
        let listed = old.map_or("", |d| d.var(name));
        if !listed.split_whitespace().any(|k| k == public) {
            vars.insert(name.into(), public);
        }
    }
    vars.insert(var::READ_ACCESS.into(), access.into());
    vars.insert(var::RETAIN_DAYS.into(), retain_days);
    vars.insert(var::MAX_CACHE_BYTES.into(), max_cache_bytes);
    vars.insert(var::UPSTREAM_CACHES.into(), upstreams);
    if let Some(ci) = &args.ci {
        let rules = answers::ci_rules(ci, access == "token").map_err(|e| anyhow!("--ci: {e:#}"))?;
        vars.insert(var::OIDC_RULES.into(), rules);
    }
    let mut wanted = Deployment {
        cache_name,
        worker: worker.clone(),
        bucket,
        checkout,
        url,
        signing_key: signing.file.clone(),
        token_key: token_key.file.clone(),
        vars,
    };
    let (_, merged) = wanted.wrangler_config()?;
    let config = Deployment::validate(&merged)?;

    if let Some(old) = old.filter(|old| **old != wanted) {
        if !args.update {
            bail!(
                "{} already holds a deployment that differs in: {}. Rerun with --update to \
                 change it (keys are kept; `nixflare rotate` replaces them), or edit it and \
                 run `nixflare deploy {worker}`",
                dir.join(deployment::FILE).display(),
                differences(old, &wanted).join(", ")
            );
        }
    }
    let wrangler = Wrangler::find(&wanted.checkout, args.flags.dry_run)?;
    if args.flags.dry_run {
        eprintln!("dry run: nothing is created or run");
        for key in [&signing, &token_key].into_iter().filter(|k| k.new) {
            eprintln!(
                "  would make the key {} in {} (0600)",
                key.key.name(),
                dir.join(&key.file).display()
            );
        }
        if old != Some(&wanted) {
            eprintln!(
                "  would write {}:\n{}",
                dir.join(deployment::FILE).display(),
                toml::to_string(&wanted)?
            );
        }
        wrangler.check_login()?;
        deploy_steps(&mut wanted, &dir, &config, &token_key.key, &wrangler, 0)?;
        eprintln!("  would mint a push token and an operator token, and save the login {worker:?}");
        return Ok(());
    }

    // Nothing changed and the cache answers as configured: nothing to do.
    let live = wanted.url.clone().filter(|url| {
        old == Some(&wanted) && check(url, &config, &token_key.key, Duration::ZERO).is_ok()
    });
    if live.is_none() {
        // Before anything is written: a failed login leaves no half-made deployment.
        wrangler.check_login()?;
    }
    private_dir(&dir)?;
    for key in [&signing, &token_key].into_iter().filter(|k| k.new) {
        write_key_pair(&key.key, &dir.join(&key.file))?;
    }
    let url = match live {
        Some(url) => {
            eprintln!(
                "{url} answers as configured: nothing to deploy (after a `git pull`, \
                 `nixflare deploy {worker}` deploys the new worker)"
            );
            url
        }
        None => deploy_steps(
            &mut wanted,
            &dir,
            &config,
            &token_key.key,
            &wrangler,
            args.flags.wait,
        )?,
    };
    // Saved once deployed: deployment.toml says what the cache runs, so a run that
    // failed is simply run again.
    if old != Some(&wanted) {
        wanted.save(&dir)?;
        eprintln!("wrote {}", dir.join(deployment::FILE).display());
    }

    let lifetime =
        parse_duration(&args.token_lifetime).map_err(|e| anyhow!("--token-lifetime: {e:#}"))?;
    let expires_at = now_unix()? + lifetime;
    let signing_file = dir.join(&wanted.signing_key);
    let login = save_login(
        &worker,
        &url,
        &signing_file,
        &token_key.key,
        expires_at,
        &dir,
        false,
    )?;
    keep_token(
        &url,
        &dir.join(OPERATOR_TOKEN),
        OPERATOR,
        &token_key.key,
        &format!("{worker} operator"),
        expires_at,
    )?;
    let read_token = match config.read_access {
        ReadAccess::Token => Some(keep_token(
            &url,
            &dir.join(READ_TOKEN),
            Permissions::READ,
            &token_key.key,
            &format!("{worker} readers"),
            expires_at,
        )?),
        ReadAccess::Public => None,
    };

    eprintln!();
    eprintln!("The cache {worker:?} is up at {url}");
    eprintln!(
        "  signing key:      {} (pushes sign with it: back it up)",
        signing_file.display()
    );
    eprintln!(
        "  token admin key:  {} (`nixflare token mint --key` it)",
        dir.join(&wanted.token_key).display()
    );
    eprintln!(
        "  push token:       {login}, and in {} (for a CI secret)",
        dir.join(PUSH_TOKEN).display()
    );
    eprintln!(
        "  operator token:   {} (read, write, overwrite, delete, pin, revoke)",
        dir.join(OPERATOR_TOKEN).display()
    );
    if read_token.is_some() {
        eprintln!(
            "  read token:       {} (for the machines that substitute)",
            dir.join(READ_TOKEN).display()
        );
    }
    eprintln!();
    super::use_cache::run(&url, read_token, 3, Some(&dir.join(READ_TOKEN)))?;
    if !config.oidc_rules.is_empty() {
        println!();
        println!(
            "# CI jobs its OIDC_RULES admit push with their own identity, no token: on GitHub,"
        );
        println!(
            "# `permissions: id-token: write` and the action without `token` (README, \"Pushing"
        );
        println!("# from CI without a stored token\"); the signing key is still a CI secret.");
    }
    println!();
    println!("# push a closure (the saved login {worker:?} holds the URL, token and key)");
    let default = Settings::load(&settings::path()?)?.default == Some(worker.clone());
    match default {
        true => println!("nixflare push ./result"),
        false => println!("nixflare push --cache {worker} ./result"),
    }
    Ok(())
}

/// `nixflare deploy`: the deployment's settings over the checkout's worker, again.
pub fn deploy(args: DeployArgs) -> Result<()> {
    let dir = locate(args.worker.as_deref(), args.flags.dir.as_deref())?;
    let mut deployment = load(&dir)?;
    if let Some(checkout) = &args.flags.checkout {
        deployment.checkout = checkout_dir(Some(checkout))?;
    }
    outside_checkout(&dir, &deployment.checkout)?;
    let (_, merged) = deployment.wrangler_config()?;
    let config = Deployment::validate(&merged)?;
    let token_key = read_secret_key(&dir.join(&deployment.token_key))?;
    let wrangler = Wrangler::find(&deployment.checkout, args.flags.dry_run)?;
    wrangler.check_login()?;
    let url = deploy_steps(
        &mut deployment,
        &dir,
        &config,
        &token_key,
        &wrangler,
        args.flags.wait,
    )?;
    if !args.flags.dry_run {
        deployment.save(&dir)?;
        eprintln!(
            "deployed {:?}: {url} answers as configured",
            deployment.worker
        );
    }
    Ok(())
}

/// `nixflare rotate signing|token`: without `--finish`, a new key trusted beside the
/// old ones and used from now on; with it, every key but the current one dropped.
pub fn rotate(args: RotateArgs) -> Result<()> {
    let dir = locate(args.worker.as_deref(), args.flags.dir.as_deref())?;
    let mut deployment = load(&dir)?;
    if let Some(checkout) = &args.flags.checkout {
        deployment.checkout = checkout_dir(Some(checkout))?;
    }
    outside_checkout(&dir, &deployment.checkout)?;
    let (name, prefix, file_prefix) = match args.kind {
        KeyKind::Signing => (
            var::PUBLIC_KEYS,
            deployment.cache_name.clone(),
            "signing-key",
        ),
        KeyKind::Token => (
            var::TOKEN_PUBLIC_KEYS,
            format!("{}-token", deployment.cache_name),
            "token-key",
        ),
    };
    let current_file = match args.kind {
        KeyKind::Signing => &deployment.signing_key,
        KeyKind::Token => &deployment.token_key,
    };
    let current = read_secret_key(&dir.join(current_file))?;
    let listed: Vec<PublicKey> = deployment
        .var(name)
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|k| !k.is_empty())
        .map(|k| {
            k.parse()
                .with_context(|| format!("{name} in {}", deployment::FILE))
        })
        .collect::<Result<_>>()?;
    let mut new_key = None;
    let keys: Vec<String> = if args.finish {
        if listed == [current.public_key()] {
            eprintln!("{name} lists only {}: nothing to drop", current.name());
            return Ok(());
        }
        vec![current.public_key().to_string()]
    } else {
        let next = listed
            .iter()
            .filter_map(|k| {
                k.name()
                    .strip_prefix(&format!("{prefix}-"))?
                    .parse::<u32>()
                    .ok()
            })
            .max()
            .unwrap_or(1)
            + 1;
        let key_name = format!("{prefix}-{next}");
        let file = PathBuf::from(format!("{file_prefix}-{next}.sec"));
        // A rotation whose deploy failed left its key: this run finishes it.
        let key = match read_secret_key(&dir.join(&file)) {
            Ok(key) if key.name() == key_name => key,
            Ok(_) => bail!(
                "{} holds another key than {key_name}: move it away first",
                dir.join(&file).display()
            ),
            Err(_) if dir.join(&file).exists() => bail!(
                "{} is not a key file: move it away first",
                dir.join(&file).display()
            ),
            Err(_) => new_secret_key(&key_name)?,
        };
        let keys = listed
            .iter()
            .map(|k| k.to_string())
            .chain([key.public_key().to_string()])
            .collect();
        new_key = Some((key, file));
        keys
    };
    deployment.vars.insert(name.into(), keys.join(" "));
    if let Some((_, file)) = &new_key {
        match args.kind {
            KeyKind::Signing => deployment.signing_key = file.clone(),
            KeyKind::Token => deployment.token_key = file.clone(),
        }
    }
    let (_, merged) = deployment.wrangler_config()?;
    let config = Deployment::validate(&merged)?;
    let wrangler = Wrangler::find(&deployment.checkout, args.flags.dry_run)?;
    let token_key = match (args.kind, &new_key) {
        (KeyKind::Token, Some((key, _))) => key.clone(),
        _ => read_secret_key(&dir.join(&deployment.token_key))?,
    };
    wrangler.check_login()?;
    if args.flags.dry_run {
        if let Some((key, file)) = &new_key {
            eprintln!(
                "dry run: would make the key {} in {}",
                key.name(),
                dir.join(file).display()
            );
        }
        eprintln!("  would set {name} = {:?}", keys.join(" "));
        deploy_steps(&mut deployment, &dir, &config, &token_key, &wrangler, 0)?;
        return Ok(());
    }
    private_dir(&dir)?;
    if let Some((key, file)) = new_key.as_ref().filter(|(_, f)| !dir.join(f).exists()) {
        write_key_pair(key, &dir.join(file))?;
    }
    let url = deploy_steps(
        &mut deployment,
        &dir,
        &config,
        &token_key,
        &wrangler,
        args.flags.wait,
    )?;
    // Saved once deployed: a rotation that failed is run again, never half-recorded.
    deployment.save(&dir)?;
    let worker = deployment.worker.clone();
    match (args.kind, args.finish) {
        (KeyKind::Signing, false) => {
            let signing_file = dir.join(&deployment.signing_key);
            update_saved_signing_key(&worker, &url, &signing_file)?;
            eprintln!(
                "{name} now lists {}; pushes sign with {}. Give clients the new key (nix.conf \
                 below), then run `nixflare rotate signing {worker} --finish`.",
                keys.join(" "),
                current_name(&keys)
            );
            super::use_cache::run(
                &url,
                read_token_of(&dir, &config),
                3,
                Some(&dir.join(READ_TOKEN)),
            )?;
        }
        (KeyKind::Token, false) => {
            let expires_at = now_unix()? + parse_duration(&args.token_lifetime)?;
            let signing_file = dir.join(&deployment.signing_key);
            save_login(
                &worker,
                &url,
                &signing_file,
                &token_key,
                expires_at,
                &dir,
                true,
            )?;
            for (file, permissions, who) in [
                (OPERATOR_TOKEN, OPERATOR, "operator"),
                (READ_TOKEN, Permissions::READ, "readers"),
            ] {
                if file != READ_TOKEN || config.read_access == ReadAccess::Token {
                    let (token, _) = new_token(
                        &token_key,
                        format!("{worker} {who}"),
                        permissions,
                        expires_at,
                    )?;
                    write_secret(&dir.join(file), &token)?;
                }
            }
            eprintln!(
                "{name} now lists {}; new push, operator and read tokens are in {}. Hand \
                 them out (CI secrets, netrc), then run `nixflare rotate token {worker} \
                 --finish`: tokens of the old key then stop working.",
                keys.join(" "),
                dir.display()
            );
        }
        (KeyKind::Signing, true) => eprintln!(
            "{name} now lists only {}. Narinfos signed by the old key alone are refused by \
             clients that trust only the new one: re-sign what must stay (README, \
             \"Rotating keys\").",
            current.name()
        ),
        (KeyKind::Token, true) => eprintln!(
            "{name} now lists only {}: tokens minted with the old admin key are refused.",
            current.name()
        ),
    }
    Ok(())
}

fn current_name(keys: &[String]) -> &str {
    keys.last()
        .and_then(|k| k.split_once(':'))
        .map_or("", |(name, _)| name)
}

/// Bucket, configuration file, deploy, check (the caller checked the login first); returns the cache's URL (saved in
/// the deployment once learned). A dry run prints the wrangler commands only.
fn deploy_steps(
    deployment: &mut Deployment,
    dir: &Path,
    config: &CacheConfig,
    token_key: &SecretKey,
    wrangler: &Wrangler,
    wait: u64,
) -> Result<String> {
    let step = |name: &str| eprintln!("[{}] {name}", deployment.worker);
    step(&format!("R2 bucket {:?}", deployment.bucket));
    if !wrangler
        .bucket_exists(&deployment.bucket)
        .context("step: R2 bucket")?
    {
        wrangler
            .create_bucket(&deployment.bucket)
            .with_context(|| format!("step: creating R2 bucket {:?}", deployment.bucket))?;
    }
    let config_file = dir.join(deployment::WRANGLER_FILE);
    let (text, _) = deployment.wrangler_config()?;
    if wrangler.dry_run {
        eprintln!("  would write {}", config_file.display());
    } else {
        write_secret(&config_file, &text)?;
    }
    step("deploy (builds the worker first)");
    let printed = wrangler.deploy(&config_file).context(
        "step: wrangler deploy (fix what it says, then run the same command again: nothing \
         was recorded as deployed)",
    )?;
    if wrangler.dry_run {
        return Ok(deployment.url.clone().unwrap_or_default());
    }
    let url = match (&deployment.url, printed) {
        (Some(url), _) => url.clone(),
        (None, Some(url)) => {
            deployment.url = Some(url.clone());
            url
        }
        (None, None) => bail!(
            "step: wrangler deploy printed no workers.dev URL: if the worker has a custom \
             domain, rerun with --url https://your.domain"
        ),
    };
    step(&format!("check {url}"));
    check(&url, config, token_key, Duration::from_secs(wait)).with_context(|| {
        format!(
            "step: checking the deployed cache at {url} (a new workers.dev route can take \
             minutes: run `nixflare deploy {}` again, or give it longer with --wait)",
            deployment.worker
        )
    })?;
    Ok(url)
}

/// Asks the cache at `url` whether it answers as `config` says: its info, its
/// `nix-cache-info` and `public-keys` (anonymously when public; a private cache must
/// refuse that), and `whoami` with a fresh short-lived read token. Retries until `wait`
/// has passed: a deploy takes a moment to reach every location.
fn check(url: &str, config: &CacheConfig, token_key: &SecretKey, wait: Duration) -> Result<()> {
    let subject = "nixflare deploy check".to_owned();
    let (token, _) = new_token(
        token_key,
        subject.clone(),
        Permissions::READ,
        now_unix()? + 900,
    )?;
    let timeout = Some(Duration::from_secs(20));
    let with_token = Client::with_timeout(url, Some(token), 1, timeout);
    let anonymous = Client::with_timeout(url, None, 1, timeout);
    let deadline = Instant::now() + wait;
    loop {
        let outcome = answers_as_configured(config, &with_token, &anonymous, &subject);
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}

fn answers_as_configured(
    config: &CacheConfig,
    with_token: &Client,
    anonymous: &Client,
    subject: &str,
) -> Result<()> {
    let info = with_token.info()?;
    let want = CacheInfo::of(config);
    let differs = |what: &str, got: String, want: String| {
        anyhow!("it serves {what} {got}, configured: {want} (an older version still answering?)")
    };
    let keys = |keys: &[PublicKey]| {
        keys.iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    if info.public_keys != want.public_keys {
        return Err(differs(
            "PUBLIC_KEYS",
            keys(&info.public_keys),
            keys(&want.public_keys),
        ));
    }
    if info.read_access != want.read_access {
        return Err(differs(
            "READ_ACCESS",
            info.read_access.as_str().into(),
            want.read_access.as_str().into(),
        ));
    }
    if info != want {
        return Err(differs(
            "settings",
            format!("{info:?}"),
            format!("{want:?}"),
        ));
    }
    let reader = match config.read_access {
        ReadAccess::Public => anonymous,
        ReadAccess::Token => with_token,
    };
    for (route, body) in [
        (Route::CacheInfo, config.nix_cache_info()),
        (Route::PublicKeys, config.public_keys_text()),
    ] {
        let path = route.to_string();
        let reply = reader.send(Method::Get, &path, None, Body::Empty)?;
        if reply.status != 200 || reply.body != body {
            bail!(
                "GET /{path} answered {} {:?}, configured: {body:?}",
                reply.status,
                reply.body
            );
        }
    }
    let whoami = with_token.whoami()?;
    if whoami.subject != subject {
        bail!("whoami named {:?}, not the check token", whoami.subject);
    }
    if config.read_access == ReadAccess::Token {
        let path = Route::CacheInfo.to_string();
        let status = anonymous
            .send(Method::Get, &path, None, Body::Empty)?
            .status;
        if status != 401 {
            bail!("a private cache answered an anonymous GET /{path} with {status}, not 401");
        }
    }
    Ok(())
}

/// The saved login `worker`: kept when its token still pushes, else a fresh push token
/// (also written to `push.token`); `replace` mints one whatever (a new admin key).
/// Returns how it was saved, for the summary.
fn save_login(
    worker: &str,
    url: &str,
    signing_file: &Path,
    token_key: &SecretKey,
    expires_at: u64,
    dir: &Path,
    replace: bool,
) -> Result<String> {
    let file = settings::path()?;
    let mut saved = Settings::load(&file)?;
    if let Some(other) = saved.caches.get(worker).filter(|c| c.url != url) {
        bail!(
            "step: saving the login: {} already has a login {worker:?} for {}: `nixflare \
             logout {worker}` first if it is no longer needed",
            file.display(),
            other.url
        );
    }
    if let Some(cache) = saved.caches.get(worker).filter(|c| {
        !replace && c.signing_key.as_deref() == Some(signing_file) && dir.join(PUSH_TOKEN).exists()
    }) {
        if let Some(token) = &cache.token {
            if token_may(url, token, PUSHER)? {
                return Ok(format!("login {worker:?} (kept: its token still pushes)"));
            }
        }
    }
    let (token, _) = new_token(token_key, format!("{worker} push"), PUSHER, expires_at)?;
    write_secret(&dir.join(PUSH_TOKEN), &token)?;
    saved.caches.insert(
        worker.to_owned(),
        SavedCache {
            url: url.to_owned(),
            token: Some(token),
            signing_key: Some(signing_file.to_owned()),
        },
    );
    if saved
        .default
        .as_ref()
        .is_none_or(|d| !saved.caches.contains_key(d))
    {
        saved.default = Some(worker.to_owned());
    }
    saved.save(&file)?;
    Ok(format!("saved as login {worker:?} in {}", file.display()))
}

/// After a signing rotation: the saved login pushes with the new key.
fn update_saved_signing_key(worker: &str, url: &str, signing_file: &Path) -> Result<()> {
    let file = settings::path()?;
    let mut saved = Settings::load(&file)?;
    if let Some(cache) = saved.caches.get_mut(worker).filter(|c| c.url == url) {
        cache.signing_key = Some(signing_file.to_owned());
        saved.save(&file)?;
        eprintln!(
            "the login {worker:?} now signs with {}",
            signing_file.display()
        );
    }
    Ok(())
}

/// The token in `file` if the cache still gives it `permissions`, else a fresh one
/// written there.
fn keep_token(
    url: &str,
    file: &Path,
    permissions: Permissions,
    token_key: &SecretKey,
    subject: &str,
    expires_at: u64,
) -> Result<String> {
    if let Ok(token) = super::auth::read_token_file(file) {
        if token_may(url, &token, permissions)? {
            return Ok(token);
        }
    }
    let (token, _) = new_token(token_key, subject.to_owned(), permissions, expires_at)?;
    write_secret(file, &token)?;
    Ok(token)
}

/// Whether the cache gives `token` `permissions`; an error when it cannot tell (a
/// token is never replaced because the network failed).
fn token_may(url: &str, token: &str, permissions: Permissions) -> Result<bool> {
    let answer = Client::new(url, Some(token.to_owned()), 3)
        .whoami_if_accepted()
        .context("is the cache up?")?;
    Ok(answer.is_some_and(|whoami| whoami.permissions.contains(permissions)))
}

fn read_token_of(dir: &Path, config: &CacheConfig) -> Option<String> {
    (config.read_access == ReadAccess::Token)
        .then(|| super::auth::read_token_file(&dir.join(READ_TOKEN)).ok())
        .flatten()
}

/// Which key to use: a file named by `flag`, the deployment's, or a new one.
fn choose_key(
    dir: &Path,
    flag: &str,
    given: Option<&Path>,
    existing: Option<&PathBuf>,
    new_file: &str,
    new_name: &str,
) -> Result<KeyChoice> {
    let (file, new) = match (given, existing) {
        (Some(file), _) => (absolute(file)?, false),
        (None, Some(file)) => (file.clone(), false),
        (None, None) if dir.join(new_file).exists() => {
            // An earlier run made it and failed before the deployment was saved.
            let file = PathBuf::from(new_file);
            let key = read_secret_key(&dir.join(&file)).map_err(|e| anyhow!("{flag}: {e:#}"))?;
            if key.name() != new_name {
                bail!(
                    "{flag}: {} holds the key {:?}, not {new_name:?}: pass it with {flag}, or move it away",
                    dir.join(&file).display(),
                    key.name()
                );
            }
            eprintln!(
                "using {} (made by an earlier run)",
                dir.join(&file).display()
            );
            return Ok(KeyChoice {
                file,
                key,
                new: false,
            });
        }
        (None, None) => {
            let file = PathBuf::from(new_file);
            let key = new_secret_key(new_name).map_err(|e| anyhow!("{flag}: {e:#}"))?;
            return Ok(KeyChoice {
                file,
                key,
                new: true,
            });
        }
    };
    let key = read_secret_key(&dir.join(&file)).map_err(|e| anyhow!("{flag}: {e:#}"))?;
    Ok(KeyChoice { file, key, new })
}

/// The fields two deployments differ in, for a refusal.
fn differences(old: &Deployment, new: &Deployment) -> Vec<String> {
    let mut fields = Vec::new();
    let mut field = |name: &str, differs: bool| {
        if differs {
            fields.push(name.to_owned());
        }
    };
    field("cache-name", old.cache_name != new.cache_name);
    field("bucket", old.bucket != new.bucket);
    field("checkout", old.checkout != new.checkout);
    field("url", old.url != new.url);
    field("signing-key", old.signing_key != new.signing_key);
    field("token-key", old.token_key != new.token_key);
    for name in MANAGED_VARS {
        field(name, old.var(name) != new.var(name));
    }
    fields
}

fn write_secret(file: &Path, text: &str) -> Result<()> {
    super::dirs::replace_private(file, &format!("{text}\n"))
}

/// Creates the deployment directory 0700, or checks an existing one is ours and
/// private: it holds keys, and wrangler deploys the configuration written there.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let what = "deployment directory";
    let meta = super::dirs::create_private(dir, what)?;
    super::dirs::check_owned(dir, &meta, what, "use a directory of your own (--dir)")?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "others may use the {what} {}: `chmod 700` it",
            dir.display()
        );
    }
    Ok(())
}

/// Refuses a deployment directory inside the checkout (links and `..` resolved):
/// keys never go into the repository.
fn outside_checkout(dir: &Path, checkout: &Path) -> Result<()> {
    // The nearest part of `dir` that exists, resolved, and the rest appended.
    let mut existing = dir.to_path_buf();
    let mut rest = Vec::new();
    let resolved = loop {
        if let Ok(real) = existing.canonicalize() {
            break real;
        }
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break existing,
        }
    };
    let resolved = rest
        .iter()
        .rev()
        .fold(resolved, |path, name| path.join(name));
    let checkout = checkout
        .canonicalize()
        .unwrap_or_else(|_| checkout.to_owned());
    if resolved.starts_with(&checkout) || resolved.components().any(|c| c.as_os_str() == "..") {
        bail!(
            "--dir: {} is inside the checkout {}: keys are never written into the repository",
            dir.display(),
            checkout.display()
        );
    }
    Ok(())
}

/// The checkout named, or the current directory: one with nixflare's wrangler.toml.
fn checkout_dir(given: Option<&Path>) -> Result<PathBuf> {
    let dir = match given {
        Some(dir) => absolute(dir)?,
        None => std::env::current_dir().context("the current directory")?,
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("--checkout {}", dir.display()))?;
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
    if !dir.join("wrangler.toml").is_file() || !manifest.contains("name = \"nixflare\"") {
        bail!(
            "--checkout: {} is not a nixflare checkout (run this in the directory you \
             cloned, or pass --checkout DIR)",
            dir.display()
        );
    }
    Ok(dir)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

fn http_url(text: &str) -> Result<String> {
    let url = text.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        bail!("{text:?} is not an http(s) URL");
    }
    super::auth::host_of(url)?;
    Ok(url.to_owned())
}

/// The deployment directory of `worker`, or of the only deployment there is.
fn locate(worker: Option<&str>, dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = dir {
        return absolute(dir);
    }
    if let Some(worker) = worker {
        return deployment::default_dir(worker);
    }
    let root = deployment::default_dir("")?;
    let found: Vec<String> = fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join(deployment::FILE).is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(root.join(one)),
        [] => bail!(
            "no deployment in {}: run `nixflare init` first",
            root.display()
        ),
        many => bail!("name the deployment: one of {}", many.join(", ")),
    }
}

fn load(dir: &Path) -> Result<Deployment> {
    Deployment::load(dir)?.ok_or_else(|| {
        anyhow!(
            "no deployment in {} (no {}): run `nixflare init` first",
            dir.display(),
            deployment::FILE
        )
    })
}
