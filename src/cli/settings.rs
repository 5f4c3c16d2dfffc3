//! Saved cache settings: `nixflare login NAME URL` writes them, every command that
//! talks to a cache reads them, so `--cache NAME` (or nothing, for the default) stands
//! for the URL, the upload token and the signing key's path.
//!
//! The file is `$NIXFLARE_CONFIG`, else `$XDG_CONFIG_HOME/nixflare/config.toml`, else
//! `~/.config/nixflare/config.toml`. It holds tokens, so it is written 0600 (through a
//! fresh file renamed over the old one) and refused when group or others may read or
//! write it, as ssh refuses a readable private key. The signing key itself is never
//! copied into it: only its path.
//!
//! Precedence, most specific first: flags, then environment variables (clap gives both
//! to one field), then the saved cache, then (for the token) a netrc entry.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// The cache used when a command names none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    #[serde(default, rename = "cache")]
    pub caches: BTreeMap<String, SavedCache>,
}

/// One cache, as `login` saved it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SavedCache {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<PathBuf>,
}

impl std::fmt::Debug for SavedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavedCache")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("signing_key", &self.signing_key)
            .finish()
    }
}

/// Where the settings live.
pub fn path() -> Result<PathBuf> {
    if let Some(file) = std::env::var_os("NIXFLARE_CONFIG") {
        return Ok(PathBuf::from(file));
    }
    super::dirs::xdg(
        "XDG_CONFIG_HOME",
        ".config",
        "config.toml",
        "set NIXFLARE_CONFIG",
    )
}

/// A cache name as `login` accepts it: what fits in a TOML key and a shell word
/// without quoting, and can never be mistaken for a URL.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        bail!("cache name {name:?}: use 1 to 64 of a-z, A-Z, 0-9, '-', '_', '.'");
    }
    Ok(())
}

impl Settings {
    /// The saved settings; none saved is an empty set. A file others can read is an
    /// error, not a warning: its tokens may already have leaked, and carrying on would
    /// hide that.
    pub fn load(file: &Path) -> Result<Settings> {
        let meta = match fs::metadata(file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Settings::default()),
            other => other.with_context(|| format!("reading {}", file.display()))?,
        };
        if meta.mode() & 0o077 != 0 {
            bail!(
                "{} holds tokens but other users may read or change it (mode {:o}): run \
                 chmod 600 on it, and revoke its tokens if others did read it",
                file.display(),
                meta.mode() & 0o777
            );
        }
        let text =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // toml's message names the line and key; the file's text is not repeated.
        toml::from_str(&text).with_context(|| format!("{} is not valid", file.display()))
    }

    /// Writes the settings to `file` (0600) through a fresh file renamed over it, so
    /// a crash leaves the old or the new file, never half of one.
    pub fn save(&self, file: &Path) -> Result<()> {
        let dir = file
            .parent()
            .with_context(|| format!("{} has no directory", file.display()))?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let text = toml::to_string(self).context("rendering the settings")?;
        let header = "# Written by `nixflare login`. It holds upload tokens: keep it mode 0600.\n";
        super::dirs::replace_private(file, &format!("{header}{text}"))
    }

    /// The saved cache a command means: `name_or_url` names one, or is a URL one was
    /// saved for; with neither given, the default. `Ok(None)`: a URL nothing was
    /// saved for.
    pub fn find(&self, name_or_url: Option<&str>) -> Result<Option<(&str, &SavedCache)>> {
        match name_or_url {
            Some(given) if given.contains("://") => {
                let wanted = given.trim_end_matches('/');
                Ok(self
                    .caches
                    .iter()
                    .find(|(_, saved)| saved.url.trim_end_matches('/') == wanted)
                    .map(|(name, saved)| (name.as_str(), saved)))
            }
            Some(name) => match self.caches.get_key_value(name) {
                Some((name, saved)) => Ok(Some((name.as_str(), saved))),
                None => bail!(
                    "no cache named {name:?} is saved ({}): run `nixflare login {name} URL`, or pass a URL",
                    self.names()
                ),
            },
            None => {
                let Some(name) = &self.default else {
                    bail!(
                        "which cache? pass --cache NAME or URL, set NIXFLARE_CACHE, or save one with `nixflare login NAME URL`"
                    );
                };
                match self.caches.get_key_value(name) {
                    Some((name, saved)) => Ok(Some((name.as_str(), saved))),
                    None => bail!("the default cache {name:?} is not saved: run `nixflare login`"),
                }
            }
        }
    }

    fn names(&self) -> String {
        if self.caches.is_empty() {
            return "none is".to_owned();
        }
        let names: Vec<&str> = self.caches.keys().map(String::as_str).collect();
        format!("saved: {}", names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Settings {
        let mut settings = Settings {
            default: Some("mine".into()),
            ..Settings::default()
        };
        settings.caches.insert(
            "mine".into(),
            SavedCache {
                url: "https://cache.example.org".into(),
                token: Some("secret-token".into()),
                signing_key: Some("/k/sk".into()),
            },
        );
        settings
    }

    #[test]
    fn finds_by_name_url_and_default() {
        let settings = sample();
        assert_eq!(settings.find(None).unwrap().unwrap().0, "mine");
        assert_eq!(settings.find(Some("mine")).unwrap().unwrap().0, "mine");
        let by_url = settings.find(Some("https://cache.example.org/")).unwrap();
        assert_eq!(by_url.unwrap().0, "mine");
        assert!(settings.find(Some("http://elsewhere")).unwrap().is_none());
        let unknown = settings.find(Some("other")).unwrap_err().to_string();
        assert!(unknown.contains("saved: mine"), "{unknown}");
        assert!(Settings::default().find(None).is_err());
    }

    #[test]
    fn round_trips_and_refuses_an_open_file() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("nixflare-settings-{}", std::process::id()));
        let file = dir.join("config.toml");
        sample().save(&file).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
        let loaded = Settings::load(&file).unwrap();
        assert_eq!(loaded.caches["mine"].token.as_deref(), Some("secret-token"));
        assert!(!format!("{:?}", loaded.caches["mine"]).contains("secret-token"));
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let refused = Settings::load(&file).err().unwrap().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        assert!(!refused.contains("secret-token"));
        fs::remove_dir_all(&dir).unwrap();
        assert!(Settings::load(&file).unwrap().caches.is_empty());
    }

    #[test]
    fn names() {
        assert!(check_name("cache.example.org").is_ok());
        for bad in ["", "a b", "https://x", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
