//! Typed routes of the binary-cache protocol.
//!
//! Every request path is parsed into a [`Route`] before anything else happens; a path
//! that does not parse is a 404 and never reaches storage. The storage key is the
//! route's canonical [`Display`](core::fmt::Display) form, rebuilt from parsed values,
//! so no unchecked byte of the request ever becomes part of a key (workerd leaves
//! `%2f` encoded: docs/platform.md §2).
//!
//! Path shapes come from NixOS/nix `src/libstore/binary-cache-store.cc` and
//! `http-binary-cache-store.cc`.

use core::fmt;

use crate::core::nix::hash::Sha256;
use crate::core::nix::nar_file::NarFile;
use crate::core::nix::store_path::{check_name, StorePathBaseName, StorePathHash};
use crate::core::pin_name::PinName;
use crate::core::token::TokenId;

/// A derivation's base name, `<hash>-<name>.drv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvBaseName(StorePathBaseName);

impl DrvBaseName {
    fn parse(text: &str) -> Option<Self> {
        let base: StorePathBaseName = text.parse().ok()?;
        base.name().ends_with(".drv").then_some(Self(base))
    }
}

impl fmt::Display for DrvBaseName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A derivation output name (`out`, `dev`, ...): store-name characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputName(String);

impl OutputName {
    fn parse(text: &str) -> Option<Self> {
        check_name(text).ok().map(|()| Self(text.to_owned()))
    }
}

impl fmt::Display for OutputName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Longest build id accepted under `debuginfo/` (GNU build ids are 20 bytes = 40 hex).
const MAX_BUILD_ID_HEX: usize = 128;
/// What Nix's `index-debug-info` appends to the build id in the key it writes (the
/// file's own name, `<38 hex>.debug`, after its 2-hex directory); Hydra's indexer writes
/// the bare id. Both are served as written.
const DEBUG_SUFFIX: &str = ".debug";

/// One file of the binary-cache protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/`: the landing page (`www/index.html`, built into the worker so protocol
    /// requests never pass through a static-asset router first).
    LandingPage,
    /// `nix-cache-info`: rendered from configuration, not stored.
    CacheInfo,
    /// `public-keys`: the configured public keys, one per line (not a Nix file: for
    /// the landing page and for scripts writing nix.conf).
    PublicKeys,
    /// `<hash>.narinfo`
    Narinfo(StorePathHash),
    /// `<hash>.ls`: a NAR listing (`write-nar-listing`).
    Listing(StorePathHash),
    /// `nar/<filehash>.nar[.ext]`
    Nar(NarFile),
    /// `log/<drv>`: a build log (`nix store copy-log`).
    Log(DrvBaseName),
    /// `realisations/sha256:<hex>!<output>.doi` (Nix <= 2.34, Lix).
    Realisation {
        drv_hash: Sha256,
        output: OutputName,
    },
    /// `build-trace-v2/<drv>/<output>.doi` (Nix >= 2.35).
    BuildTrace {
        drv: DrvBaseName,
        output: OutputName,
    },
    /// `debuginfo/<build-id>[.debug]`: a JSON pointer into a NAR (`index-debug-info`).
    DebugInfo(String),
    /// `_nixflare/revocations/<token id>`: PUT revokes a token. Not a Nix file.
    Revocation(TokenId),
    /// `_nixflare/uploads/nar/<filehash>.nar[.ext]`: a multipart NAR upload
    /// (`crate::core::multipart`); its storage key is the never-served staging object.
    Upload(NarFile),
    /// `_nixflare/summary.json`: what the landing page shows, written by the index
    /// (`crate::core::api::Summary`) and served from R2 like a stored file.
    Summary,
    /// `_nixflare/metrics`: Prometheus text for operators (`crate::core::metrics`).
    Metrics,
    /// `_nixflare/info`: JSON for clients (limits, keys). Not a Nix file.
    Info,
    /// `_nixflare/whoami`: what the worker makes of the request's token.
    Whoami,
    /// `_nixflare/missing`: POST a batch of store path hashes, learn which the cache
    /// lacks (`crate::core::api::PathQuery`).
    Missing,
    /// `_nixflare/narinfos`: POST a batch of narinfos to publish
    /// (`crate::core::api::NarinfoBatch`).
    Narinfos,
    /// `_nixflare/stats`: what the index says the cache holds.
    Stats,
    /// `_nixflare/reconcile`: POST runs one step of the pass that makes the index match
    /// the bucket.
    Reconcile,
    /// `_nixflare/gc`: GET shows what a GC pass would remove and why; POST runs steps
    /// of one (`crate::core::gc`).
    Gc,
    /// `_nixflare/pins`: GET lists the GC pins.
    Pins,
    /// `_nixflare/pins/<name>`: PUT adds or moves a pin, DELETE removes it.
    Pin(PinName),
    /// `_nixflare/roots`: POST refreshes the GC roots a push named, even when every path
    /// was already in the cache.
    Roots,
}

/// What kind of object a route names: decides Content-Type and caching.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Page,
    CacheInfo,
    PublicKeys,
    Narinfo,
    Nar,
    Json,
    Log,
    /// Worker-internal bookkeeping (revocations, staged uploads): never served.
    Internal,
    /// JSON answers for the `nixflare` client, computed per request.
    Api,
    /// The landing page's summary: stored, but rewritten after every publish.
    Summary,
    /// Prometheus text, computed per scrape.
    Metrics,
}

impl Kind {
    pub fn content_type(self) -> &'static str {
        match self {
            Kind::Page => "text/html; charset=utf-8",
            Kind::CacheInfo => "text/x-nix-cache-info",
            Kind::PublicKeys => "text/plain; charset=utf-8",
            Kind::Narinfo => "text/x-nix-narinfo",
            Kind::Nar => "application/x-nix-nar",
            Kind::Json | Kind::Api | Kind::Summary => "application/json",
            Kind::Metrics => crate::core::metrics::CONTENT_TYPE,
            Kind::Log | Kind::Internal => "text/plain; charset=utf-8",
        }
    }

    /// Cache-Control for a successful read. A CDN in front (Workers Cache) serves hits
    /// without running the worker.
    pub fn cache_control(self) -> &'static str {
        match self {
            // Named by the SHA-256 of their bytes: can never change.
            Kind::Nar => "public, max-age=31536000, immutable",
            // Immutable once published, but an admin may delete a path: a day bounds
            // how long a deleted path lingers at the edge. Nix itself keeps positive
            // narinfo lookups for 30 days anyway.
            // The GC's timing rests on this lifetime (`METADATA_MAX_AGE_SECS`).
            Kind::Narinfo | Kind::Json | Kind::Log => METADATA_CACHE_CONTROL,
            // Configuration: picked up within minutes of a redeploy.
            Kind::Page | Kind::CacheInfo | Kind::PublicKeys => "public, max-age=300",
            Kind::Internal | Kind::Api | Kind::Metrics => "no-store",
            // Follows publishes within seconds: a minute at the edge is stale enough.
            Kind::Summary => "public, max-age=60",
        }
    }
}

impl Kind {
    /// Whether a private cache keeps a copy of this kind in the Cache API, behind its
    /// token check (`edge::read::serve_private`): the small files every substitution
    /// asks for, many times, and their 404s (Nix asks for many paths a cache lacks).
    /// NARs are not kept: each is read once per machine, R2 reads
    /// are its cheapest operation, and a copy would double what a colo holds. The copy
    /// lives as long as [`Kind::cache_control`] says (a day for metadata), which the
    /// GC's edge hold already covers.
    pub fn kept_for_private_reads(self) -> bool {
        matches!(self, Kind::Narinfo | Kind::Json | Kind::Log)
    }
}

/// `Cache-Control` of every answer of a private cache (`READ_ACCESS = "token"`),
/// refusals included: no shared cache (Workers Cache in front of the worker above all,
/// which would serve a copy without running the worker) may keep any of them.
pub const PRIVATE_CACHE_CONTROL: &str = "private, no-store";

/// How long the edge may serve a narinfo (or another metadata file) after it was
/// deleted. The GC's edge hold and shortest grace period are derived from it
/// (`crate::core::gc::EDGE_HOLD_MS`), so a client that still gets a removed narinfo
/// from the edge finds its NAR and its references.
pub const METADATA_MAX_AGE_SECS: u64 = 86_400;
/// `Cache-Control` of metadata: [`METADATA_MAX_AGE_SECS`] (a test checks they agree).
pub const METADATA_CACHE_CONTROL: &str = "public, max-age=86400";

/// Where multipart uploads live, as a path and (for the assembled parts) a storage key.
pub const UPLOADS_PREFIX: &str = "_nixflare/uploads/";

/// Cache-Control for a 404: short, so a path pushed a moment later shows up soon
/// (Nix's own negative cache is an hour).
pub const NOT_FOUND_CACHE_CONTROL: &str = "public, max-age=60";

impl Route {
    /// Parses a raw request path (as the runtime hands it over, still percent-encoded).
    /// `None` means 404.
    pub fn parse(path: &str) -> Option<Route> {
        let rest = path.strip_prefix('/')?;
        let mut segments = Vec::with_capacity(3);
        for raw in rest.split('/') {
            segments.push(percent_decode(raw)?);
        }
        match segments.as_slice() {
            [file] => Self::parse_top_level(file),
            [top, file] if top == "_nixflare" => match file.as_str() {
                "info" => Some(Route::Info),
                "summary.json" => Some(Route::Summary),
                "metrics" => Some(Route::Metrics),
                "whoami" => Some(Route::Whoami),
                "missing" => Some(Route::Missing),
                "narinfos" => Some(Route::Narinfos),
                "stats" => Some(Route::Stats),
                "reconcile" => Some(Route::Reconcile),
                "gc" => Some(Route::Gc),
                "pins" => Some(Route::Pins),
                "roots" => Some(Route::Roots),
                _ => None,
            },
            [top, dir, name] if top == "_nixflare" && dir == "pins" => {
                PinName::parse(name).map(Route::Pin)
            }
            [dir, file] => Self::parse_in_dir(dir, file),
            [dir, drv, file] if dir == "build-trace-v2" => Some(Route::BuildTrace {
                drv: DrvBaseName::parse(drv)?,
                output: OutputName::parse(file.strip_suffix(".doi")?)?,
            }),
            [top, dir, id] if top == "_nixflare" && dir == "revocations" => {
                id.parse().ok().map(Route::Revocation)
            }
            [top, dir, nar, file] if top == "_nixflare" && dir == "uploads" && nar == "nar" => {
                NarFile::parse(file).map(Route::Upload)
            }
            _ => None,
        }
    }

    fn parse_top_level(file: &str) -> Option<Route> {
        match file {
            "" => return Some(Route::LandingPage),
            "nix-cache-info" => return Some(Route::CacheInfo),
            "public-keys" => return Some(Route::PublicKeys),
            _ => {}
        }
        if let Some(hash) = file.strip_suffix(".narinfo") {
            return hash.parse().ok().map(Route::Narinfo);
        }
        if let Some(hash) = file.strip_suffix(".ls") {
            return hash.parse().ok().map(Route::Listing);
        }
        None
    }

    fn parse_in_dir(dir: &str, file: &str) -> Option<Route> {
        match dir {
            "nar" => NarFile::parse(file).map(Route::Nar),
            "log" => DrvBaseName::parse(file).map(Route::Log),
            "realisations" => {
                let id = file.strip_suffix(".doi")?;
                let (hash, output) = id.split_once('!')?;
                Some(Route::Realisation {
                    drv_hash: Sha256::from_lower_hex(hash.strip_prefix("sha256:")?)?,
                    output: OutputName::parse(output)?,
                })
            }
            "debuginfo" => {
                let id = file.strip_suffix(DEBUG_SUFFIX).unwrap_or(file);
                let ok = (2..=MAX_BUILD_ID_HEX).contains(&id.len())
                    && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                ok.then(|| Route::DebugInfo(file.to_owned()))
            }
            _ => None,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Route::CacheInfo => Kind::CacheInfo,
            Route::PublicKeys => Kind::PublicKeys,
            Route::LandingPage => Kind::Page,
            Route::Narinfo(_) => Kind::Narinfo,
            Route::Nar(_) => Kind::Nar,
            Route::Listing(_)
            | Route::Realisation { .. }
            | Route::BuildTrace { .. }
            | Route::DebugInfo(_) => Kind::Json,
            Route::Log(_) => Kind::Log,
            Route::Revocation(_) | Route::Upload(_) => Kind::Internal,
            Route::Summary => Kind::Summary,
            Route::Info
            | Route::Whoami
            | Route::Missing
            | Route::Narinfos
            | Route::Stats
            | Route::Reconcile
            | Route::Gc
            | Route::Pins
            | Route::Pin(_)
            | Route::Roots => Kind::Api,
            Route::Metrics => Kind::Metrics,
        }
    }
}

/// The canonical path without the leading `/`; for a route the core plans as
/// `Public::Serve` or `Operation::Store`, also its storage key.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::CacheInfo => f.write_str("nix-cache-info"),
            Route::PublicKeys => f.write_str("public-keys"),
            Route::LandingPage => Ok(()),
            Route::Narinfo(hash) => write!(f, "{hash}.narinfo"),
            Route::Listing(hash) => write!(f, "{hash}.ls"),
            Route::Nar(file) => write!(f, "{}{file}", NarFile::DIR),
            Route::Log(drv) => write!(f, "log/{drv}"),
            Route::Realisation { drv_hash, output } => {
                write!(
                    f,
                    "realisations/sha256:{}!{output}.doi",
                    drv_hash.lower_hex()
                )
            }
            Route::BuildTrace { drv, output } => write!(f, "build-trace-v2/{drv}/{output}.doi"),
            Route::DebugInfo(id) => write!(f, "debuginfo/{id}"),
            Route::Revocation(id) => write!(f, "_nixflare/revocations/{id}"),
            Route::Upload(file) => write!(f, "{UPLOADS_PREFIX}{}{file}", NarFile::DIR),
            Route::Info => f.write_str("_nixflare/info"),
            Route::Summary => f.write_str(crate::core::api::SUMMARY_KEY),
            Route::Metrics => f.write_str("_nixflare/metrics"),
            Route::Whoami => f.write_str("_nixflare/whoami"),
            Route::Missing => f.write_str("_nixflare/missing"),
            Route::Narinfos => f.write_str("_nixflare/narinfos"),
            Route::Stats => f.write_str("_nixflare/stats"),
            Route::Reconcile => f.write_str("_nixflare/reconcile"),
            Route::Gc => f.write_str("_nixflare/gc"),
            Route::Pins => f.write_str("_nixflare/pins"),
            Route::Pin(name) => write!(f, "_nixflare/pins/{name}"),
            Route::Roots => f.write_str("_nixflare/roots"),
        }
    }
}

/// Decodes `%XX` escapes once. `None` for a malformed escape or a result that is not
/// ASCII (nothing in the protocol is). A decoded `%` is kept as a literal and then
/// fails validation, so double encoding never sneaks through.
fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(core::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    // A decoded '/' would smuggle a separator into a segment.
    if !out.is_ascii() || out.contains(&b'/') {
        return None;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_cache_control_says_its_max_age() {
        assert_eq!(
            METADATA_CACHE_CONTROL,
            format!("public, max-age={METADATA_MAX_AGE_SECS}")
        );
    }

    const HASH: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
    const FILE_HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const DRV_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn round_trip(path: &str) -> Route {
        let route = Route::parse(path).unwrap_or_else(|| panic!("{path} should parse"));
        assert_eq!(format!("/{route}"), path, "canonical form");
        route
    }

    #[test]
    fn every_protocol_path_round_trips() {
        assert_eq!(round_trip("/nix-cache-info"), Route::CacheInfo);
        assert_eq!(round_trip("/public-keys"), Route::PublicKeys);
        assert_eq!(round_trip("/"), Route::LandingPage);
        assert_eq!(
            round_trip(&format!("/{HASH}.narinfo")).kind(),
            Kind::Narinfo
        );
        assert_eq!(round_trip(&format!("/{HASH}.ls")).kind(), Kind::Json);
        for ext in ["", ".xz", ".bz2", ".zst", ".br", ".lz4", ".lzip"] {
            let route = round_trip(&format!("/nar/{FILE_HASH}.nar{ext}"));
            assert_eq!(route.kind(), Kind::Nar);
        }
        assert_eq!(
            round_trip(&format!("/log/{HASH}-hello.drv")).kind(),
            Kind::Log
        );
        assert_eq!(
            round_trip(&format!("/realisations/sha256:{DRV_HEX}!out.doi")).kind(),
            Kind::Json
        );
        assert_eq!(
            round_trip(&format!("/build-trace-v2/{HASH}-hello.drv/dev.doi")).kind(),
            Kind::Json
        );
        assert_eq!(
            round_trip("/debuginfo/0123456789abcdef0123456789abcdef01234567.debug").kind(),
            Kind::Json
        );
        assert_eq!(
            round_trip("/debuginfo/0123456789abcdef0123456789abcdef01234567").kind(),
            Kind::Json
        );
        assert_eq!(
            round_trip("/_nixflare/revocations/0123456789abcdef0123456789abcdef").kind(),
            Kind::Internal
        );
        assert_eq!(
            round_trip(&format!("/_nixflare/uploads/nar/{FILE_HASH}.nar.zst")).kind(),
            Kind::Internal
        );
        assert_eq!(round_trip("/_nixflare/info"), Route::Info);
        assert_eq!(round_trip("/_nixflare/summary.json"), Route::Summary);
        assert_eq!(round_trip("/_nixflare/metrics"), Route::Metrics);
        assert_eq!(Route::Summary.to_string(), crate::core::api::SUMMARY_KEY);
        assert_eq!(Route::Summary.kind(), Kind::Summary);
        assert_eq!(round_trip("/_nixflare/missing"), Route::Missing);
        assert_eq!(round_trip("/_nixflare/narinfos"), Route::Narinfos);
        assert_eq!(round_trip("/_nixflare/stats"), Route::Stats);
        assert_eq!(round_trip("/_nixflare/reconcile"), Route::Reconcile);
        assert_eq!(round_trip("/_nixflare/gc"), Route::Gc);
        assert_eq!(round_trip("/_nixflare/pins"), Route::Pins);
        assert_eq!(round_trip("/_nixflare/roots"), Route::Roots);
        assert_eq!(
            round_trip("/_nixflare/pins/release-24.05"),
            Route::Pin("release-24.05".parse().unwrap())
        );
        assert_eq!(Route::parse("/_nixflare/pins/..%2fx"), None);
        assert_eq!(Route::parse("/_nixflare/pins/.hidden"), None);
        assert_eq!(round_trip("/_nixflare/whoami").kind(), Kind::Api);
    }

    #[test]
    fn storage_keys_are_canonical_paths() {
        let route = Route::parse(&format!("/{HASH}.narinfo")).unwrap();
        assert_eq!(route.to_string(), format!("{HASH}.narinfo"));
        // An escaped character that is legal decodes to the same key as the plain one.
        let escaped = Route::parse(&format!("/realisations/sha256%3A{DRV_HEX}%21out.doi")).unwrap();
        assert_eq!(
            escaped.to_string(),
            format!("realisations/sha256:{DRV_HEX}!out.doi")
        );
    }

    #[test]
    fn rejects_everything_else() {
        let bad = [
            "",
            "nix-cache-info",
            "//nix-cache-info",
            "/nix-cache-info/",
            "/NIX-CACHE-INFO",
            &format!("/{HASH}.NARINFO"),
            &format!("/{}.narinfo", &HASH[1..]),
            &format!("/{HASH}e.narinfo"),
            "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
            &format!("/{HASH}.narinfo.narinfo"),
            &format!("/x/{HASH}.narinfo"),
            &format!("/nar/{FILE_HASH}.nar.gz"),
            &format!("/nar/{FILE_HASH}.nar.xz.xz"),
            &format!("/nar/{FILE_HASH}"),
            &format!("/nar/{HASH}.nar"),
            &format!("/nar/../{HASH}.narinfo"),
            &format!("/nar/..%2f{HASH}.narinfo"),
            &format!("/nar%2f{FILE_HASH}.nar"),
            &format!("/nar/%2e%2e/{FILE_HASH}.nar"),
            &format!("/log/{HASH}-hello"),
            &format!("/log/{HASH}-hello.drv/x"),
            "/log/..%2f..%2fsecret",
            &format!("/log/{HASH}-a%252fb.drv"),
            &format!("/log/{HASH}-a%2fb.drv"),
            &format!("/log/{HASH}-a%zzb.drv"),
            &format!("/log/{HASH}-a%c3%a9.drv"),
            &format!("/log/{HASH}-a%"),
            &format!("/realisations/sha256:{DRV_HEX}.doi"),
            &format!("/realisations/sha256:{DRV_HEX}!out"),
            &format!("/realisations/sha1:{DRV_HEX}!out.doi"),
            &format!("/realisations/sha256:{}!out.doi", DRV_HEX.to_uppercase()),
            &format!("/realisations/sha256:{}!out.doi", &DRV_HEX[2..]),
            &format!("/realisations/sha256:{DRV_HEX}!.doi"),
            &format!("/build-trace-v2/{HASH}-hello/out.doi"),
            &format!("/build-trace-v2/{HASH}-hello.drv/out"),
            &format!("/build-trace-v2/{HASH}-hello.drv/a/out.doi"),
            "/debuginfo/0",
            "/debuginfo/ABCDEF",
            "/debuginfo/xyz",
            "/debuginfo/.debug",
            "/debuginfo/ab.debug.debug",
            "/debuginfo/ab.DEBUG",
            &format!("/debuginfo/{}", "a".repeat(MAX_BUILD_ID_HEX + 2)),
            "/index.html",
            "//",
            "/_nixflare/revocations/0123",
            "/_nixflare/revocations/0123456789ABCDEF0123456789ABCDEF",
            "/_nixflare/other/0123456789abcdef0123456789abcdef",
            "/_nixflare/other",
            &format!("/_nixflare/uploads/{FILE_HASH}.nar"),
            &format!("/_nixflare/uploads/nar/{HASH}.narinfo"),
            &format!("/_nixflare/uploads/log/{HASH}-hello.drv"),
            "/nar/",
        ];
        for path in bad {
            assert_eq!(Route::parse(path), None, "{path:?} must not parse");
        }
    }

    #[test]
    fn content_types_and_caching() {
        assert_eq!(Kind::Narinfo.content_type(), "text/x-nix-narinfo");
        assert_eq!(Kind::Nar.content_type(), "application/x-nix-nar");
        assert_eq!(Kind::CacheInfo.content_type(), "text/x-nix-cache-info");
        assert!(Kind::Nar.cache_control().contains("immutable"));
        assert!(!Kind::Narinfo.cache_control().contains("immutable"));
    }

    #[test]
    fn nar_routes_carry_the_file() {
        let route = Route::parse(&format!("/nar/{FILE_HASH}.nar.zst")).unwrap();
        let Route::Nar(file) = route else {
            panic!("not a NAR route")
        };
        assert_eq!(
            file.compression,
            crate::core::nix::nar_file::Compression::Zstd
        );
        assert_eq!(file.file_hash.nix32(), FILE_HASH);
    }
}
