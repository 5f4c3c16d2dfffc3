//! The `nixflare` command: client-side tooling. It holds the keys; the worker never
//! sees them. One file per subcommand; `client` is the HTTP side, `nar`/`upload` the
//! push pipeline. Data goes to stdout, status and progress to stderr.

mod auth;
mod client;
mod endpoints;
mod inventory;
mod keygen;
mod nar;
mod parallel;
mod pathinfo;
mod progress;
mod push;
mod retention;
mod spool;
mod token;
mod upload;
mod use_cache;

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
    /// Print the nix.conf, flake and netrc lines for using a cache.
    Use {
        /// The cache's URL.
        #[arg(env = "NIXFLARE_CACHE")]
        cache: String,
    },
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
        /// Comma-separated: read, write, overwrite, delete, revoke, pin.
        #[arg(long, default_value = "read,write")]
        permissions: String,
        /// Lifetime: a number with s, m, h or d (e.g. 90d).
        #[arg(long, default_value = "90d", conflicts_with = "expires_at")]
        expires_in: String,
        /// Absolute expiry in Unix seconds (instead of --expires-in).
        #[arg(long, value_name = "UNIX_SECONDS")]
        expires_at: Option<u64>,
    },
    /// Show what a token says, without checking its signature.
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
    /// The cache's URL, e.g. https://cache.example.org.
    #[arg(long, env = "NIXFLARE_CACHE")]
    cache: String,
    /// The token (prefer NIXFLARE_TOKEN or --token-file: arguments show up in `ps`).
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

impl Remote {
    fn client(&self) -> Result<client::Client> {
        Ok(client::Client::new(
            &self.cache,
            Some(self.token()?),
            self.attempts,
        ))
    }

    fn token(&self) -> Result<String> {
        auth::find_token(
            self.token.as_deref(),
            self.token_file.as_deref(),
            self.netrc_file.as_deref(),
            &self.cache,
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
    /// The narinfo signing key (Nix secret key file); the cache must list its public key.
    #[arg(long, env = "NIXFLARE_SIGNING_KEY", value_name = "FILE")]
    key: PathBuf,
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
            token::revoke(&remote.cache, remote.token()?, &target, remote.attempts)
        }
        Command::Use { cache } => use_cache::run(&cache, 3),
        Command::Push(args) => {
            let threads = args.compression_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
            });
            push::run(push::PushOptions {
                token: args.remote.token()?,
                cache: args.remote.cache,
                key: keygen::read_secret_key(&args.key)?,
                paths: args.paths,
                jobs: args.jobs.max(1),
                codec: nar::Codec {
                    compression: match args.compression {
                        CompressionArg::Zstd => Compression::Zstd,
                        CompressionArg::None => Compression::None,
                    },
                    level: args.compression_level,
                    threads,
                },
                spool: match args.spool_dir {
                    Some(dir) => dir,
                    None => spool::default_dir()?,
                },
                limit_rate: args.limit_rate,
                attempts: args.remote.attempts,
                quiet: args.quiet,
                upstreams: match (args.no_upstream, args.upstream.is_empty()) {
                    (true, _) => Some(Vec::new()),
                    (false, true) => None,
                    (false, false) => Some(
                        args.upstream
                            .iter()
                            .map(|u| u.trim_end_matches('/').to_owned())
                            .collect(),
                    ),
                },
                per_path_queries: args.per_path_queries,
            })
        }
        Command::Info { remote, json } => {
            inventory::info(&remote.cache, remote.token()?, remote.attempts, json)
        }
        Command::Reconcile { remote, json } => {
            inventory::reconcile(&remote.cache, remote.token()?, remote.attempts, json)
        }
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
