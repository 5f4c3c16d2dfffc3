//! The wire contract between the worker and the `nixflare` client: every JSON message
//! under `/_nixflare/`, defined once. The worker renders these types with [`render`]; the
//! client reads them with serde_json into the same types. Paths are [`Route`](crate::core::route::Route)s
//! (`Route::Info`, `Route::Whoami`, `Route::Upload`, `Route::Revocation`), multipart
//! queries are [`multipart::Action`](crate::core::multipart::Action)s, and the part list
//! a completion sends is [`multipart::render_part_list`](crate::core::multipart::render_part_list).
//!
//! | request | answer |
//! |---|---|
//! | `GET /_nixflare/info` | [`CacheInfo`] |
//! | `GET /_nixflare/whoami` (any valid token) | [`Whoami`] |
//! | `POST /_nixflare/uploads/nar/<file>?uploads` | [`UploadCreated`] |
//! | `PUT …?partNumber=N&uploadId=ID` | [`PartUploaded`] |
//! | `POST …?uploadId=ID` (part list) | [`UploadCompleted`] |
//! | `DELETE …?uploadId=ID` | 204, no body |
//! | `POST /_nixflare/missing` ([`PathQuery`], any valid token) | [`PathQueryAnswer`] |
//! | `GET /_nixflare/stats` (any valid token) | [`Stats`] |
//! | `POST /_nixflare/reconcile` (write) | [`ReconcileStep`] |
//! | `POST /_nixflare/roots` ([`PathQuery`], write) | [`RootsRefreshed`] |
//! | `GET /_nixflare/pins` (any valid token) | [`Pins`] |
//! | `PUT /_nixflare/pins/<name>` ([`PinRequest`], pin) | [`Pin`] |
//! | `DELETE /_nixflare/pins/<name>` (pin) | 204, no body |
//! | `GET /_nixflare/gc` (delete) | [`GcProgress`] with a plan once marked |
//! | `POST /_nixflare/gc` ([`GcRequest`], delete) | [`GcProgress`] |
//!
//! Refusals are not JSON: a status and a one-line `text/plain` reason, the same for
//! every request (Nix reads them too).
//!
//! Field names are camelCase; values that have a text form in Nix or in nixflare (keys,
//! token ids, permission lists) travel as that text.

use serde::{Deserialize, Serialize};

use crate::core::config::{CacheConfig, ReadAccess};
use crate::core::credential::Credential;
use crate::core::multipart::{UploadId, MAX_OBJECT_BYTES, MAX_PARTS, MIN_PART_BYTES};
use crate::core::nix::keys::PublicKey;
use crate::core::nix::store_path::{StorePathBaseName, StorePathHash};
use crate::core::pin_name::PinName;
use crate::core::token::{Permissions, TokenId};

/// `GET /_nixflare/info`: what a client needs to know before it uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheInfo {
    pub store_dir: String,
    /// Largest request body the cache takes; larger NARs go up in parts.
    pub max_request_bytes: u64,
    pub min_part_bytes: u64,
    pub max_parts: u16,
    pub max_object_bytes: u64,
    /// Keys whose narinfo signatures the cache accepts.
    pub public_keys: Vec<PublicKey>,
    /// Caches a published path's references may come from instead of this one
    /// (`UPSTREAM_CACHES`); `nixflare push` skips paths they serve. Absent from workers
    /// older than the index.
    #[serde(default)]
    pub upstream_caches: Vec<String>,
    /// Most narinfos one `POST /_nixflare/narinfos` takes ([`NarinfoBatch`]); 0 (a
    /// worker without the endpoint): one PUT each.
    #[serde(default)]
    pub max_batch_narinfos: u32,
    /// Largest body of such a request.
    #[serde(default)]
    pub max_batch_bytes: u64,
    /// Who may read (`READ_ACCESS`): `token` for a private cache, whose every read
    /// (Nix's through netrc) needs a token with `read`. Only a token with `read`
    /// sees this message on such a cache.
    #[serde(default)]
    pub read_access: ReadAccess,
}

impl CacheInfo {
    pub fn of(config: &CacheConfig) -> Self {
        Self {
            store_dir: config.store_dir.clone(),
            max_request_bytes: config.max_request_bytes,
            min_part_bytes: MIN_PART_BYTES,
            max_parts: MAX_PARTS,
            max_object_bytes: MAX_OBJECT_BYTES,
            public_keys: config.public_keys.clone(),
            upstream_caches: config.upstream_caches.clone(),
            max_batch_narinfos: config.max_batch_narinfos,
            max_batch_bytes: crate::core::publish::MAX_BATCH_BYTES,
            read_access: config.read_access,
        }
    }
}

/// `GET /_nixflare/whoami`: what the cache makes of the request's credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    pub subject: String,
    /// Null for a CI's ID token (nothing to revoke: its rules admit it).
    pub token_id: Option<TokenId>,
    pub permissions: Permissions,
    /// Unix seconds.
    pub expires_at: u64,
}

impl Whoami {
    pub fn of(credential: &Credential) -> Self {
        Self {
            subject: credential.subject.clone(),
            token_id: credential.token_id,
            permissions: credential.permissions,
            expires_at: credential.expires_at,
        }
    }
}

/// `POST …?uploads`: an upload was started, or the NAR is already on the cache and
/// there is nothing to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, rename_all_fields = "camelCase")]
pub enum UploadCreated {
    Started {
        upload_id: UploadId,
        /// Parts must fit in a request of this size.
        max_request_bytes: u64,
    },
    /// `{"present":true}`.
    Present { present: True },
}

/// A `true` that cannot be anything else, so `{"present":false}` never reads as
/// [`UploadCreated::Present`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct True;

impl Serialize for True {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bool(true)
    }
}

impl<'de> Deserialize<'de> for True {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match bool::deserialize(deserializer)? {
            true => Ok(True),
            false => Err(serde::de::Error::custom("expected true")),
        }
    }
}

/// `PUT …?partNumber=N&uploadId=ID`: R2's receipt for the part, to be sent back in
/// the part list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartUploaded {
    pub part_number: u16,
    pub etag: String,
}

/// `POST …?uploadId=ID`: the NAR is published under `nar/`. `created` is false when
/// another upload published the same bytes first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadCompleted {
    pub created: bool,
}

/// `POST /_nixflare/missing`: up to [`MAX_QUERY_HASHES`](crate::core::index::MAX_QUERY_HASHES)
/// store path hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathQuery {
    pub hashes: Vec<StorePathHash>,
}

/// `POST /_nixflare/narinfos`: narinfos to publish, each exactly as a PUT of
/// `<hash>.narinfo` would publish it, their own `StorePath` naming them. References
/// among them count as present: each is stored after those it references.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NarinfoBatch {
    pub narinfos: Vec<String>,
}

/// The answer to a [`NarinfoBatch`] (200 whatever became of each): one result per
/// narinfo, in its order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NarinfosPublished {
    pub results: Vec<NarinfoResult>,
}

/// What became of one narinfo of a batch: what a PUT of it would have answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NarinfoResult {
    pub outcome: NarinfoOutcome,
    /// The PUT's status: 201 stored, 200 already stored, else the refusal's.
    pub status: u16,
    /// The refusal's one-line reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NarinfoOutcome {
    Created,
    /// These very bytes were stored already.
    Unchanged,
    /// Different bytes replaced (overwrite, or signed over unsigned).
    Replaced,
    /// Nothing stored: see `status` and `reason`. 424: a narinfo it references in the
    /// batch was not published.
    Refused,
}

/// The answer to a [`PathQuery`]: the hashes the cache lacks, in the order asked, and
/// which of those the index knows a configured upstream cache to serve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathQueryAnswer {
    pub missing: Vec<StorePathHash>,
    pub in_upstream: Vec<StorePathHash>,
}

/// `GET /_nixflare/stats`: what the index says the cache holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub paths: u64,
    /// Sum of NarSize: what the paths take unpacked.
    pub nar_bytes: u64,
    /// Sum of FileSize over distinct NAR files: what the bucket holds for them.
    pub stored_bytes: u64,
    /// The SQLite database of the index.
    pub index_bytes: u64,
    /// References known to be served by an upstream cache.
    pub upstream_paths: u64,
    /// The latest publishes, newest first (at most ten).
    pub recent: Vec<Publish>,
    /// Where the reconcile pass stands.
    pub reconcile: ReconcileState,
    /// The last or current GC pass (absent from workers without retention).
    #[serde(default)]
    pub gc: Option<GcRun>,
}

/// `GET /_nixflare/summary`: what the landing page shows, precomputed by the index and
/// kept in R2 (`SUMMARY_KEY`), so a page view reads one object and never the index. It
/// names no publisher: it is as public as the cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Unix milliseconds when the index wrote it.
    pub generated_at: u64,
    pub paths: u64,
    /// Sum of NarSize: what the paths take unpacked.
    pub nar_bytes: u64,
    /// What the bucket holds for them (FileSize over distinct NAR files).
    pub stored_bytes: u64,
    /// References served by an upstream cache instead of this one.
    pub upstream_paths: u64,
    pub pins: u64,
    /// Unix milliseconds of the newest publish, if the cache holds anything.
    pub last_published_at: Option<u64>,
    /// Paths published each UTC day of the last [`SUMMARY_DAYS`], oldest first, counting
    /// those the cache still holds.
    pub days: Vec<DayPublishes>,
    /// `RETAIN_DAYS` and `MAX_CACHE_BYTES` as configured (none: unset).
    pub retain_days: Option<u64>,
    pub budget_bytes: Option<u64>,
    /// The last or current GC pass.
    pub gc: Option<GcRun>,
    /// When the reconcile pass last completed a lap.
    pub reconcile_last_pass_at: Option<u64>,
}

/// Days a [`Summary`] charts.
pub const SUMMARY_DAYS: u64 = 30;

/// Where the index keeps the [`Summary`] in the bucket: not a store file, so no GC or
/// reconcile pass ever takes it for one.
pub const SUMMARY_KEY: &str = "_nixflare/summary.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DayPublishes {
    /// Unix milliseconds of the day's start (00:00 UTC).
    pub day: u64,
    pub paths: u64,
    /// FileSize of those paths.
    pub bytes: u64,
}

/// One publish, as the index recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publish {
    pub store_path: String,
    /// Unix milliseconds.
    pub published_at: u64,
    /// Who published it; none for a path the reconcile pass found in the bucket.
    pub subject: Option<String>,
    pub token_id: Option<TokenId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileState {
    /// The last top-level bucket key the running pass has reconciled ("" between passes).
    pub after: String,
    /// Unix milliseconds when the last complete lap ended, if one ever did.
    pub last_pass_at: Option<u64>,
    /// When the last complete lap began: every narinfo the bucket held then is known
    /// to the index. The GC deletes nothing the index could not have seen by then.
    #[serde(default)]
    pub complete_lap_started_at: Option<u64>,
    /// When the lap under way began, if one is.
    #[serde(default)]
    pub lap_started_at: Option<u64>,
}

/// `POST /_nixflare/reconcile`: what one step did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileStep {
    /// Top-level keys listed.
    pub listed: u64,
    /// Narinfos found in the bucket that the index lacked, now indexed.
    pub indexed: u64,
    /// Index entries whose narinfo is gone from the bucket, now removed.
    pub removed: u64,
    /// Narinfos in the bucket that do not parse (left alone, not indexed).
    pub unreadable: u64,
    /// Where the next step starts; "" once the pass is complete.
    pub after: String,
    /// This step finished a pass.
    pub pass_complete: bool,
}

/// The answer to `POST /_nixflare/roots`: the paths whose push time was set to now (they
/// are GC roots for `RETAIN_DAYS` from now), and those the cache does not hold (a GC may
/// have removed them since the push asked: push them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RootsRefreshed {
    pub refreshed: u64,
    pub missing: Vec<StorePathHash>,
}

/// `PUT /_nixflare/pins/<name>`: pin a path (a base name, `<hash>-<name>`) and its
/// closure; the name moves if it pinned another path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PinRequest {
    pub store_path: StorePathBaseName,
    /// Days the pin holds; none: until removed.
    pub keep_days: Option<u64>,
}

/// A pin, as the index holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    pub name: PinName,
    pub store_path: StorePathBaseName,
    /// Unix milliseconds.
    pub pinned_at: u64,
    /// Unix milliseconds; none: until removed.
    pub expires_at: Option<u64>,
    /// Who set it: shown to tokens that may write, hidden (none) from read-only ones.
    #[serde(default)]
    pub subject: Option<String>,
}

/// `GET /_nixflare/pins`, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pins {
    pub pins: Vec<Pin>,
}

/// `POST /_nixflare/gc`: run steps of the pass under way; once it is done, start a new
/// one only if its number would be at most `start_up_to` (0: never start one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRequest {
    pub start_up_to: u64,
}

/// Where a GC pass is (`crate::core::gc` has the phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GcPhase {
    /// No pass has run yet.
    Idle,
    Seed,
    Mark,
    Budget,
    Sweep,
    Orphans,
    Done,
}

/// One GC pass: what it was told, where it is, what it did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcRun {
    /// Passes are numbered from 1; 0 with [`GcPhase::Idle`].
    pub run: u64,
    pub phase: GcPhase,
    /// Unix milliseconds. Paths pushed after this are never removed by this pass.
    pub started_at: u64,
    pub finished_at: Option<u64>,
    /// Roots are paths pushed at or after this (`RETAIN_DAYS`); none: every path.
    pub roots_since: Option<u64>,
    pub budget_bytes: Option<u64>,
    pub grace_ms: u64,
    /// Paths and NAR bytes (FileSize) the pass keeps; known once marked.
    pub kept_paths: u64,
    pub kept_bytes: u64,
    /// Pins alone hold more than the budget.
    pub over_budget: bool,
    /// Paths the pass found to go, and of them those removed.
    pub doomed_paths: u64,
    pub removed_paths: u64,
    pub removed_bytes: u64,
    /// Doomed paths a push, a new reference or a pin saved during the pass.
    pub spared_paths: u64,
    /// Doomed paths left for a later pass because a path referring to them was removed
    /// less than a day ago and the edge cache could not be purged.
    #[serde(default)]
    pub held_paths: u64,
    /// Objects the orphan listing removed (NARs, side files), and keys it looked at.
    pub removed_objects: u64,
    pub listed_keys: u64,
    /// The sweep waits for a reconcile lap that began after the pass did, so that no
    /// narinfo written behind the worker's back still needs what it would remove.
    #[serde(default)]
    pub waiting_for_lap: bool,
}

/// Why a dry run says a path would go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GcRule {
    /// No root pushed within `RETAIN_DAYS` and no live pin reaches it.
    Retention,
    /// Only roots older than those that fit `MAX_CACHE_BYTES` reach it.
    Budget,
}

/// A path a pass would remove.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcCandidate {
    pub store_path: StorePathBaseName,
    pub rule: GcRule,
    pub file_size: u64,
    /// The path's own last push (Unix milliseconds).
    pub pushed_at: u64,
}

/// What the pass under way would remove, oldest push first (at most
/// [`MAX_PLANNED`](crate::core::gc::MAX_PLANNED) listed; the counts are whole).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcPlan {
    pub paths: Vec<GcCandidate>,
    pub path_count: u64,
    pub path_bytes: u64,
    /// Paths removed less than the grace period ago: their NARs and side files go
    /// once it is over.
    pub in_grace: u64,
    /// Paths an earlier step decided to remove whose narinfos are not yet deleted (a
    /// request died in between): the next step deletes them first, whatever the
    /// settings say now.
    #[serde(default)]
    pub pending_paths: u64,
}

/// The answer to `GET`/`POST /_nixflare/gc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcProgress {
    pub run: GcRun,
    /// Dry run only, once the pass under way has marked what it keeps.
    pub plan: Option<GcPlan>,
    /// What this request cost: requests to the index, and R2 operations (lists,
    /// deletes, side-file reads; the token's revocation check not counted).
    #[serde(default)]
    pub index_requests: u64,
    #[serde(default)]
    pub r2_operations: u64,
}

/// The JSON text of a message, as the worker sends it.
pub fn render<T: Serialize>(message: &T) -> String {
    // The messages above hold only what the writer writes (tests prove each); were one
    // ever to hold more, the client would see an empty object and refuse it.
    crate::core::json_write::to_string(message).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::token::Claims;

    const PUBLIC: &str = "test-1:lZK8TvdFo6yEOp1D7yQkeLwxrshDPF1iwDJ6pNX1xHE=";

    /// What the worker renders is what serde_json writes, and the client (serde_json)
    /// reads it back unchanged.
    fn round_trip<T>(message: T) -> String
    where
        T: Serialize + for<'a> Deserialize<'a> + PartialEq + core::fmt::Debug,
    {
        let text = render(&message);
        assert_eq!(text, serde_json::to_string(&message).unwrap());
        assert_eq!(parse::<T>(&text).unwrap(), message, "{text}");
        text
    }

    fn parse<'a, T: Deserialize<'a>>(text: &'a str) -> serde_json::Result<T> {
        serde_json::from_str(text)
    }

    #[test]
    fn cache_info() {
        let config = CacheConfig {
            public_keys: vec![PUBLIC.parse().unwrap()],
            ..CacheConfig::default()
        };
        let text = round_trip(CacheInfo::of(&config));
        assert_eq!(
            text,
            format!(
                "{{\"storeDir\":\"/nix/store\",\"maxRequestBytes\":100000000,\"minPartBytes\":5242880,\
                 \"maxParts\":10000,\"maxObjectBytes\":5368709120,\"publicKeys\":[\"{PUBLIC}\"],\
                 \"upstreamCaches\":[],\"maxBatchNarinfos\":64,\"maxBatchBytes\":4194304,\
                 \"readAccess\":\"public\"}}"
            )
        );
        // A worker older than batches: one PUT per narinfo.
        let old: CacheInfo = parse(
            "{\"storeDir\":\"/nix/store\",\"maxRequestBytes\":1,\"minPartBytes\":1,\
             \"maxParts\":1,\"maxObjectBytes\":1,\"publicKeys\":[]}",
        )
        .unwrap();
        assert_eq!(old.max_batch_narinfos, 0);
        // …and older than private caches: public.
        assert_eq!(old.read_access, ReadAccess::Public);
        let private = CacheConfig {
            read_access: ReadAccess::Token,
            ..config
        };
        assert!(round_trip(CacheInfo::of(&private)).ends_with(",\"readAccess\":\"token\"}"));
    }

    #[test]
    fn narinfo_batches() {
        let batch = NarinfoBatch {
            narinfos: vec!["StorePath: /nix/store/x\n".into()],
        };
        assert_eq!(
            round_trip(batch),
            "{\"narinfos\":[\"StorePath: /nix/store/x\\n\"]}"
        );
        let answer = NarinfosPublished {
            results: vec![
                NarinfoResult {
                    outcome: NarinfoOutcome::Created,
                    status: 201,
                    reason: None,
                },
                NarinfoResult {
                    outcome: NarinfoOutcome::Refused,
                    status: 424,
                    reason: Some("not published: x".into()),
                },
            ],
        };
        assert_eq!(
            round_trip(answer),
            "{\"results\":[{\"outcome\":\"created\",\"status\":201},\
             {\"outcome\":\"refused\",\"status\":424,\"reason\":\"not published: x\"}]}"
        );
    }

    #[test]
    fn whoami() {
        let admin = crate::core::nix::keys::SecretKey::from_seed("admin", [1; 32]).unwrap();
        let claims = Claims {
            id: TokenId([7; 16]),
            subject: "ci \"quoted\"".into(),
            permissions: Permissions::READ.union(Permissions::WRITE),
            expires_at: 2_000_000_000,
        };
        let token = claims.mint(&admin).unwrap();
        let verified =
            crate::core::token::verify(&token, &[admin.public_key()], 1_000_000_000).unwrap();
        let text = round_trip(Whoami::of(&Credential::from(&verified)));
        assert_eq!(
            text,
            "{\"subject\":\"ci \\\"quoted\\\"\",\"tokenId\":\"07070707070707070707070707070707\",\
             \"permissions\":\"read,write\",\"expiresAt\":2000000000}"
        );
        // A CI identity has no token id to revoke.
        let ci = Credential {
            subject: "github:owner/repo@refs/heads/main".into(),
            permissions: Permissions::WRITE,
            expires_at: 5,
            token_id: None,
        };
        assert_eq!(
            round_trip(Whoami::of(&ci)),
            "{\"subject\":\"github:owner/repo@refs/heads/main\",\"tokenId\":null,\
             \"permissions\":\"write\",\"expiresAt\":5}"
        );
    }

    #[test]
    fn multipart_messages() {
        let started = UploadCreated::Started {
            upload_id: UploadId::new([3; 16], "AbC+/=").unwrap(),
            max_request_bytes: 100,
        };
        assert_eq!(
            round_trip(started),
            format!(
                "{{\"uploadId\":\"{}.AbC+/=\",\"maxRequestBytes\":100}}",
                "03".repeat(16)
            )
        );
        assert_eq!(
            round_trip(UploadCreated::Present { present: True }),
            "{\"present\":true}"
        );
        assert!(parse::<UploadCreated>("{\"present\":false}").is_err());
        assert!(parse::<UploadCreated>("{\"uploadId\":\"a b\",\"maxRequestBytes\":1}").is_err());
        round_trip(PartUploaded {
            part_number: 2,
            etag: "\"abc\"".into(),
        });
        round_trip(UploadCompleted { created: false });
    }

    #[test]
    fn index_messages() {
        let hash: StorePathHash = "7rjj86a15146cq1d3qy068lml7n8ykzm".parse().unwrap();
        assert_eq!(
            round_trip(PathQuery { hashes: vec![hash] }),
            "{\"hashes\":[\"7rjj86a15146cq1d3qy068lml7n8ykzm\"]}"
        );
        assert!(parse::<PathQuery>("{\"hashes\":[\"7rjj86a15146cq1d3qy068lml7n8ykz\"]}").is_err());
        round_trip(PathQueryAnswer {
            missing: vec![hash],
            in_upstream: vec![],
        });
        round_trip(Stats {
            paths: 1,
            nar_bytes: 2,
            stored_bytes: 3,
            index_bytes: 4,
            upstream_paths: 0,
            recent: vec![Publish {
                store_path: "7rjj86a15146cq1d3qy068lml7n8ykzm-hello".into(),
                published_at: 5,
                subject: None,
                token_id: Some(TokenId([1; 16])),
            }],
            reconcile: ReconcileState {
                after: String::new(),
                last_pass_at: None,
                complete_lap_started_at: None,
                lap_started_at: None,
            },
            gc: None,
        });
        round_trip(ReconcileStep {
            listed: 1,
            indexed: 1,
            removed: 0,
            unreadable: 0,
            after: "x".into(),
            pass_complete: false,
        });
        // A client reading an older worker's info: no upstreams.
        let old = "{\"storeDir\":\"/nix/store\",\"maxRequestBytes\":1,\"minPartBytes\":1,\
                   \"maxParts\":1,\"maxObjectBytes\":1,\"publicKeys\":[]}";
        assert!(parse::<CacheInfo>(old).unwrap().upstream_caches.is_empty());
    }
}
