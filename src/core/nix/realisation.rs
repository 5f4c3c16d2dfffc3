//! Realisations: which store path a content-addressed derivation's output became.
//!
//! Nix does not check a realisation's signatures when it substitutes, so a cache that
//! takes uploads is the only gate: one is published only with a signature by a trusted
//! key over Nix's realisation fingerprint. Two formats:
//!
//! - `realisations/sha256:<hex>!<output>.doi` (Nix <= 2.34, Lix):
//!   `{"dependentRealisations":{…},"id":"sha256:…!out","outPath":"<base name>",
//!   "signatures":["name:base64",…]}`. The fingerprint is that object without
//!   `signatures`, as nlohmann's `dump()` writes it: keys sorted, no spaces
//!   (`Realisation::fingerprint` in libstore/realisation.cc).
//! - `build-trace-v2/<drv>/<output>.doi` (Nix >= 2.35): the entry's value,
//!   `{"outPath":"<base name>","signatures":[{"keyName":…,"sig":…},…]}`, its key given by
//!   the path. The fingerprint is
//!   `{"key":{"drvPath":"<drv>","outputName":"<out>"},"value":{"outPath":"<base name>"}}`
//!   (`UnkeyedRealisation::fingerprint`).
//!
//! Every value that goes into a fingerprint is checked to be a hash, an output name or a
//! store path base name, none of which JSON escapes, so rendering it here gives exactly
//! Nix's bytes.

use thiserror::Error;

use super::hash::Sha256;
use super::keys::{any_verifies, PublicKey, Signature, MAX_SIGNATURES};
use super::store_path::{check_name, StorePathBaseName};
use crate::core::json_read::{self, JsonError, Value};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RealisationError {
    #[error("realisation is not JSON: {0}")]
    Json(#[from] JsonError),
    #[error("realisation {0} is missing or malformed")]
    Field(&'static str),
    #[error("realisation id {found:?} is not the {expected:?} of its path")]
    Id { expected: String, found: String },
    #[error("no realisation signature verifies under this cache's public keys")]
    Signature,
}

/// What a realisation file is stored as: which format, and the id its path gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealisationKey {
    /// `realisations/sha256:<hex>!<output>.doi`
    Legacy { drv_hash: Sha256, output: String },
    /// `build-trace-v2/<drv>/<output>.doi`
    BuildTrace { drv: String, output: String },
}

/// A realisation that parsed, with the bytes its signatures sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    pub out_path: StorePathBaseName,
    pub signatures: Vec<Signature>,
    fingerprint: String,
}

impl Realisation {
    /// Parses the file stored under `key`.
    pub fn parse(bytes: &[u8], key: &RealisationKey) -> Result<Realisation, RealisationError> {
        let json = json_read::parse(bytes)?;
        let out_path = base_name(json.get("outPath")).ok_or(RealisationError::Field("outPath"))?;
        let signatures = signatures(json.get("signatures"))?;
        let fingerprint = match key {
            RealisationKey::Legacy { drv_hash, output } => {
                let expected = format!("sha256:{}!{output}", drv_hash.lower_hex());
                let found = json.get("id").and_then(Value::as_str).unwrap_or_default();
                if found != expected {
                    let found = found.chars().take(100).collect();
                    return Err(RealisationError::Id { expected, found });
                }
                let dependent = dependent_realisations(json.get("dependentRealisations"))?;
                format!(
                    "{{\"dependentRealisations\":{{{dependent}}},\"id\":\"{expected}\",\"outPath\":\"{out_path}\"}}"
                )
            }
            RealisationKey::BuildTrace { drv, output } => format!(
                "{{\"key\":{{\"drvPath\":\"{drv}\",\"outputName\":\"{output}\"}},\"value\":{{\"outPath\":\"{out_path}\"}}}}"
            ),
        };
        Ok(Realisation {
            out_path,
            signatures,
            fingerprint,
        })
    }

    /// What the signatures sign.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// True when a signature verifies under one of `keys` (at most one verification
    /// per key: [`any_verifies`]).
    pub fn signed_by_any(&self, keys: &[PublicKey]) -> bool {
        any_verifies(keys, &self.signatures, self.fingerprint.as_bytes())
    }
}

fn base_name(value: Option<&Value>) -> Option<StorePathBaseName> {
    value?.as_str()?.parse().ok()
}

/// `"name:base64"` (every format) or `{"keyName":…,"sig":…}` (Nix >= 2.35). One that
/// does not parse is refused: Nix would fail to read the file.
fn signatures(value: Option<&Value>) -> Result<Vec<Signature>, RealisationError> {
    let bad = || RealisationError::Field("signatures");
    let items = match value {
        None => return Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= MAX_SIGNATURES => items,
        Some(_) => return Err(bad()),
    };
    items
        .iter()
        .map(|item| {
            let text = match item {
                Value::String(text) => text.clone(),
                Value::Object(_) => {
                    let field = |name| item.get(name).and_then(Value::as_str).ok_or_else(bad);
                    format!("{}:{}", field("keyName")?, field("sig")?)
                }
                _ => return Err(bad()),
            };
            text.parse().map_err(|_| bad())
        })
        .collect()
}

/// `"<id>":"<base name>"` pairs sorted by id, as the fingerprint holds them.
fn dependent_realisations(value: Option<&Value>) -> Result<String, RealisationError> {
    let bad = || RealisationError::Field("dependentRealisations");
    let entries = match value {
        None => return Ok(String::new()),
        Some(value) => value.as_object().ok_or_else(bad)?,
    };
    let mut pairs = Vec::with_capacity(entries.len());
    for (id, path) in entries {
        let (hash, output) = id.split_once('!').ok_or_else(bad)?;
        let hash = hash.strip_prefix("sha256:").ok_or_else(bad)?;
        Sha256::from_lower_hex(hash).ok_or_else(bad)?;
        check_name(output).map_err(|_| bad())?;
        let path = base_name(Some(path)).ok_or_else(bad)?;
        pairs.push(format!("\"{id}\":\"{path}\""));
    }
    pairs.sort();
    Ok(pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nix::keys::SecretKey;

    const SECRET: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";
    const HEX: &str = "41223c37ccc950cc0307dbc19d588c7a811274adf160545b48fb1a6ea9cc306a";
    const OUT: &str = "35fr63fr98h0cwykdchihgajqnrq5zla-corpus-floating-ca";
    const DRV: &str = "i7mxm7dli462k06ylp37068p1l4b94rm-corpus-floating-ca.drv";

    fn legacy() -> RealisationKey {
        RealisationKey::Legacy {
            drv_hash: Sha256::from_lower_hex(HEX).unwrap(),
            output: "out".into(),
        }
    }

    #[test]
    fn legacy_fingerprint_is_nix_s() {
        // As Nix 2.8 writes it (core/nix/testdata/corpus), keys in Nix's order.
        let text = format!(
            r#"{{"dependentRealisations":{{}},"id":"sha256:{HEX}!out","outPath":"{OUT}","signatures":[]}}"#
        );
        let realisation = Realisation::parse(text.as_bytes(), &legacy()).unwrap();
        assert_eq!(
            realisation.fingerprint(),
            format!(
                r#"{{"dependentRealisations":{{}},"id":"sha256:{HEX}!out","outPath":"{OUT}"}}"#
            )
        );
        assert!(!realisation.signed_by_any(&[]));
    }

    #[test]
    fn build_trace_fingerprint_has_key_and_value() {
        let key = RealisationKey::BuildTrace {
            drv: DRV.into(),
            output: "out".into(),
        };
        let text = format!(r#"{{"outPath":"{OUT}","signatures":[]}}"#);
        let realisation = Realisation::parse(text.as_bytes(), &key).unwrap();
        assert_eq!(
            realisation.fingerprint(),
            format!(
                r#"{{"key":{{"drvPath":"{DRV}","outputName":"out"}},"value":{{"outPath":"{OUT}"}}}}"#
            )
        );
    }

    #[test]
    fn signatures_in_both_spellings_verify_and_bind_the_fields() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let keys = [secret.public_key()];
        let unsigned = format!(
            r#"{{"dependentRealisations":{{}},"id":"sha256:{HEX}!out","outPath":"{OUT}"}}"#
        );
        let sig = secret.sign(
            Realisation::parse(unsigned.as_bytes(), &legacy())
                .unwrap()
                .fingerprint()
                .as_bytes(),
        );
        let text = sig.to_string();
        let (name, b64) = text.split_once(':').unwrap();
        for signatures in [
            format!(r#"["{sig}"]"#),
            format!(r#"[{{"keyName":"{name}","sig":"{b64}"}}]"#),
        ] {
            let text = format!(
                r#"{{"dependentRealisations":{{}},"id":"sha256:{HEX}!out","outPath":"{OUT}","signatures":{signatures}}}"#
            );
            assert!(Realisation::parse(text.as_bytes(), &legacy())
                .unwrap()
                .signed_by_any(&keys));
            // The same signature does not cover another output path.
            let other = text.replace(OUT, "5bns4aqv0b555a4vmqnxaj6gq2zxvy1s-corpus-text");
            assert!(!Realisation::parse(other.as_bytes(), &legacy())
                .unwrap()
                .signed_by_any(&keys));
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let parse = |text: &str| Realisation::parse(text.as_bytes(), &legacy());
        assert!(matches!(parse("{"), Err(RealisationError::Json(_))));
        assert_eq!(
            parse(&format!(r#"{{"id":"sha256:{HEX}!out"}}"#)),
            Err(RealisationError::Field("outPath"))
        );
        assert!(matches!(
            parse(&format!(r#"{{"id":"sha256:{HEX}!dev","outPath":"{OUT}"}}"#)),
            Err(RealisationError::Id { .. })
        ));
        assert_eq!(
            parse(&format!(
                r#"{{"id":"sha256:{HEX}!out","outPath":"{OUT}","signatures":["x"]}}"#
            )),
            Err(RealisationError::Field("signatures"))
        );
        assert_eq!(
            parse(&format!(
                r#"{{"id":"sha256:{HEX}!out","outPath":"{OUT}","dependentRealisations":{{"x":"y"}}}}"#
            )),
            Err(RealisationError::Field("dependentRealisations"))
        );
    }
}
