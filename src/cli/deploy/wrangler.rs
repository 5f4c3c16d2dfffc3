//! The `wrangler` commands a deployment runs, with the user's own Cloudflare login.
//! `wrangler` is the one on PATH, else the checkout's (`make setup` installs it into
//! node_modules). In a dry run each command is printed instead of run.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

pub struct Wrangler {
    program: PathBuf,
    checkout: PathBuf,
    pub dry_run: bool,
}

/// What a command printed, and whether it succeeded.
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Wrangler {
    pub fn find(checkout: &Path, dry_run: bool) -> Result<Wrangler> {
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join("wrangler"))
            .find(|file| file.is_file());
        let local = checkout.join("node_modules/.bin/wrangler");
        let program = match on_path {
            Some(program) => program,
            None if local.is_file() => local,
            None => bail!(
                "wrangler is not installed: run `make setup` in {} (it installs wrangler \
                 into node_modules)",
                checkout.display()
            ),
        };
        Ok(Wrangler {
            program,
            checkout: checkout.to_owned(),
            dry_run,
        })
    }

    /// Runs `wrangler args`, echoing what it prints to stderr (a deploy builds for
    /// minutes: the user sees it happen) and keeping it for the caller.
    fn run(&self, args: &[&str], echo: bool) -> Result<Outcome> {
        let mut child = Command::new(&self.program)
            .args(args)
            .current_dir(&self.checkout)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("running {}", self.program.display()))?;
        let stderr = child.stderr.take().map(|err| {
            std::thread::spawn(move || {
                let mut text = String::new();
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("  | {line}");
                    }
                    text.push_str(&line);
                    text.push('\n');
                }
                text
            })
        });
        let mut stdout = String::new();
        if let Some(out) = child.stdout.take() {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("  | {line}");
                }
                stdout.push_str(&line);
                stdout.push('\n');
            }
        }
        let status = child.wait().context("waiting for wrangler")?;
        Ok(Outcome {
            success: status.success(),
            stdout,
            stderr: stderr.and_then(|t| t.join().ok()).unwrap_or_default(),
        })
    }

    fn show(&self, args: &[&str]) {
        eprintln!("  would run: wrangler {}", args.join(" "));
    }

    /// Fails unless wrangler holds a Cloudflare login (or an API token).
    pub fn check_login(&self) -> Result<()> {
        let args = ["whoami", "--json"];
        if self.dry_run {
            self.show(&args);
            return Ok(());
        }
        let outcome = self.run(&args, false)?;
        if !outcome.success {
            bail!(
                "not logged in to Cloudflare: run `npx wrangler login` in {} (or set \
                 CLOUDFLARE_API_TOKEN){}",
                self.checkout.display(),
                tail(&outcome)
            );
        }
        Ok(())
    }

    /// True if the account has the bucket.
    pub fn bucket_exists(&self, bucket: &str) -> Result<bool> {
        let args = ["r2", "bucket", "info", bucket];
        if self.dry_run {
            self.show(&args);
            return Ok(false);
        }
        let outcome = self.run(&args, false)?;
        if outcome.success {
            return Ok(true);
        }
        let text = format!("{}{}", outcome.stdout, outcome.stderr).to_ascii_lowercase();
        if text.contains("does not exist") || text.contains("not found") {
            return Ok(false);
        }
        bail!(
            "cannot tell whether bucket {bucket:?} exists{}",
            tail(&outcome)
        )
    }

    pub fn create_bucket(&self, bucket: &str) -> Result<()> {
        let args = ["r2", "bucket", "create", bucket];
        if self.dry_run {
            self.show(&args);
            return Ok(());
        }
        let outcome = self.run(&args, true)?;
        if !outcome.success {
            bail!(
                "wrangler could not create it (is R2 enabled on the account? the dashboard's \
                 R2 page enables it){}",
                tail(&outcome)
            );
        }
        Ok(())
    }

    /// Builds and deploys the worker `config` describes; returns the URL wrangler
    /// printed for it, if any (a workers.dev route).
    pub fn deploy(&self, config: &Path) -> Result<Option<String>> {
        let config = config.display().to_string();
        let args = ["deploy", "--config", config.as_str()];
        if self.dry_run {
            self.show(&args);
            return Ok(None);
        }
        let outcome = self.run(&args, true)?;
        if !outcome.success {
            bail!("wrangler deploy failed{}", tail(&outcome));
        }
        Ok(deployed_url(&outcome.stdout))
    }
}

/// The URL `wrangler deploy` prints on a line of its own after "Deployed …", a
/// workers.dev one first (a custom domain's route is printed without a scheme).
fn deployed_url(stdout: &str) -> Option<String> {
    let after_deployed = stdout
        .lines()
        .skip_while(|line| !line.trim_start().starts_with("Deployed"))
        .map(str::trim)
        .filter(|line| {
            (line.starts_with("https://") || line.starts_with("http://"))
                && !line.contains(char::is_whitespace)
        });
    let urls: Vec<&str> = after_deployed.collect();
    urls.iter()
        .find(|url| url.trim_end_matches('/').ends_with(".workers.dev"))
        .or(urls.first())
        .map(|url| url.trim_end_matches('/').to_owned())
}

/// The end of what a failed command printed, for its error.
fn tail(outcome: &Outcome) -> String {
    let text = format!("{}{}", outcome.stdout, outcome.stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(6);
    if lines.is_empty() {
        String::new()
    } else {
        format!(":\n  {}", lines[start..].join("\n  "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_url_wrangler_deploy_prints() {
        let out = "Total Upload: 900 KiB\nUploaded my-cache (3.2 sec)\nDeployed my-cache triggers (0.4 sec)\n  https://my-cache.alice.workers.dev\n  schedule: 17 * * * *\nCurrent Version ID: 1234\n";
        assert_eq!(
            deployed_url(out).as_deref(),
            Some("https://my-cache.alice.workers.dev")
        );
        assert_eq!(
            deployed_url("see https://developers.cloudflare.com x\n"),
            None
        );
    }
}
