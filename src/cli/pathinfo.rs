//! A closure's metadata from `nix path-info --json --recursive`.
//!
//! The JSON has changed shape across Nix versions, and every shape is accepted:
//! - Nix <= 2.18 and Lix: a list of objects, each with a `path` field;
//! - Nix >= 2.19: an object keyed by store path (`null` for an invalid path);
//! - Nix 2.33 development builds: `narHash` as `{"algorithm", "format", "hash"}`
//!   instead of a string (NixOS/nix#14589, reverted to SRI strings in #14743).
//!
//! References and derivers may be full store paths or base names; hashes may be
//! `sha256:<nix32|hex>` or SRI (`crate::core::nix::hash::Sha256` reads them all).

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine as _;
use serde_json::Value;

use crate::core::nix::content_address::ContentAddress;
use crate::core::nix::hash::Sha256;
use crate::core::nix::keys::Signature;
use crate::core::nix::store_path::StorePathBaseName;

/// One store path as Nix describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePathBaseName,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePathBaseName>,
    pub deriver: Option<StorePathBaseName>,
    pub signatures: Vec<Signature>,
    pub ca: Option<ContentAddress>,
}

/// Parses the whole `path-info --json` output for paths under `store_dir`.
pub fn parse(json: &str, store_dir: &str) -> Result<Vec<PathInfo>> {
    let value: Value = serde_json::from_str(json).context("nix path-info printed invalid JSON")?;
    let entries: Vec<(String, &Value)> = match &value {
        Value::Array(items) => items
            .iter()
            .map(|item| {
                let path = item
                    .get("path")
                    .and_then(Value::as_str)
                    .ok_or_else(|| anyhow!("path-info entry without a path"))?;
                Ok((path.to_owned(), item))
            })
            .collect::<Result<_>>()?,
        Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        _ => bail!("nix path-info --json printed neither a list nor an object"),
    };
    entries
        .into_iter()
        .map(|(path, item)| {
            parse_entry(&path, item, store_dir).with_context(|| format!("path-info of {path}"))
        })
        .collect()
}

fn parse_entry(path: &str, item: &Value, store_dir: &str) -> Result<PathInfo> {
    if item.is_null() || item.get("valid").and_then(Value::as_bool) == Some(false) {
        bail!("not a valid path in the local store");
    }
    let field = |name: &str| item.get(name).filter(|v| !v.is_null());
    let nar_hash = match field("narHash") {
        Some(Value::String(text)) => text.parse().map_err(|e| anyhow!("narHash: {e}"))?,
        Some(object @ Value::Object(_)) => structured_hash(object)?,
        _ => bail!("no narHash"),
    };
    let nar_size = field("narSize")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("no narSize"))?;
    let references = match field("references") {
        Some(Value::Array(refs)) => refs
            .iter()
            .map(|r| base_name(r.as_str().unwrap_or_default(), store_dir))
            .collect::<Result<_>>()?,
        None => Vec::new(),
        Some(_) => bail!("references is not a list"),
    };
    let deriver = field("deriver")
        .and_then(Value::as_str)
        .map(|d| base_name(d, store_dir))
        .transpose()?;
    let signatures = match field("signatures") {
        Some(Value::Array(sigs)) => sigs
            .iter()
            .filter_map(Value::as_str)
            // A signature we cannot read is dropped, not fatal: ours is added anyway.
            .filter_map(|s| s.parse().ok())
            .collect(),
        _ => Vec::new(),
    };
    let ca = match field("ca") {
        Some(Value::String(text)) if !text.is_empty() => Some(text.clone()),
        Some(object @ Value::Object(_)) => Some(structured_ca(object)?),
        _ => None,
    };
    let ca = ca
        .map(|text| {
            text.parse::<ContentAddress>()
                .map_err(|e| anyhow!("ca {text:?}: {e}"))
        })
        .transpose()?;
    Ok(PathInfo {
        path: base_name(path, store_dir)?,
        nar_hash,
        nar_size,
        references,
        deriver,
        signatures,
        ca,
    })
}

/// `/nix/store/<hash>-<name>` or `<hash>-<name>` → the base name.
fn base_name(text: &str, store_dir: &str) -> Result<StorePathBaseName> {
    let base = match text.strip_prefix(store_dir) {
        Some(rest) => rest
            .strip_prefix('/')
            .ok_or_else(|| anyhow!("{text:?} is not in {store_dir}"))?,
        None if text.starts_with('/') => bail!("{text:?} is not in {store_dir}"),
        None => text,
    };
    base.parse()
        .map_err(|e| anyhow!("store path {text:?}: {e}"))
}

/// `{"algorithm": "sha256", "format": "base64"|"nix32"|"base16", "hash": "…"}`.
fn structured_hash(value: &Value) -> Result<Sha256> {
    let get = |name| value.get(name).and_then(Value::as_str).unwrap_or_default();
    if get("algorithm") != "sha256" {
        bail!("narHash algorithm {:?} is not sha256", get("algorithm"));
    }
    let hash = get("hash");
    let text = match get("format") {
        "base64" => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(hash)
                .map_err(|_| anyhow!("narHash is not base64"))?;
            return <[u8; 32]>::try_from(bytes)
                .map(Sha256)
                .map_err(|_| anyhow!("narHash is not 32 bytes"));
        }
        "nix32" | "base32" | "base16" => format!("sha256:{hash}"),
        "sri" => hash.to_owned(),
        other => bail!("narHash format {other:?} is not known"),
    };
    text.parse().map_err(|e| anyhow!("narHash: {e}"))
}

/// The structured `ca` of newer Nix (`{"method": "nar"|"flat"|"text", "hash": …}`),
/// rendered as a narinfo writes it (`fixed:r:sha256:…`, `fixed:sha256:…`, `text:…`).
fn structured_ca(value: &Value) -> Result<String> {
    let method = value
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let hash = match value.get("hash") {
        Some(Value::String(text)) => text.parse::<Sha256>().map_err(|e| anyhow!("ca: {e}"))?,
        Some(object @ Value::Object(_)) => structured_hash(object)?,
        _ => bail!("ca without a hash"),
    };
    Ok(match method {
        "nar" => format!("fixed:r:{hash}"),
        "flat" => format!("fixed:{hash}"),
        "text" => format!("text:{hash}"),
        other => bail!("ca method {other:?} is not known"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORE: &str = "/nix/store";
    const LEAF: &str = "/nix/store/pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-nixflare-e2e-leaf";
    const TOP: &str = "/nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-nixflare-e2e-top";
    const NAR_HASH: &str = "sha256:0l1v2mjy9ivhn9njfz2szzh7whr0vj02cysj0xhng9mdi3zfcnpa";

    /// Shape printed by Debian's Nix 2.8 (this machine), trimmed to two paths.
    fn nix_2_8() -> String {
        format!(
            r#"[{{"path":"{LEAF}","narHash":"{NAR_HASH}","narSize":120,"references":[],"deriver":"/nix/store/y0jsrnz5wl8xa2smjqdn6xz1msj10zga-nixflare-e2e-leaf.drv","registrationTime":1,"valid":true}},
               {{"path":"{TOP}","narHash":"{NAR_HASH}","narSize":1670328,"references":["{LEAF}"],"signatures":["test-1:f1zVi3vqU8afC9VyEkWbKAu2GxMDTHF4ECH3QA4vxd0nWH2RN7j5CZlpeZxXygzFAJFoRcgtB/k8+HkdH5kfDw=="],"valid":true}}]"#
        )
    }

    #[test]
    fn reads_the_list_shape() {
        let infos = parse(&nix_2_8(), STORE).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].nar_size, 120);
        assert_eq!(
            infos[0].deriver.as_ref().unwrap().name(),
            "nixflare-e2e-leaf.drv"
        );
        assert_eq!(infos[1].references[0].to_string(), &LEAF[11..]);
        assert_eq!(infos[1].signatures.len(), 1);
        assert_eq!(infos[1].nar_hash.to_string(), NAR_HASH);
    }

    #[test]
    fn reads_the_keyed_shape_with_sri_and_structured_hashes() {
        let sha = NAR_HASH.parse::<Sha256>().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(sha.0);
        let json = format!(
            r#"{{"{LEAF}":{{"narHash":"sha256-{b64}","narSize":120,"references":[],"deriver":null,"ca":null}},
                "{TOP}":{{"narHash":{{"algorithm":"sha256","format":"base64","hash":"{b64}"}},"narSize":9,
                          "references":["pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-nixflare-e2e-leaf"],
                          "ca":{{"method":"nar","hash":"sha256-{b64}"}}}}}}"#
        );
        let infos = parse(&json, STORE).unwrap();
        assert!(infos.iter().all(|i| i.nar_hash == sha));
        let top = infos.iter().find(|i| i.nar_size == 9).unwrap();
        assert_eq!(top.references[0].to_string(), &LEAF[11..]);
        assert_eq!(
            top.ca.as_ref().map(ToString::to_string),
            Some(format!("fixed:r:{NAR_HASH}"))
        );
    }

    #[test]
    fn refuses_invalid_paths_and_foreign_stores() {
        let err = parse(&format!(r#"{{"{LEAF}":null}}"#), STORE).unwrap_err();
        assert!(format!("{err:#}").contains("not a valid path"), "{err:#}");
        let err = parse(&format!(r#"[{{"path":"{LEAF}","valid":false}}]"#), STORE).unwrap_err();
        assert!(format!("{err:#}").contains("not a valid path"));
        let foreign = LEAF.replace("/nix/store", "/gnu/store");
        let json = format!(r#"[{{"path":"{foreign}","narHash":"{NAR_HASH}","narSize":1}}]"#);
        assert!(format!("{:#}", parse(&json, STORE).unwrap_err()).contains("not in /nix/store"));
        assert!(parse("3", STORE).is_err());
    }
}
