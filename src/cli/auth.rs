//! Where the client finds its upload token: `--token` or `NIXFLARE_TOKEN`, `--token-file`,
//! the token `nixflare login` saved for the cache, or the netrc file Nix would use for
//! the cache's host (`make dev` writes one), so a user who set up `nix copy` needs
//! nothing more.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};

/// Where a token may come from, most specific first.
pub struct TokenSources<'a> {
    pub explicit: Option<&'a str>,
    pub file: Option<&'a Path>,
    pub saved: Option<&'a str>,
    pub netrc: Option<&'a Path>,
}

/// The first token found, in the order above (a `--netrc-file` given on the command
/// line comes before the saved token).
pub fn find_token(sources: TokenSources<'_>, cache_url: &str) -> Result<String> {
    if let Some(token) = sources.explicit {
        return Ok(token.trim().to_owned());
    }
    if let Some(file) = sources.file {
        return read_token_file(file);
    }
    // A netrc file named on the command line is more specific than the saved token;
    // the default netrc files are less.
    let netrc = sources.netrc;
    let host = host_of(cache_url)?;
    if let (Some(token), None) = (sources.saved, netrc) {
        return Ok(token.to_owned());
    }
    let candidates: Vec<PathBuf> = match netrc {
        Some(path) => vec![path.to_owned()],
        None => default_netrc_files(),
    };
    for path in &candidates {
        if let Ok(text) = fs::read_to_string(path) {
            if let Some(password) = netrc_password(&text, &host) {
                return Ok(password);
            }
        }
    }
    if let Some(token) = sources.saved {
        return Ok(token.to_owned());
    }
    bail!(
        "no upload token for {host}: pass --token-file FILE, set NIXFLARE_TOKEN, save one \
         with `nixflare login NAME URL`, or add `machine {host} password TOKEN` to a netrc \
         file (looked in: {}); in a GitHub Actions job, `permissions: id-token: write` lets \
         it use the job's ID token",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A token kept in a file (trailing whitespace, as editors leave it, dropped). Errors
/// name the file, never its text.
pub fn read_token_file(file: &Path) -> Result<String> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        bail!("{} does not hold one token", file.display());
    }
    Ok(token.to_owned())
}

fn default_netrc_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        files.push(PathBuf::from(home).join(".netrc"));
    }
    // Nix's default `netrc-file`.
    files.push(PathBuf::from("/etc/nix/netrc"));
    files
}

/// The host of a URL, without port or credentials (netrc machines are host names; curl
/// matches the host without the port).
pub fn host_of(url: &str) -> Result<String> {
    url.parse::<ureq::http::Uri>()
        .ok()
        .and_then(|uri| uri.host().map(str::to_owned))
        .with_context(|| {
            format!("{url:?} is not a URL with a host (write an IDN host in punycode)")
        })
}

/// The password of `machine host` in netrc text. A `default` entry is never used: its
/// password may be meant for any site, and a token sent to the cache is a credential
/// handed over, so only an entry naming the cache's host counts.
fn netrc_password(text: &str, host: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    let mut in_match = false;
    while let Some(word) = words.next() {
        match word {
            "machine" => in_match = words.next() == Some(host),
            "default" => in_match = false,
            "password" => {
                let password = words.next()?;
                if in_match {
                    return Some(password.to_owned());
                }
            }
            // login, account, macdef take a value we do not need.
            "login" | "account" | "macdef" => {
                words.next();
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        assert_eq!(host_of("http://127.0.0.1:8787").unwrap(), "127.0.0.1");
        assert_eq!(
            host_of("https://cache.example.org/").unwrap(),
            "cache.example.org"
        );
        assert_eq!(
            host_of("https://u:p@cache.example.org:443/x").unwrap(),
            "cache.example.org"
        );
        assert!(host_of("https://café.example").is_err());
    }

    #[test]
    fn a_netrc_file_named_on_the_command_line_comes_before_the_saved_token() {
        let dir = std::env::temp_dir().join(format!("nixflare-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let netrc = dir.join("netrc");
        std::fs::write(&netrc, "machine cache.example.org password from-netrc\n").unwrap();
        let url = "https://cache.example.org";
        let sources = |netrc| TokenSources {
            explicit: None,
            file: None,
            saved: Some("saved"),
            netrc,
        };
        assert_eq!(
            find_token(sources(Some(&netrc)), url).unwrap(),
            "from-netrc"
        );
        assert_eq!(find_token(sources(None), url).unwrap(), "saved");
        // A named netrc without the host falls back to the saved token.
        let other = find_token(sources(Some(&netrc)), "https://elsewhere.example.org");
        assert_eq!(other.unwrap(), "saved");
        let explicit = TokenSources {
            explicit: Some("flag"),
            ..sources(Some(&netrc))
        };
        assert_eq!(find_token(explicit, url).unwrap(), "flag");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn netrc_lookup() {
        let text = "machine other password nope\nmachine 127.0.0.1 login nix password tok1\ndefault login x password fallback\n";
        assert_eq!(netrc_password(text, "127.0.0.1").as_deref(), Some("tok1"));
        // A default entry's password is not for the cache.
        assert_eq!(netrc_password(text, "elsewhere"), None);
        assert_eq!(
            netrc_password("default password x machine c password y", "c").as_deref(),
            Some("y")
        );
        assert_eq!(netrc_password("machine a password b", "c"), None);
    }
}
