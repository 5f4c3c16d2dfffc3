//! Multipart NAR uploads: the rules shared by the worker and the `nixflare` client.
//!
//! Cloudflare refuses request bodies above the plan's limit (100 MB on Free/Pro), and a
//! stock `nix copy` sends each NAR in one PUT. NARs above the limit go up in parts, one
//! request each, through the worker (S3-style, under `/_nixflare/uploads/nar/<name>`):
//!
//! | request | meaning |
//! |---|---|
//! | `POST …?uploads` | start an upload; answers `{"uploadId": …}` |
//! | `PUT …?partNumber=N&uploadId=ID` | part N (from 1), streamed into R2 |
//! | `POST …?uploadId=ID` | complete: body is one `N ETAG` line per part |
//! | `DELETE …?uploadId=ID` | abort |
//!
//! R2's rules (docs/platform.md §4): part numbers 1..=10000, every part but the last at
//! least 5 MiB and all of one size. The parts are assembled under a staging key that is
//! never served. Completing copies the staging object to the NAR's content address with
//! R2 checking its SHA-256, so nothing appears under `nar/` until its bytes are proven.
//! A marker object per open upload lets the worker's cron abort uploads abandoned by
//! their client.

use core::fmt;

use thiserror::Error;

use crate::core::http::Method;
use crate::core::nix::nar_file::NarFile;
use crate::core::route::Route;

/// R2's smallest part (all but the last).
pub const MIN_PART_BYTES: u64 = 5 * 1024 * 1024;
/// R2's most parts per upload.
pub const MAX_PARTS: u16 = 10_000;
/// R2's largest single PUT (and part): the staging object is copied to its final key
/// in one PUT, so this bounds a multipart NAR too.
pub const MAX_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Room left in each request for headers when a part is sized from the request limit.
const REQUEST_OVERHEAD: u64 = 64 * 1024;

/// Longest part ETag accepted (R2's are ~170 characters locally, 32 hex in production).
const MAX_ETAG_BYTES: usize = 1024;
/// Largest part-list body: 10,000 lines of a number and an ETag.
pub const MAX_PART_LIST_BYTES: u64 = MAX_PARTS as u64 * (MAX_ETAG_BYTES as u64 + 7);

/// Where parts are assembled (see [`staging_key`]).
pub const STAGING_PREFIX: &str = crate::core::route::UPLOADS_PREFIX;
/// Most multipart uploads open at once, and the default of `MAX_OPEN_UPLOADS`: each
/// holds R2 storage until completed, aborted or cleaned up, and a token holder could
/// otherwise open them without end. Counted from the pending markers with one list call
/// (R2 lists at most 1000 keys a page).
pub const MAX_OPEN_UPLOADS: u32 = 1000;

/// One empty object per open upload, for the cleanup cron.
pub const PENDING_PREFIX: &str = "_nixflare/pending/";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MultipartError {
    #[error("uploadId is missing or malformed")]
    UploadId,
    #[error("partNumber must be a whole number from 1 to {MAX_PARTS}")]
    PartNumber,
    #[error("part list line {0} is not 'PARTNUMBER ETAG'")]
    Line(usize),
    #[error("part list must name parts 1..=N once each, in order (line {0})")]
    Order(usize),
    #[error("part list is empty")]
    Empty,
    #[error("a NAR of {size} bytes is over R2's {MAX_OBJECT_BYTES}-byte object limit")]
    TooLarge { size: u64 },
    #[error("a request limit of {limit} bytes is below R2's {MIN_PART_BYTES}-byte minimum part")]
    LimitTooSmall { limit: u64 },
    #[error("expected POST ?uploads, PUT ?partNumber=N&uploadId=ID, POST ?uploadId=ID or DELETE ?uploadId=ID")]
    Shape,
}

/// What a request under `/_nixflare/uploads/nar/<name>` asks for (S3's query shapes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Create,
    UploadPart { id: UploadId, number: u16 },
    Complete { id: UploadId },
    Abort { id: UploadId },
}

impl Action {
    /// Reads the action from the method and the decoded query parameters
    /// ([`crate::core::http::query_pairs`]). Unknown parameters are ignored, as S3 does.
    pub fn parse(method: Method, query: &[(String, String)]) -> Result<Action, MultipartError> {
        let mut upload_id = None;
        let mut part_number = None;
        let mut create = false;
        for (name, value) in query {
            match name.as_str() {
                "uploadId" => upload_id = Some(UploadId::parse(value)?),
                "partNumber" => part_number = Some(parse_part_number(value)?),
                "uploads" => create = true,
                _ => {}
            }
        }
        Ok(match (method, create, upload_id, part_number) {
            (Method::Post, true, None, None) => Action::Create,
            (Method::Put, false, Some(id), Some(number)) => Action::UploadPart { id, number },
            (Method::Post, false, Some(id), None) => Action::Complete { id },
            (Method::Delete, false, Some(id), None) => Action::Abort { id },
            _ => return Err(MultipartError::Shape),
        })
    }

    pub fn method(&self) -> Method {
        match self {
            Action::Create | Action::Complete { .. } => Method::Post,
            Action::UploadPart { .. } => Method::Put,
            Action::Abort { .. } => Method::Delete,
        }
    }

    /// The query parameters, not yet percent-encoded (the client encodes them).
    pub fn query(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::Create => vec![("uploads", String::new())],
            Action::UploadPart { id, number } => vec![
                ("partNumber", number.to_string()),
                ("uploadId", id.to_string()),
            ],
            Action::Complete { id } | Action::Abort { id } => vec![("uploadId", id.to_string())],
        }
    }
}

/// A multipart upload, as the client names it: `<nonce>.<R2's upload id>`. The nonce (32
/// lowercase hex digits, from the runtime's random UUIDs) gives every upload a staging
/// object of its own, so two uploads of the same NAR never touch each other's parts.
/// Both halves are printable ASCII, so the id travels in a query string and a key.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadId {
    nonce: [u8; 16],
    r2: String,
    text: String,
}

impl UploadId {
    /// The id of an upload R2 opened as `r2` on the staging key of `nonce`.
    pub fn new(nonce: [u8; 16], r2: &str) -> Result<Self, MultipartError> {
        let ok = (1..=1024).contains(&r2.len()) && r2.bytes().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(MultipartError::UploadId);
        }
        let text = format!("{}.{r2}", crate::core::lower_hex::encode(&nonce));
        Ok(Self {
            nonce,
            r2: r2.to_owned(),
            text,
        })
    }

    pub fn parse(text: &str) -> Result<Self, MultipartError> {
        let (nonce, r2) = text.split_once('.').ok_or(MultipartError::UploadId)?;
        let nonce = crate::core::lower_hex::decode(nonce).ok_or(MultipartError::UploadId)?;
        Self::new(nonce, r2)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The id R2 gave the upload.
    pub fn r2(&self) -> &str {
        &self.r2
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl core::str::FromStr for UploadId {
    type Err = MultipartError;
    fn from_str(s: &str) -> Result<Self, MultipartError> {
        Self::parse(s)
    }
}

crate::core::serde_via_text!(UploadId);

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.text)
    }
}

/// A part number, 1..=[`MAX_PARTS`].
fn parse_part_number(text: &str) -> Result<u16, MultipartError> {
    match text.parse::<u16>() {
        Ok(n) if text.bytes().all(|b| b.is_ascii_digit()) && (1..=MAX_PARTS).contains(&n) => Ok(n),
        _ => Err(MultipartError::PartNumber),
    }
}

/// One uploaded part as R2 acknowledged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReceipt {
    pub number: u16,
    pub etag: String,
}

/// Parses the body of a complete request: `N ETAG` per line, parts 1..=N in order.
/// Requiring the full, ordered list lets R2's own check (sizes) be the only one left.
pub fn parse_part_list(text: &str) -> Result<Vec<PartReceipt>, MultipartError> {
    let mut parts = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.is_empty() {
            continue;
        }
        let (number, etag) = line.split_once(' ').ok_or(MultipartError::Line(line_no))?;
        let number = parse_part_number(number).map_err(|_| MultipartError::Line(line_no))?;
        let etag_ok = (1..=MAX_ETAG_BYTES).contains(&etag.len())
            && etag.bytes().all(|b| b.is_ascii_graphic());
        if !etag_ok {
            return Err(MultipartError::Line(line_no));
        }
        if usize::from(number) != parts.len() + 1 {
            return Err(MultipartError::Order(line_no));
        }
        parts.push(PartReceipt {
            number,
            etag: etag.to_owned(),
        });
    }
    if parts.is_empty() {
        return Err(MultipartError::Empty);
    }
    Ok(parts)
}

/// Renders a part list as [`parse_part_list`] reads it.
pub fn render_part_list(parts: &[PartReceipt]) -> String {
    parts
        .iter()
        .map(|p| format!("{} {}\n", p.number, p.etag))
        .collect()
}

/// How a file of `size` bytes is cut into parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub part_size: u64,
    pub count: u16,
}

impl PartPlan {
    /// The fewest equal parts of at most `max_request_bytes` (less some room for
    /// headers) each, and never below R2's minimum.
    pub fn new(size: u64, max_request_bytes: u64) -> Result<Self, MultipartError> {
        if size > MAX_OBJECT_BYTES {
            return Err(MultipartError::TooLarge { size });
        }
        let ceiling = max_request_bytes.saturating_sub(REQUEST_OVERHEAD);
        if ceiling < MIN_PART_BYTES {
            return Err(MultipartError::LimitTooSmall {
                limit: max_request_bytes,
            });
        }
        // Round to whole MiB: tidy numbers in logs, still under the ceiling.
        let part_size = (ceiling / (1 << 20)).max(5) << 20;
        let count = size.div_ceil(part_size).max(1);
        let count = u16::try_from(count)
            .ok()
            .filter(|&c| c <= MAX_PARTS)
            .ok_or(MultipartError::TooLarge { size })?;
        Ok(Self { part_size, count })
    }

    /// Byte offset and length of part `number` (from 1) of a `size`-byte file.
    pub fn part_range(&self, number: u16, size: u64) -> (u64, u64) {
        let start = u64::from(number - 1) * self.part_size;
        (start, self.part_size.min(size.saturating_sub(start)))
    }
}

/// The staging key where the parts of upload `id` of `nar` are assembled:
/// `_nixflare/uploads/nar/<file>/<nonce>`, one per upload, never a route (so never served).
pub fn staging_key(nar: &NarFile, id: &UploadId) -> String {
    staging_key_of_nonce(nar, &id.nonce)
}

/// The staging key of an upload about to be opened (R2 gives its id only then).
pub fn staging_key_of_nonce(nar: &NarFile, nonce: &[u8; 16]) -> String {
    format!(
        "{}/{}",
        Route::Upload(*nar),
        crate::core::lower_hex::encode(nonce)
    )
}

/// The marker of an open upload: `_nixflare/pending/<nar name>/<hex of upload id>`.
/// Hex keeps any id byte out of the key's structure.
pub fn pending_key(nar: &NarFile, id: &UploadId) -> String {
    format!("{PENDING_PREFIX}{nar}/{}", hex::encode(id.as_str()))
}

/// The NAR and upload id a marker stands for.
pub fn parse_pending_key(key: &str) -> Option<(NarFile, UploadId)> {
    let rest = key.strip_prefix(PENDING_PREFIX)?;
    let (name, id_hex) = rest.split_once('/')?;
    let id = String::from_utf8(hex::decode(id_hex).ok()?).ok()?;
    Some((NarFile::parse(name)?, UploadId::parse(&id).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE_HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const MIB: u64 = 1 << 20;

    fn nar() -> NarFile {
        NarFile::parse(&format!("{FILE_HASH}.nar.zst")).unwrap()
    }

    #[test]
    fn part_numbers() {
        assert_eq!(parse_part_number("1"), Ok(1));
        assert_eq!(parse_part_number("10000"), Ok(10000));
        for bad in ["0", "10001", "", "+1", "-1", "1.0", "65536", " 1"] {
            assert_eq!(
                parse_part_number(bad),
                Err(MultipartError::PartNumber),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn part_lists_round_trip_and_must_be_complete_and_ordered() {
        let parts = vec![
            PartReceipt {
                number: 1,
                etag: "abc".into(),
            },
            PartReceipt {
                number: 2,
                etag: "\"def\"".into(),
            },
        ];
        assert_eq!(parse_part_list(&render_part_list(&parts)), Ok(parts));
        assert_eq!(parse_part_list(""), Err(MultipartError::Empty));
        assert_eq!(parse_part_list("2 a\n"), Err(MultipartError::Order(1)));
        assert_eq!(parse_part_list("1 a\n1 b\n"), Err(MultipartError::Order(2)));
        assert_eq!(parse_part_list("1 a\n3 b\n"), Err(MultipartError::Order(2)));
        assert_eq!(parse_part_list("1\n"), Err(MultipartError::Line(1)));
        assert_eq!(parse_part_list("1 a b\n"), Err(MultipartError::Line(1)));
        assert_eq!(parse_part_list("0 a\n"), Err(MultipartError::Line(1)));
    }

    #[test]
    fn plans_fit_the_request_limit() {
        let plan = PartPlan::new(40 * MIB, 16 * MIB).unwrap();
        assert_eq!(
            plan,
            PartPlan {
                part_size: 15 * MIB,
                count: 3
            }
        );
        assert_eq!(plan.part_range(1, 40 * MIB), (0, 15 * MIB));
        assert_eq!(plan.part_range(3, 40 * MIB), (30 * MIB, 10 * MIB));
        // Cloudflare's 100 MB (decimal) limit.
        let plan = PartPlan::new(1 << 30, 100_000_000).unwrap();
        assert_eq!(plan.part_size, 95 * MIB);
        assert!(plan.part_size + REQUEST_OVERHEAD <= 100_000_000);
        assert_eq!(plan.count, 11);
        // An exact multiple has no empty last part.
        assert_eq!(PartPlan::new(30 * MIB, 16 * MIB).unwrap().count, 2);
        assert_eq!(
            PartPlan::new(10 * MIB, 5 * MIB),
            Err(MultipartError::LimitTooSmall { limit: 5 * MIB })
        );
        assert!(matches!(
            PartPlan::new(MAX_OBJECT_BYTES + 1, 100_000_000),
            Err(MultipartError::TooLarge { .. })
        ));
    }

    #[test]
    fn pending_markers_and_staging_keys_name_their_upload() {
        let id = UploadId::new([1; 16], "AbC+/=x").unwrap();
        assert_eq!(id.to_string(), format!("{}.AbC+/=x", "01".repeat(16)));
        let key = pending_key(&nar(), &id);
        assert_eq!(
            key,
            format!(
                "_nixflare/pending/{FILE_HASH}.nar.zst/{}",
                hex::encode(id.as_str())
            )
        );
        let (parsed_nar, parsed) = parse_pending_key(&key).unwrap();
        assert_eq!(parsed, id);
        assert_eq!(
            staging_key(&parsed_nar, &parsed),
            format!(
                "_nixflare/uploads/nar/{FILE_HASH}.nar.zst/{}",
                "01".repeat(16)
            )
        );
        // Two uploads of the same NAR never share a staging object, and none is a route.
        let other = UploadId::new([2; 16], "AbC+/=x").unwrap();
        assert_ne!(staging_key(&nar(), &id), staging_key(&nar(), &other));
        assert_eq!(
            Route::parse(&format!("/{}", staging_key(&nar(), &id))),
            None
        );
        assert_eq!(parse_pending_key("_nixflare/pending/x/41"), None);
        assert_eq!(
            parse_pending_key(&format!("_nixflare/pending/{FILE_HASH}.nar/zz")),
            None
        );
    }

    #[test]
    fn actions_from_method_and_query() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let id = UploadId::new([2; 16], "AbC+/=").unwrap();
        let cases = [
            Action::Create,
            Action::UploadPart {
                id: id.clone(),
                number: 3,
            },
            Action::Complete { id: id.clone() },
            Action::Abort { id: id.clone() },
        ];
        for action in cases {
            let query: Vec<(String, String)> = action
                .query()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect();
            assert_eq!(Action::parse(action.method(), &query), Ok(action));
        }
        let shape = |method, list: &[(&str, &str)]| Action::parse(method, &pairs(list));
        assert_eq!(
            shape(Method::Get, &[("uploads", "")]),
            Err(MultipartError::Shape)
        );
        assert_eq!(shape(Method::Post, &[]), Err(MultipartError::Shape));
        assert_eq!(
            shape(
                Method::Post,
                &[("uploads", ""), ("uploadId", &id.to_string())]
            ),
            Err(MultipartError::Shape)
        );
        let valid = id.to_string();
        assert_eq!(
            shape(Method::Put, &[("uploadId", &valid)]),
            Err(MultipartError::Shape)
        );
        assert_eq!(
            shape(Method::Put, &[("uploadId", &valid), ("partNumber", "0")]),
            Err(MultipartError::PartNumber)
        );
        assert_eq!(
            shape(Method::Delete, &[("uploadId", "a b")]),
            Err(MultipartError::UploadId)
        );
        assert_eq!(
            shape(
                Method::Post,
                &[("uploads", ""), ("x-id", "CreateMultipartUpload")]
            ),
            Ok(Action::Create)
        );
    }

    #[test]
    fn upload_ids_are_a_nonce_and_r2_s_printable_id() {
        let nonce = "0f".repeat(16);
        assert!(UploadId::parse(&format!("{nonce}.a")).is_ok());
        assert!(UploadId::parse(&format!("{nonce}.a.b")).is_ok());
        for bad in [
            "a".to_owned(),
            String::new(),
            format!("{nonce}."),
            format!("{nonce}.a b"),
            format!("{nonce}.a\nb"),
            format!("{}.a", "0F".repeat(16)),
            format!("{}.a", &nonce[1..]),
            format!("{nonce}.{}", "a".repeat(1025)),
        ] {
            assert!(UploadId::parse(&bad).is_err(), "{bad:?}");
        }
    }
}
