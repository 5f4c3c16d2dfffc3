//! The `nixflare` command: client-side tooling. It holds the keys; the worker never
//! sees them. One file per subcommand; `client` is the HTTP side, `nar`/`upload` the
//! push pipeline. Data goes to stdout, status and progress to stderr.

mod auth;
mod client;
mod deploy;
mod dirs;
mod endpoints;
mod hook;
mod id_token;
mod inventory;
mod keygen;
mod login;
mod nar;
mod nix_tool;
mod parallel;
mod pathinfo;
mod progress;
mod push;
mod queue;
mod retention;
mod settings;
mod spool;
mod token;
mod upload;
mod use_cache;
mod watch;
mod watch_store;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::core::nix::nar_file::Compression;

#[derive(Parser)]
#[command(
    name = "nixflare",
    version,
    about = "Client for a nixflare Nix binary cache: keys, tokens, and pushing closures"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a key pair in Nix's key-file format (interchangeable with
    /// `nix key generate-secret`): for signing narinfos, or as the admin key of tokens.
    Keygen {
        /// Key name, conventionally the cache's host name plus a number, e.g. cache.example.org-1.
        name: String,
        /// Where to write the secret key (mode 0600); the public key goes to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Mint, inspect and revoke upload tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Push the closures of store paths to a cache: only what it lacks, NARs of any
    /// size, narinfos signed here and published last.
    Push(PushArgs),
    /// What the cache holds: paths, bytes, recent publishes (from its index).
    Info {
        #[command(flatten)]
        remote: Remote,
        /// The cache's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make the cache's index match its bucket now (objects written straight into R2,
    /// entries a failure left behind); the cron does the same a little every hour.
    Reconcile {
        #[command(flatten)]
        remote: Remote,
        /// One JSON summary instead of progress lines.
        #[arg(long)]
        json: bool,
    },
    /// Keep closures whatever their age: named pins, movable to a new path (needs a
    /// token with pin permission to change).
    #[command(subcommand)]
    Pin(PinCommand),
    /// Garbage-collect the cache now: remove what no recent push and no pin keeps
    /// (the cron does the same a little every hour). Needs delete permission.
    Gc {
        #[command(flatten)]
        remote: Remote,
        /// Remove nothing: show what a pass would remove, and by which rule.
        #[arg(long)]
        dry_run: bool,
        /// The answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the nix.conf, flake and netrc lines for using a cache (for a private
    /// cache, with the netrc line of a read token).
    Use {
        /// A cache saved by `nixflare login`, or a URL (default: the saved default).
        #[arg(env = "NIXFLARE_CACHE", value_name = "NAME|URL")]
        cache: Option<String>,
        /// A token with read permission, for a private cache (prefer NIXFLARE_TOKEN or
        /// --token-file: arguments show up in `ps`). Default: the saved token or netrc.
        #[arg(long, env = "NIXFLARE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Read that token from FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "token")]
        token_file: Option<PathBuf>,
    },
    /// Stand up a cache on Cloudflare: keys, configuration, R2 bucket, deploy, a check
    /// that it answers as configured, tokens and the saved login. Safe to re-run.
    Init(deploy::InitArgs),
    /// Deploy a deployment again: the checkout's worker (after a `git pull`) with the
    /// deployment's settings (after editing its deployment.toml).
    Deploy(deploy::DeployArgs),
    /// Rotate a key: a new one trusted beside the old and used from now on; with
    /// --finish, the old ones dropped.
    Rotate(deploy::RotateArgs),
    /// Save a cache's URL, upload token and signing key's path under a name, so
    /// commands need only `--cache NAME` (or nothing, for the default).
    Login(login::LoginArgs),
    /// Forget a saved cache (its token is not revoked: see `token revoke`).
    Logout { name: String },
    /// For Nix's post-build-hook: queue $OUT_PATHS for `nixflare watch` and return at
    /// once. Never fails the build: a problem is a warning in the build log.
    Hook(hook::HookArgs),
    /// Push what the queue holds (from `nixflare hook`), now and as it arrives;
    /// survives the cache being down and being killed.
    Watch(watch::WatchArgs),
    /// Queue and push every path that becomes valid in the local Nix store (no hook,
    /// no trusted user needed); paths an upstream cache signed are skipped.
    WatchStore(watch_store::WatchStoreArgs),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint a token with the admin key (its public half goes in TOKEN_PUBLIC_KEYS).
    Mint {
        /// The admin's secret key file (Nix key-file format, e.g. from `nixflare keygen`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Who the token is for; shown in the worker's logs.
        #[arg(long)]
        subject: String,
        /// Comma-separated: read, write, overwrite, delete, revoke, pin, metrics.
        #[arg(long, default_value = "read,write")]
        permissions: String,
        /// Lifetime: a number with s, m, h or d (e.g. 90d).
        #[arg(long, default_value = "90d", conflicts_with = "expires_at")]
        expires_in: String,
        /// Absolute expiry in Unix seconds (instead of --expires-in).
        #[arg(long, value_name = "UNIX_SECONDS")]
        expires_at: Option<u64>,
    },
    /// Show what a token, or a CI provider's ID token, says, without checking its
    /// signature (for an ID token: the claims OIDC_RULES match and the subject).
    Inspect {
        /// The token, or - to read it from stdin.
        token: String,
    },
    /// Revoke a token on a cache (needs a token with revoke permission).
    Revoke {
        /// The token to revoke, its 32-hex id (from `token inspect`), or - for stdin.
        target: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand)]
enum PinCommand {
    /// Pin a store path's closure under NAME (moving NAME if it pinned another path).
    Add {
        name: String,
        /// A store path, or a symlink to one such as ./result; the cache must hold it.
        store_path: String,
        /// Hold for this many days only (default: until removed).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=36500))]
        keep_days: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the pins.
    List {
        #[command(flatten)]
        remote: Remote,
        #[arg(long)]
        json: bool,
    },
    /// Remove a pin: its closure goes at a GC unless a recent push or another pin keeps it.
    Remove {
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Which cache, and the token to talk to it with.
#[derive(Args)]
struct Remote {
    /// The cache: a name saved by `nixflare login`, or its URL (e.g.
    /// https://cache.example.org). Default: the saved default cache.
    #[arg(long, env = "NIXFLARE_CACHE", value_name = "NAME|URL")]
    cache: Option<String>,
    /// The token (prefer NIXFLARE_TOKEN or --token-file: arguments show up in `ps`). A
    /// CI provider's ID token works too. With no token anywhere, a GitHub Actions job
    /// with `permissions: id-token: write` asks for its own, the cache's URL as audience.
    #[arg(long, env = "NIXFLARE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the token from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Look the token up as the password for the cache's host in this netrc file
    /// (default: ~/.netrc, then /etc/nix/netrc).
    #[arg(long, value_name = "FILE")]
    netrc_file: Option<PathBuf>,
    /// Attempts per request; transient failures (network, 408, 429, 5xx) back off and retry.
    #[arg(long, default_value_t = 5, value_name = "N")]
    attempts: u32,
}

/// A cache resolved from flags, environment and saved settings.
pub struct Target {
    pub url: String,
    /// What `login` saved for it, if anything.
    pub saved: Option<settings::SavedCache>,
}

impl Target {
    /// `name_or_url` (or the default) resolved through the saved settings.
    pub fn resolve(name_or_url: Option<&str>) -> Result<Target> {
        let saved = settings::Settings::load(&settings::path()?)?;
        match saved.find(name_or_url)? {
            Some((_, cache)) => Ok(Target {
                url: cache.url.clone(),
                saved: Some(cache.clone()),
            }),
            None => Ok(Target {
                // find() answers None only for a URL.
                url: name_or_url.unwrap_or_default().to_owned(),
                saved: None,
            }),
        }
    }
}

impl Remote {
    fn target(&self) -> Result<Target> {
        Target::resolve(self.cache.as_deref())
    }

    fn client(&self) -> Result<client::Client> {
        let target = self.target()?;
        Ok(client::Client::with_auth(
            &target.url,
            Some(self.auth(&target)?),
            self.attempts,
        ))
    }

    /// A token from the places [`auth::find_token`] looks; failing that, in a GitHub
    /// Actions job allowed to ask for one, the job's own ID token.
    fn auth(&self, target: &Target) -> Result<client::Auth> {
        let asked_for_a_token = self.token.is_some() || self.token_file.is_some();
        match self.token(target) {
            Ok(token) => Ok(client::Auth::Token(token)),
            Err(err) if asked_for_a_token => Err(err),
            Err(err) => match id_token::IdTokens::from_env(&target.url)? {
                Some(tokens) => Ok(client::Auth::IdTokens(std::sync::Arc::new(tokens))),
                None => Err(err),
            },
        }
    }

    fn token(&self, target: &Target) -> Result<String> {
        auth::find_token(
            auth::TokenSources {
                explicit: self.token.as_deref(),
                file: self.token_file.as_deref(),
                saved: target.saved.as_ref().and_then(|s| s.token.as_deref()),
                netrc: self.netrc_file.as_deref(),
            },
            &target.url,
        )
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum CompressionArg {
    Zstd,
    None,
}

#[derive(Args)]
struct PushArgs {
    /// Store paths (or symlinks to them, like ./result); their closures are pushed.
    #[arg(required = true)]
    paths: Vec<String>,
    #[command(flatten)]
    remote: Remote,
    #[command(flatten)]
    flags: PushFlags,
}

/// How closures are pushed: shared by `push`, `watch` and `watch-store`.
#[derive(Args)]
struct PushFlags {
    /// The narinfo signing key (Nix secret key file); the cache must list its public
    /// key. Default: the one saved by `nixflare login`.
    #[arg(long, env = "NIXFLARE_SIGNING_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Parallel uploads.
    #[arg(long, short = 'j', default_value_t = 8)]
    jobs: usize,
    /// How NARs are compressed on the cache.
    #[arg(long, value_enum, default_value = "zstd")]
    compression: CompressionArg,
    /// zstd level, 1 (fastest) to 19 (smallest). 3 is zstd's and Nix's default; higher
    /// levels save a few percent for several times the CPU.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..=19))]
    compression_level: i32,
    /// zstd worker threads per NAR (default: one per CPU).
    #[arg(long, value_name = "N")]
    compression_threads: Option<u32>,
    /// Cap upload bandwidth, bytes per second with an optional k, M or G (e.g. 20M).
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
    /// Where compressed NARs wait for upload, and where an interrupted push resumes from
    /// (default: $XDG_CACHE_HOME/nixflare/spool).
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// No progress output; errors only.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// A binary cache whose paths need not be pushed (repeat for several). Default: the
    /// upstream caches the cache declares (its UPSTREAM_CACHES), which it accepts as
    /// references.
    #[arg(long, value_name = "URL", conflicts_with = "no_upstream")]
    upstream: Vec<String>,
    /// Push every missing path, even those an upstream cache serves.
    #[arg(long)]
    no_upstream: bool,
    /// Ask the cache about each path with its own HEAD instead of batch queries (how
    /// caches older than the index must be asked; for comparisons).
    #[arg(long, hide = true)]
    per_path_queries: bool,
}

impl PushFlags {
    /// The options of a push of `paths` to `remote`'s cache.
    fn options(&self, remote: &Remote, paths: Vec<String>) -> Result<push::PushOptions> {
        let target = remote.target()?;
        let key_file = match (
            &self.key,
            target.saved.as_ref().and_then(|s| s.signing_key.as_ref()),
        ) {
            (Some(file), _) | (None, Some(file)) => file.clone(),
            (None, None) => anyhow::bail!(
                "no signing key: pass --key FILE, set NIXFLARE_SIGNING_KEY, or save one with \
                 `nixflare login NAME URL --signing-key FILE`"
            ),
        };
        let threads = self
            .compression_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        Ok(push::PushOptions {
            auth: remote.auth(&target)?,
            cache: target.url,
            key: keygen::read_secret_key(&key_file)?,
            paths,
            jobs: self.jobs.max(1),
            codec: nar::Codec {
                compression: match self.compression {
                    CompressionArg::Zstd => Compression::Zstd,
                    CompressionArg::None => Compression::None,
                },
                level: self.compression_level,
                threads,
            },
            spool: match &self.spool_dir {
                Some(dir) => dir.clone(),
                None => spool::default_dir()?,
            },
            limit_rate: self.limit_rate.clone(),
            attempts: remote.attempts,
            quiet: self.quiet,
            upstreams: match (self.no_upstream, self.upstream.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, true) => None,
                (false, false) => Some(
                    self.upstream
                        .iter()
                        .map(|u| u.trim_end_matches('/').to_owned())
                        .collect(),
                ),
            },
            per_path_queries: self.per_path_queries,
        })
    }
}

pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the error and its causes.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Keygen { name, out } => keygen::run(&name, &out),
        Command::Token(TokenCommand::Mint {
            key,
            subject,
            permissions,
            expires_in,
            expires_at,
        }) => {
            let expires_at = match expires_at {
                Some(at) => at,
                None => token::now_unix()? + token::parse_duration(&expires_in)?,
            };
            token::mint(&key, subject, &permissions, expires_at)
        }
        Command::Token(TokenCommand::Inspect { token }) => token::inspect(&token),
        Command::Token(TokenCommand::Revoke { target, remote }) => {
            token::revoke(&remote.client()?, &target)
        }
        Command::Use {
            cache,
            token,
            token_file,
        } => {
            let target = Target::resolve(cache.as_deref())?;
            let sources = auth::TokenSources {
                explicit: token.as_deref(),
                file: token_file.as_deref(),
                saved: target.saved.as_ref().and_then(|s| s.token.as_deref()),
                netrc: None,
            };
            // A token asked for must be found; otherwise one is used if there is one
            // (a public cache needs none).
            let token = if token.is_some() || token_file.is_some() {
                Some(auth::find_token(sources, &target.url)?)
            } else {
                auth::find_token(sources, &target.url).ok()
            };
            use_cache::run(&target.url, token, 3, None)
        }
        Command::Init(args) => deploy::init(args),
        Command::Deploy(args) => deploy::deploy(args),
        Command::Rotate(args) => deploy::rotate(args),
        Command::Login(args) => login::run(args),
        Command::Logout { name } => login::logout(&name),
        Command::Hook(args) => hook::run(args),
        Command::Watch(args) => watch::run(args),
        Command::WatchStore(args) => watch_store::run(args),
        Command::Push(args) => push::run(args.flags.options(&args.remote, args.paths)?).map(drop),
        Command::Info { remote, json } => inventory::info(&remote.client()?, json),
        Command::Reconcile { remote, json } => inventory::reconcile(&remote.client()?, json),
        Command::Gc {
            remote,
            dry_run: true,
            json,
        } => retention::plan(&remote.client()?, json),
        Command::Gc { remote, json, .. } => retention::run(&remote.client()?, json),
        Command::Pin(PinCommand::Add {
            name,
            store_path,
            keep_days,
            remote,
        }) => retention::pin_add(&remote.client()?, &name, &store_path, keep_days),
        Command::Pin(PinCommand::List { remote, json }) => {
            retention::pin_list(&remote.client()?, json)
        }
        Command::Pin(PinCommand::Remove { name, remote }) => {
            retention::pin_remove(&remote.client()?, &name)
        }
    }
}
