//! A deployment: one cache on Cloudflare, as `nixflare init` made it. Its directory
//! (`$XDG_CONFIG_HOME/nixflare/deployments/<worker>/`, 0700, outside any checkout)
//! holds the secret keys, the tokens `init` minted, `deployment.toml` (the operator's
//! choices: public values only) and the `wrangler.toml` generated from it.
//!
//! Why a separate file merged at deploy time rather than edits to the checkout's
//! `wrangler.toml`: the checkout's file stays the defaults `make dev` and the tests
//! run, a `git pull` never conflicts with an operator's settings (new settings and
//! migrations reach the deployment at the next `nixflare deploy`), several caches
//! (staging, production) deploy from one checkout, and nothing about a deployment is
//! ever written into the repository.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::core::config::{var, CacheConfig};

/// `deployment.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Deployment {
    /// The prefix of the keys' names (`<cache-name>-1`), conventionally the host name.
    pub cache_name: String,
    pub worker: String,
    pub bucket: String,
    /// The nixflare checkout whose worker is deployed (its `wrangler.toml` is the base).
    pub checkout: PathBuf,
    /// Where the cache answers: a custom domain, or what the first deploy printed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The narinfo signing key pushes use now (relative: to the deployment directory).
    pub signing_key: PathBuf,
    /// The admin key tokens are minted with now.
    pub token_key: PathBuf,
    /// Worker variables set over the checkout's `[vars]` defaults.
    pub vars: BTreeMap<String, String>,
}

pub const FILE: &str = "deployment.toml";
/// The generated configuration `wrangler deploy --config` takes.
pub const WRANGLER_FILE: &str = "wrangler.toml";

/// The deployment directory of `worker` when none is named.
pub fn default_dir(worker: &str) -> Result<PathBuf> {
    crate::cli::dirs::xdg(
        "XDG_CONFIG_HOME",
        ".config",
        &format!("deployments/{worker}"),
        "pass --dir DIR",
    )
}

impl Deployment {
    /// The deployment in `dir`, if `init` made one there.
    pub fn load(dir: &Path) -> Result<Option<Deployment>> {
        let file = dir.join(FILE);
        let text = match fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
        };
        toml::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a nixflare deployment file", file.display()))
    }

    /// Writes `deployment.toml` through a fresh file renamed over the old one.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = format!(
            "# The nixflare deployment {:?}, made by `nixflare init`. `nixflare deploy {}` merges\n\
             # [vars] over the checkout's wrangler.toml and deploys; edit it, then run that.\n\
             # Public values only: the secret keys are files beside it.\n{}",
            self.worker,
            self.worker,
            toml::to_string(self).context("writing the deployment file")?
        );
        crate::cli::dirs::replace_private(&dir.join(FILE), &text)
    }

    pub fn var(&self, name: &str) -> &str {
        self.vars.get(name).map_or("", String::as_str)
    }

    /// The checkout's `wrangler.toml` with this deployment's names and `[vars]`, its
    /// paths made absolute so the file works from the deployment directory; returns the
    /// text and the variables the worker will see.
    pub fn wrangler_config(&self) -> Result<(String, BTreeMap<String, String>)> {
        let base_file = self.checkout.join("wrangler.toml");
        let base = fs::read_to_string(&base_file)
            .with_context(|| format!("reading {}", base_file.display()))?;
        merge(&base, self)
    }

    /// The configuration the worker will hold, checked by the worker's own rules.
    pub fn validate(vars: &BTreeMap<String, String>) -> Result<CacheConfig> {
        CacheConfig::from_vars(|name| vars.get(name).cloned())
            .map_err(|e| anyhow!("the worker would refuse this configuration: {e}"))
    }
}

/// `base` (a wrangler.toml) with `deployment`'s settings: see `wrangler_config`.
fn merge(base: &str, deployment: &Deployment) -> Result<(String, BTreeMap<String, String>)> {
    let mut config: toml::Table = toml::from_str(base).context("the checkout's wrangler.toml")?;
    let checkout = &deployment.checkout;
    let absolute = |relative: &str| checkout.join(relative).display().to_string();
    config.insert("name".into(), deployment.worker.clone().into());
    let main = config
        .get("main")
        .and_then(|m| m.as_str())
        .ok_or_else(|| anyhow!("the checkout's wrangler.toml names no main module"))?;
    config.insert("main".into(), absolute(main).into());
    if let Some(build) = config.get_mut("build").and_then(|b| b.as_table_mut()) {
        // wrangler runs the build in the configuration file's directory by default.
        build.insert("cwd".into(), checkout.display().to_string().into());
        build.insert("watch_dir".into(), absolute("src").into());
    }
    let buckets = config
        .get_mut("r2_buckets")
        .and_then(|b| b.as_array_mut())
        .ok_or_else(|| anyhow!("the checkout's wrangler.toml binds no R2 bucket"))?;
    let bucket = buckets
        .iter_mut()
        .filter_map(|b| b.as_table_mut())
        .find(|b| b.get("binding").and_then(|n| n.as_str()) == Some("BUCKET"))
        .ok_or_else(|| anyhow!("the checkout's wrangler.toml has no BUCKET binding"))?;
    bucket.insert("bucket_name".into(), deployment.bucket.clone().into());

    let vars = config
        .get_mut("vars")
        .and_then(|v| v.as_table_mut())
        .ok_or_else(|| anyhow!("the checkout's wrangler.toml has no [vars]"))?;
    for (name, value) in &deployment.vars {
        if !vars.contains_key(name) {
            bail!(
                "{FILE} sets {name}, which the worker does not read (the checkout's [vars]: {})",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        vars.insert(name.clone(), value.clone().into());
    }
    let mut seen = BTreeMap::new();
    for (name, value) in vars.iter() {
        let value = value
            .as_str()
            .ok_or_else(|| anyhow!("[vars] {name} is not text"))?;
        seen.insert(name.clone(), value.to_owned());
    }
    let text = format!(
        "# Generated by nixflare from {} and {FILE}: edits here are overwritten.\n{}",
        checkout.join("wrangler.toml").display(),
        toml::to_string(&config).context("writing the merged wrangler.toml")?
    );
    Ok((text, seen))
}

/// Variables `init` sets; the rest keep the checkout's defaults unless edited in.
pub const MANAGED_VARS: [&str; 6] = [
    var::PUBLIC_KEYS,
    var::TOKEN_PUBLIC_KEYS,
    var::READ_ACCESS,
    var::RETAIN_DAYS,
    var::MAX_CACHE_BYTES,
    var::UPSTREAM_CACHES,
];

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Deployment {
        Deployment {
            cache_name: "cache.example.org".into(),
            worker: "my-cache".into(),
            bucket: "my-bucket".into(),
            checkout: "/src/nixflare".into(),
            url: None,
            signing_key: "signing-key-1.sec".into(),
            token_key: "token-key-1.sec".into(),
            vars: BTreeMap::from([("RETAIN_DAYS".into(), "30".into())]),
        }
    }

    #[test]
    fn merges_names_paths_and_vars_over_the_checkouts_file() {
        let base = include_str!("../../../wrangler.toml");
        let (text, vars) = merge(base, &deployment()).unwrap();
        let merged: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(merged["name"].as_str(), Some("my-cache"));
        assert_eq!(
            merged["main"].as_str(),
            Some("/src/nixflare/build/worker/shim.mjs")
        );
        assert_eq!(merged["build"]["cwd"].as_str(), Some("/src/nixflare"));
        assert_eq!(
            merged["r2_buckets"][0]["bucket_name"].as_str(),
            Some("my-bucket")
        );
        assert_eq!(merged["vars"]["RETAIN_DAYS"].as_str(), Some("30"));
        assert_eq!(vars["RETAIN_DAYS"], "30");
        // The rest of the checkout's file comes along (migrations, cron, cache).
        assert_eq!(merged["migrations"][0]["tag"].as_str(), Some("v1"));
        assert_eq!(vars["GC_GRACE_HOURS"], "48");
        for name in MANAGED_VARS {
            assert!(
                vars.contains_key(name),
                "{name} is in wrangler.toml's [vars]"
            );
        }
    }

    #[test]
    fn refuses_variables_the_worker_does_not_read() {
        let mut d = deployment();
        d.vars.insert("RETAIN_DAZE".into(), "3".into());
        let err = merge(include_str!("../../../wrangler.toml"), &d).unwrap_err();
        assert!(err.to_string().contains("RETAIN_DAZE"), "{err}");
    }

    #[test]
    fn round_trips_through_its_file() {
        let d = deployment();
        let text = toml::to_string(&d).unwrap();
        assert_eq!(toml::from_str::<Deployment>(&text).unwrap(), d);
    }
}
