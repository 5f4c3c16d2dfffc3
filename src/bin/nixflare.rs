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

    use anyhow::{bail, Context as _, Result};
    use clap::{Parser, Subcommand};
    use nixflare::nix::keys::SecretKey;

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
        }
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
