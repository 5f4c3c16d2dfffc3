//! The shapes of the JSON side files Nix writes next to a narinfo, checked before one is
//! stored: a token holder may not park arbitrary JSON under a protocol name.
//!
//! - `<hash>.ls` (`write-nar-listing`): `{"version":1,"root":<entry>}`, an entry being
//!   `{"type":"regular","size":N[,"executable":true][,"narOffset":N]}`,
//!   `{"type":"symlink","target":"…"}` or `{"type":"directory","entries":{name: entry…}}`
//!   (`listNar` in libstore/nar-accessor.cc). Names are what a NAR allows: not empty,
//!   not `.` or `..`, no `/` or NUL.
//! - `debuginfo/<build-id>[.debug]` (`index-debug-info`):
//!   `{"archive":"../nar/<file>","member":"<relative path>"}`, pointing into a NAR of this
//!   cache (libstore/binary-cache-store.cc).
//!
//! Keys Nix does not write are allowed (later versions may add some); the ones it does
//! write must have its types.

use thiserror::Error;

use super::nar_file::NarFile;
use crate::core::json_read::{self, JsonError, Value};

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SideFileError {
    #[error("not JSON: {0}")]
    Json(#[from] JsonError),
    #[error("not a NAR listing: {0}")]
    Listing(&'static str),
    #[error("not a debuginfo pointer: {0}")]
    DebugInfo(&'static str),
}

/// Checks a NAR listing (`.ls`).
pub fn check_listing(bytes: &[u8]) -> Result<(), SideFileError> {
    let json = json_read::parse(bytes)?;
    if json.get("version").and_then(Value::as_u64) != Some(1) {
        return Err(SideFileError::Listing("version must be 1"));
    }
    entry(json.get("root").ok_or(SideFileError::Listing("no root"))?)
}

fn entry(value: &Value) -> Result<(), SideFileError> {
    let bad = SideFileError::Listing;
    match value.get("type").and_then(Value::as_str) {
        Some("regular") => {
            value
                .get("size")
                .and_then(Value::as_u64)
                .ok_or(bad("a file without a size"))?;
            match value.get("executable") {
                None | Some(Value::Bool(true)) => {}
                Some(_) => return Err(bad("executable must be true when present")),
            }
            match value.get("narOffset") {
                Some(offset) if offset.as_u64().is_none() => Err(bad("narOffset is not a number")),
                _ => Ok(()),
            }
        }
        Some("symlink") => match value.get("target").and_then(Value::as_str) {
            Some(target) if !target.is_empty() && !target.contains('\0') => Ok(()),
            _ => Err(bad("a symlink without a target")),
        },
        Some("directory") => {
            let entries = value
                .get("entries")
                .and_then(Value::as_object)
                .ok_or(bad("a directory without entries"))?;
            for (name, child) in entries {
                let valid =
                    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
                if !valid {
                    return Err(bad("an entry name a NAR cannot hold"));
                }
                entry(child)?;
            }
            Ok(())
        }
        _ => Err(bad("an entry of unknown type")),
    }
}

/// Checks a debuginfo pointer.
pub fn check_debuginfo(bytes: &[u8]) -> Result<(), SideFileError> {
    let bad = SideFileError::DebugInfo;
    let json = json_read::parse(bytes)?;
    let archive = json
        .get("archive")
        .and_then(Value::as_str)
        .ok_or(bad("no archive"))?;
    archive
        .strip_prefix("../")
        .and_then(NarFile::parse_url)
        .ok_or(bad("archive must be ../nar/<file> of this cache"))?;
    let member = json
        .get("member")
        .and_then(Value::as_str)
        .ok_or(bad("no member"))?;
    let relative = !member.is_empty()
        && !member.starts_with('/')
        && member
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    match relative && !member.contains('\0') {
        true => Ok(()),
        false => Err(bad("member must be a relative path inside the NAR")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAR: &str = "1q2vvbxs5c5zw5kn33f39qbjqxpwrqz1lqj6r6hl062nnasfh7s1.nar.xz";

    #[test]
    fn listings() {
        let ok = r#"{"version":1,"root":{"type":"directory","entries":{"bin":{"type":"directory","entries":{"x":{"type":"regular","size":18,"executable":true,"narOffset":400}}},"l":{"type":"symlink","target":"/nix/store/x"},"f":{"type":"regular","size":0}}}}"#;
        assert_eq!(check_listing(ok.as_bytes()), Ok(()));
        for bad in [
            r#"{"version":2,"root":{"type":"regular","size":1}}"#,
            r#"{"root":{"type":"regular","size":1}}"#,
            r#"{"version":1}"#,
            r#"{"version":1,"root":{"type":"regular"}}"#,
            r#"{"version":1,"root":{"type":"regular","size":-1}}"#,
            r#"{"version":1,"root":{"type":"regular","size":1,"executable":false}}"#,
            r#"{"version":1,"root":{"type":"regular","size":1,"narOffset":"1"}}"#,
            r#"{"version":1,"root":{"type":"symlink"}}"#,
            r#"{"version":1,"root":{"type":"fifo"}}"#,
            r#"{"version":1,"root":{"type":"directory"}}"#,
            r#"{"version":1,"root":{"type":"directory","entries":{"..":{"type":"regular","size":1}}}}"#,
            r#"{"version":1,"root":{"type":"directory","entries":{"a/b":{"type":"regular","size":1}}}}"#,
            r#"{"version":1,"root":{"type":"directory","entries":{"":{"type":"regular","size":1}}}}"#,
            r#"{"anything":"else"}"#,
            "[]",
        ] {
            assert!(check_listing(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn debuginfo_pointers() {
        let pointer = |archive: &str, member: &str| {
            format!(r#"{{"archive":"{archive}","member":"{member}"}}"#)
        };
        let member = "lib/debug/.build-id/ab/cdef.debug";
        assert_eq!(
            check_debuginfo(pointer(&format!("../nar/{NAR}"), member).as_bytes()),
            Ok(())
        );
        for (archive, member) in [
            ("https://elsewhere/x.nar", member),
            (&format!("nar/{NAR}") as &str, member),
            (&format!("../nar/{NAR}.gz"), member),
            (&format!("../nar/{NAR}"), "/etc/passwd"),
            (&format!("../nar/{NAR}"), "../x"),
            (&format!("../nar/{NAR}"), "a//b"),
            (&format!("../nar/{NAR}"), ""),
        ] {
            assert!(
                check_debuginfo(pointer(archive, member).as_bytes()).is_err(),
                "{archive} {member}"
            );
        }
        assert!(check_debuginfo(br#"{"archive":1}"#).is_err());
    }
}
