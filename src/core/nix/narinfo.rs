//! The `.narinfo` file: `Key: value` lines describing one store path.
//!
//! Parsed the way NixOS/nix `src/libstore/nar-info.cc` does, but stricter where Nix
//! would only fail later: every line ends in `\n` (Nix requires it too), a known key
//! may appear once (`Sig` may repeat), unknown keys are ignored (Nix ignores them).
//! Quirk tolerated: Nix itself writes `References: ` with a trailing space when the
//! list is empty.
//!
//! The fingerprint a `Sig:` signs is rebuilt from parsed values, so NarHash may
//! arrive in any spelling ([`Sha256`]): `1;<store path>;<sha256:nix32>;<NarSize>;<refs>`
//! with references as full store paths, sorted, comma-separated
//! (`ValidPathInfo::fingerprint` in libstore/path-info.cc).

use thiserror::Error;

use super::content_address::ContentAddress;
use super::hash::Sha256;
use super::keys::{any_verifies, PublicKey, Signature, MAX_SIGNATURES};
use super::nar_file::Compression;
use super::store_path::StorePathBaseName;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo is not UTF-8")]
    Utf8,
    #[error("narinfo line {0} is not 'Key: value' ending in a newline")]
    Line(usize),
    #[error("narinfo has {0} more than once")]
    Duplicate(&'static str),
    #[error("narinfo has no {0}")]
    Missing(&'static str),
    #[error("narinfo has more than {limit} {field}")]
    TooMany { field: &'static str, limit: usize },
    #[error("narinfo {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl ToString) -> NarInfoError {
    NarInfoError::Invalid {
        field,
        reason: reason.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePathBaseName,
    pub url: String,
    /// `bzip2` when absent (Nix's historical default).
    pub compression: Compression,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePathBaseName>,
    pub deriver: Option<StorePathBaseName>,
    /// The platform the path was built for; Nix reads it and writes it back, nothing
    /// checks it.
    pub system: Option<String>,
    pub signatures: Vec<Signature>,
    /// Content address (`fixed:…`, `text:…`): a path whose store path it recomputes
    /// needs no signature (`crate::core::publish`).
    pub ca: Option<ContentAddress>,
}

/// Fields the parser knows; each may appear once except `Sig`.
const SINGLE_FIELDS: [&str; 11] = [
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "CA",
];

/// The known fields of a narinfo, as text, each at most once; and the signatures.
struct Fields<'a> {
    values: [Option<&'a str>; SINGLE_FIELDS.len()],
    signatures: Vec<&'a str>,
}

impl<'a> Fields<'a> {
    /// Splits narinfo text into fields the way Nix reads it, refusing every line Nix
    /// could read differently from this parser.
    ///
    /// Nix (`NarInfo::NarInfo` in libstore/nar-info.cc) takes the name up to the first
    /// `:` (even across lines), skips exactly one character, and takes the value up to
    /// the next `\n` searched from two characters past the colon; a later duplicate
    /// wins. So `URL:xhttp://elsewhere` is a URL line to Nix, `Key:\n` swallows the
    /// next line, and a line with no colon merges into the next one's name. Here every
    /// line must be `Name: value\n` with no `:` in the name and no control character
    /// anywhere; a known name may appear once (`Sig` may repeat). On such text Nix reads
    /// exactly the fields read here.
    fn split(text: &'a str) -> Result<Fields<'a>, NarInfoError> {
        let mut fields = Fields {
            values: [None; SINGLE_FIELDS.len()],
            signatures: Vec::new(),
        };
        for (index, line) in text.split_inclusive('\n').enumerate() {
            let line_no = index + 1;
            let line = line.strip_suffix('\n').ok_or(NarInfoError::Line(line_no))?;
            let (name, value) = line.split_once(':').ok_or(NarInfoError::Line(line_no))?;
            let value = value.strip_prefix(' ').ok_or(NarInfoError::Line(line_no))?;
            if name.is_empty() || line.chars().any(char::is_control) {
                return Err(NarInfoError::Line(line_no));
            }
            if name == "Sig" {
                if fields.signatures.len() == MAX_SIGNATURES {
                    return Err(NarInfoError::TooMany {
                        field: "Sig",
                        limit: MAX_SIGNATURES,
                    });
                }
                fields.signatures.push(value);
            } else if let Some(i) = SINGLE_FIELDS.iter().position(|f| *f == name) {
                if fields.values[i].replace(value).is_some() {
                    return Err(NarInfoError::Duplicate(SINGLE_FIELDS[i]));
                }
            }
        }
        Ok(fields)
    }

    fn get(&self, name: &'static str) -> Option<&'a str> {
        let i = SINGLE_FIELDS.iter().position(|f| *f == name)?;
        self.values[i]
    }

    fn require(&self, name: &'static str) -> Result<&'a str, NarInfoError> {
        self.get(name).ok_or(NarInfoError::Missing(name))
    }
}

impl NarInfo {
    /// Parses narinfo bytes; `store_dir` is the cache's (e.g. `/nix/store`).
    pub fn parse(bytes: &[u8], store_dir: &str) -> Result<NarInfo, NarInfoError> {
        let text = core::str::from_utf8(bytes).map_err(|_| NarInfoError::Utf8)?;
        let fields = Fields::split(text)?;
        let url = fields.require("URL")?;
        if url.is_empty() {
            return Err(invalid("URL", "is empty"));
        }
        let nar_size: u64 = parse_number("NarSize", fields.require("NarSize")?)?;
        if nar_size == 0 {
            return Err(invalid("NarSize", "is zero"));
        }
        Ok(NarInfo {
            store_path: parse_store_path(fields.require("StorePath")?, store_dir)?,
            url: url.to_owned(),
            compression: parse_compression(fields.get("Compression"))?,
            file_hash: fields
                .get("FileHash")
                .map(|h| h.parse().map_err(|e| invalid("FileHash", e)))
                .transpose()?,
            file_size: fields
                .get("FileSize")
                .map(|s| parse_number("FileSize", s))
                .transpose()?,
            nar_hash: fields
                .require("NarHash")?
                .parse()
                .map_err(|e| invalid("NarHash", e))?,
            nar_size,
            references: parse_references(fields.require("References")?)?,
            deriver: parse_deriver(fields.get("Deriver"))?,
            system: fields
                .get("System")
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            signatures: fields
                .signatures
                .iter()
                .map(|sig| sig.parse().map_err(|e| invalid("Sig", e)))
                .collect::<Result<_, _>>()?,
            // Nix fails to read a narinfo whose CA it cannot parse; empty means none.
            ca: fields
                .get("CA")
                .filter(|ca| !ca.is_empty())
                .map(|ca| ca.parse().map_err(|e| invalid("CA", e)))
                .transpose()?,
        })
    }

    /// What a `Sig:` signs.
    pub fn fingerprint(&self, store_dir: &str) -> String {
        fingerprint(
            store_dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// The narinfo text, fields in the order Nix writes them (`NarInfo::to_string` in
    /// libstore/nar-info.cc), so `parse(to_text(x)) == x`.
    pub fn to_text(&self, store_dir: &str) -> String {
        use core::fmt::Write as _;
        let mut out = String::with_capacity(512);
        let refs: Vec<String> = self.references.iter().map(|r| r.to_string()).collect();
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "StorePath: {store_dir}/{}\nURL: {}\nCompression: {}\n",
            self.store_path, self.url, self.compression
        );
        if let Some(hash) = &self.file_hash {
            let _ = writeln!(out, "FileHash: {hash}");
        }
        if let Some(size) = self.file_size {
            let _ = writeln!(out, "FileSize: {size}");
        }
        let _ = write!(
            out,
            "NarHash: {}\nNarSize: {}\nReferences: {}\n",
            self.nar_hash,
            self.nar_size,
            refs.join(" ")
        );
        if let Some(deriver) = &self.deriver {
            let _ = writeln!(out, "Deriver: {deriver}");
        }
        if let Some(system) = &self.system {
            let _ = writeln!(out, "System: {system}");
        }
        for sig in &self.signatures {
            let _ = writeln!(out, "Sig: {sig}");
        }
        if let Some(ca) = &self.ca {
            let _ = writeln!(out, "CA: {ca}");
        }
        out
    }

    /// True when some `Sig:` verifies under one of `keys` (at most one verification per
    /// key: [`any_verifies`]).
    pub fn signed_by_any(&self, keys: &[PublicKey], store_dir: &str) -> bool {
        let fingerprint = self.fingerprint(store_dir);
        any_verifies(keys, &self.signatures, fingerprint.as_bytes())
    }
}

/// What a signature of a store path signs (`ValidPathInfo::fingerprint` in Nix's
/// libstore/path-info.cc): `1;<path>;<NarHash>;<NarSize>;<sorted full references>`.
pub fn fingerprint(
    store_dir: &str,
    store_path: &StorePathBaseName,
    nar_hash: &Sha256,
    nar_size: u64,
    references: &[StorePathBaseName],
) -> String {
    let mut refs: Vec<String> = references
        .iter()
        .map(|r| format!("{store_dir}/{r}"))
        .collect();
    refs.sort();
    format!(
        "1;{store_dir}/{store_path};{nar_hash};{nar_size};{}",
        refs.join(",")
    )
}

fn parse_store_path(value: &str, store_dir: &str) -> Result<StorePathBaseName, NarInfoError> {
    let base = value
        .strip_prefix(store_dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| invalid("StorePath", format!("is not in {store_dir}")))?;
    base.parse().map_err(|e| invalid("StorePath", e))
}

/// `bzip2` when absent: Nix's historical default.
fn parse_compression(value: Option<&str>) -> Result<Compression, NarInfoError> {
    match value {
        None => Ok(Compression::Bzip2),
        Some(name) => Compression::from_narinfo_name(name)
            .ok_or_else(|| invalid("Compression", format!("{name:?} is not supported"))),
    }
}

/// Most references a narinfo may list. Large closures' roots have a few thousand; the
/// 1 MiB narinfo limit would allow about 20,000.
pub const MAX_REFERENCES: usize = 10_000;

/// Space-separated base names; Nix skips empty tokens (it writes `References: ` with a
/// trailing space for none).
fn parse_references(value: &str) -> Result<Vec<StorePathBaseName>, NarInfoError> {
    let count = value.split(' ').filter(|r| !r.is_empty()).count();
    if count > MAX_REFERENCES {
        return Err(NarInfoError::TooMany {
            field: "References",
            limit: MAX_REFERENCES,
        });
    }
    value
        .split(' ')
        .filter(|r| !r.is_empty())
        .enumerate()
        .map(|(i, r)| {
            r.parse()
                .map_err(|e| invalid("References", format!("entry {i}: {e}")))
        })
        .collect()
}

/// Nix reads `unknown-deriver` as none (older Nix wrote it) and fails on anything
/// else that is not a store path base name, the empty string included.
fn parse_deriver(value: Option<&str>) -> Result<Option<StorePathBaseName>, NarInfoError> {
    match value {
        None | Some("unknown-deriver") => Ok(None),
        Some(deriver) => deriver.parse().map(Some).map_err(|e| invalid("Deriver", e)),
    }
}

fn parse_number(field: &'static str, value: &str) -> Result<u64, NarInfoError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(field, "is not a whole number"));
    }
    value.parse().map_err(|_| invalid(field, "is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::nix::keys::SecretKey;

    const TOP: &[u8] = include_bytes!("testdata/top.narinfo");
    const LEAF: &[u8] = include_bytes!("testdata/leaf.narinfo");
    const STORE: &str = "/nix/store";
    const SECRET: &str = "test-1:tXPUeHfVCPFDNdxXYtkOyQAJi0Cx6Irm0YuTzpGNciuVkrxO90WjrIQ6nUPvJCR4vDGuyEM8XWLAMnqk1fXEcQ==";

    fn key() -> PublicKey {
        SECRET.parse::<SecretKey>().unwrap().public_key()
    }

    #[test]
    fn renders_byte_for_byte_as_nix_does() {
        for fixture in [TOP, LEAF] {
            let info = NarInfo::parse(fixture, STORE).unwrap();
            assert_eq!(info.to_text(STORE).as_bytes(), fixture);
        }
    }

    #[test]
    fn parses_nix_written_narinfos() {
        let top = NarInfo::parse(TOP, STORE).unwrap();
        assert_eq!(
            top.store_path.to_string(),
            "9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-nixflare-e2e-top"
        );
        assert_eq!(top.compression, Compression::Xz);
        assert_eq!(top.file_size, Some(14724));
        assert_eq!(top.nar_size, 1670328);
        assert_eq!(top.references.len(), 2);
        assert_eq!(top.signatures.len(), 1);
        let leaf = NarInfo::parse(LEAF, STORE).unwrap();
        assert!(
            leaf.references.is_empty(),
            "empty References with trailing space"
        );
    }

    #[test]
    fn nix_signatures_verify_over_rebuilt_fingerprint() {
        for bytes in [TOP, LEAF] {
            let info = NarInfo::parse(bytes, STORE).unwrap();
            assert!(info.signed_by_any(&[key()], STORE));
        }
        let top = NarInfo::parse(TOP, STORE).unwrap();
        assert_eq!(
            top.fingerprint(STORE),
            "1;/nix/store/9s6ymh891cip8bvxjfkb8qpx4dz0hdj7-nixflare-e2e-top;\
             sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc;1670328;\
             /nix/store/anfizv71z26rnrvkpdwsc1f5wwyd9kw6-nixflare-e2e-middle,\
             /nix/store/pv22kc2dhm5j5lyk2z2dkpj4xnhpx9ys-nixflare-e2e-leaf"
        );
    }

    #[test]
    fn a_signature_made_here_verifies_like_nix_s() {
        let secret: SecretKey = SECRET.parse().unwrap();
        let info = NarInfo::parse(TOP, STORE).unwrap();
        let ours = secret.sign(info.fingerprint(STORE).as_bytes());
        // ed25519 is deterministic: the same key over the same fingerprint gives Nix's bytes.
        assert_eq!(ours, info.signatures[0]);
    }

    #[test]
    fn any_hash_spelling_signs_the_same_fingerprint() {
        let text = String::from_utf8(TOP.to_vec()).unwrap().replace(
            "NarHash: sha256:0n9mkxv19xc62j57rr25lmy09nakpq6lncrrd964ga55620lpkhc",
            "NarHash: sha256-DM5LgTClqEdMajkzSw2+U9kEfKVF5HyKFIb1FHafNVk=",
        );
        let info = NarInfo::parse(text.as_bytes(), STORE).unwrap();
        assert!(info.signed_by_any(&[key()], STORE));
    }

    #[test]
    fn tampering_breaks_the_signature() {
        let text = String::from_utf8(TOP.to_vec()).unwrap();
        for (from, to) in [
            ("NarSize: 1670328", "NarSize: 1670329"),
            (
                "References: anfizv71z26rnrvkpdwsc1f5wwyd9kw6-nixflare-e2e-middle ",
                "References: ",
            ),
            ("-nixflare-e2e-top\n", "-nixflare-e2e-evil\n"),
        ] {
            let info = NarInfo::parse(text.replacen(from, to, 1).as_bytes(), STORE).unwrap();
            assert!(!info.signed_by_any(&[key()], STORE), "{from} -> {to}");
        }
        let other = SecretKey::from_seed("test-1", [9; 32])
            .unwrap()
            .public_key();
        let info = NarInfo::parse(TOP, STORE).unwrap();
        assert!(!info.signed_by_any(&[other], STORE), "same name, other key");
    }

    #[test]
    fn bounds_what_one_narinfo_may_make_the_worker_do() {
        let text = String::from_utf8(TOP.to_vec()).unwrap();
        let sig = text.lines().find(|l| l.starts_with("Sig: ")).unwrap();
        let many_sigs = format!("{text}{}", format!("{sig}\n").repeat(MAX_SIGNATURES));
        assert_eq!(
            NarInfo::parse(many_sigs.as_bytes(), STORE),
            Err(NarInfoError::TooMany {
                field: "Sig",
                limit: MAX_SIGNATURES
            })
        );
        let reference = "anfizv71z26rnrvkpdwsc1f5wwyd9kw6-nixflare-e2e-middle ";
        let many_refs = text.replace(
            "References: ",
            &format!("References: {}", reference.repeat(MAX_REFERENCES)),
        );
        assert!(matches!(
            NarInfo::parse(many_refs.as_bytes(), STORE),
            Err(NarInfoError::TooMany {
                field: "References",
                ..
            })
        ));
    }

    #[test]
    fn refuses_every_line_nix_would_read_differently() {
        let text = String::from_utf8(TOP.to_vec()).unwrap();
        let url = "URL: nar/1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w.nar.xz\n";
        let cases = [
            // Nix: a URL line (name up to the first ':', one character skipped).
            format!("{text}URL:xhttp://elsewhere/evil.nar#: y\n"),
            text.replace(
                url,
                "URL:xnar/1ijb57b4fq0j7vvxgbxrl0bwranndf7nzc9xp03iq1d83alflb3w.nar.xz\n",
            ),
            // Nix: `URL:` takes the next line as its value.
            text.replace(url, "URL:\nnar/x.nar.xz\n"),
            // Nix: a line without ':' joins the next line's name.
            text.replace(url, &format!("junk\n{url}")),
            // Nix keeps the '\r' in the value.
            text.replace(url, &url.replace('\n', "\r\n")),
            text.replace("NarSize: 1670328", "NarSize:\t1670328"),
            format!("{text}: no name\n"),
            // Nix: a later duplicate wins (and a second References is corrupt).
            format!("{text}{url}"),
            format!("{text}References: \n"),
            // Nix fails on an empty Deriver.
            text.replace(
                "Deriver: h15vw3d8vjq21wraq1p08xcw6jby7s0c-nixflare-e2e-top.drv",
                "Deriver: ",
            ),
        ];
        for case in cases {
            assert!(NarInfo::parse(case.as_bytes(), STORE).is_err(), "{case:?}");
        }
        // What Nix accepts and reads the same way.
        let unknown = text.replace(
            "Deriver: h15vw3d8vjq21wraq1p08xcw6jby7s0c-nixflare-e2e-top.drv",
            "Deriver: unknown-deriver",
        );
        assert_eq!(
            NarInfo::parse(unknown.as_bytes(), STORE).unwrap().deriver,
            None
        );
        let with_colons = format!("{text}Future: a: b:c\n");
        assert!(NarInfo::parse(with_colons.as_bytes(), STORE).is_ok());
    }

    #[test]
    fn rejects_naming_the_field() {
        let text = String::from_utf8(TOP.to_vec()).unwrap();
        let err = |t: String| NarInfo::parse(t.as_bytes(), STORE).unwrap_err().to_string();
        assert_eq!(
            err(text.trim_end().to_owned()),
            "narinfo line 10 is not 'Key: value' ending in a newline"
        );
        assert_eq!(
            err(format!("{text}NarSize: 1\n")),
            "narinfo has NarSize more than once"
        );
        assert_eq!(
            err(text.replace("NarSize: 1670328\n", "")),
            "narinfo has no NarSize"
        );
        assert_eq!(
            err(text.replace("NarSize: 1670328", "NarSize: 0")),
            "narinfo NarSize: is zero"
        );
        assert_eq!(
            err(text.replace("NarSize: 1670328", "NarSize: -1")),
            "narinfo NarSize: is not a whole number"
        );
        assert!(err(text.replace("/nix/store/9s6", "/gnu/store/9s6"))
            .starts_with("narinfo StorePath: is not in /nix/store"));
        assert!(err(text.replace("Sig: test-1:", "Sig: test-1")).starts_with("narinfo Sig:"));
        assert!(err(text.replace("Sig: test-1:eD6k", "Sig: test-1:!!")).starts_with("narinfo Sig:"));
        assert!(
            err(text.replace("References: anfiz", "References: ../x anfiz"))
                .starts_with("narinfo References: entry 0")
        );
        assert!(
            err(text.replace("NarHash: sha256:", "NarHash: md5:")).starts_with("narinfo NarHash:")
        );
        assert_eq!(
            err(format!("{text}no colon here\n")),
            "narinfo line 11 is not 'Key: value' ending in a newline"
        );
        assert_eq!(NarInfo::parse(b"\xff\n", STORE), Err(NarInfoError::Utf8));
        // Unknown keys are fine.
        assert!(NarInfo::parse(format!("{text}Future: 1\n").as_bytes(), STORE).is_ok());
    }
}
