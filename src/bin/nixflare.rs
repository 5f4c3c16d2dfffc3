//! The `nixflare` command: client-side tooling. It holds the keys; the worker never
//! sees them.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod cli {
    use std::fs;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;

    use std::time::{SystemTime, UNIX_EPOCH};

    use anyhow::{anyhow, bail, Context as _, Result};
    use clap::{Parser, Subcommand};
    use nixflare::nix::keys::SecretKey;
    use nixflare::token::{self, Claims, Permissions, TokenId};

    #[derive(Parser)]
    #[command(
        name = "nixflare",
        version,
        about = "Client for a nixflare Nix binary cache"
    )]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Make a narinfo signing key pair in Nix's key-file format
        /// (interchangeable with `nix key generate-secret`).
        Keygen {
            /// Key name, conventionally the cache's host name plus a number, e.g. cache.example.org-1.
            name: String,
            /// Where to write the secret key (mode 0600); the public key goes to FILE.pub.
            #[arg(long, value_name = "FILE")]
            out: PathBuf,
        },
        /// Mint and inspect upload tokens.
        #[command(subcommand)]
        Token(TokenCommand),
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
            /// Comma-separated: read, write, overwrite, delete, revoke.
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
    }

    pub fn main() -> ExitCode {
        match run(Cli::parse()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        }
    }

    fn run(cli: Cli) -> Result<()> {
        match cli.command {
            Command::Keygen { name, out } => keygen(&name, &out),
            Command::Token(TokenCommand::Mint {
                key,
                subject,
                permissions,
                expires_in,
                expires_at,
            }) => {
                let expires_at = match expires_at {
                    Some(at) => at,
                    None => now_unix()? + parse_duration(&expires_in)?,
                };
                mint(&key, subject, &permissions, expires_at)
            }
            Command::Token(TokenCommand::Inspect { token }) => inspect(&token),
        }
    }

    fn now_unix() -> Result<u64> {
        Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs())
    }

    fn parse_duration(text: &str) -> Result<u64> {
        let (number, unit) = text.split_at(text.len().saturating_sub(1));
        let scale = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => bail!("duration {text:?} needs a unit: s, m, h or d (e.g. 90d)"),
        };
        let n: u64 = number
            .parse()
            .map_err(|_| anyhow!("duration {text:?} is not a number with a unit (e.g. 90d)"))?;
        n.checked_mul(scale)
            .ok_or_else(|| anyhow!("duration {text:?} is too long"))
    }

    fn read_secret_key(path: &Path) -> Result<SecretKey> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        // The error names the problem, never the key text.
        text.trim()
            .parse()
            .with_context(|| format!("{} is not a Nix secret key file", path.display()))
    }

    fn mint(key: &Path, subject: String, permissions: &str, expires_at: u64) -> Result<()> {
        let key = read_secret_key(key)?;
        let permissions = Permissions::parse_list(permissions).map_err(|e| anyhow!(e))?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| anyhow!("no randomness for the token id: {e}"))?;
        let claims = Claims {
            id: TokenId(id),
            subject,
            permissions,
            expires_at,
        };
        let token = claims.mint(&key).context("minting token")?;
        println!("{token}");
        eprintln!(
            "token {} for {:?} ({}), expires at {} (Unix seconds)",
            claims.id, claims.subject, claims.permissions, claims.expires_at
        );
        Ok(())
    }

    fn inspect(token: &str) -> Result<()> {
        let text = if token == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading the token from stdin")?
        } else {
            token.to_owned()
        };
        let claims = token::decode_unverified(&text).context("not a nixflare token")?;
        println!("id: {}", claims.id);
        println!("subject: {}", claims.subject);
        println!("permissions: {}", claims.permissions);
        println!("expires_at: {}", claims.expires_at);
        let state = match now_unix()? >= claims.expires_at {
            true => "expired",
            false => "not expired",
        };
        eprintln!("({state}; the signature is checked only by the cache)");
        Ok(())
    }

    fn keygen(name: &str, out: &Path) -> Result<()> {
        if name.contains(':') || name.chars().any(char::is_whitespace) {
            bail!("key name {name:?} must not contain ':' or white space");
        }
        let secret = SecretKey::generate(name).context("generating key")?;
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
        // Data on stdout: the public key, for trusted-public-keys.
        println!("{public}");
        eprintln!(
            "wrote secret key to {} and public key to {}",
            out.display(),
            public_path.display()
        );
        Ok(())
    }
}
