//! The pure core: every decision nixflare makes, with no I/O.
//!
//! Built for wasm32 (the worker) and the host (the CLI and `cargo test`) alike, so
//! nothing here may touch the network, storage, the clock or randomness: callers pass
//! in what the world looks like (a request's method and path, the bytes of an upload,
//! what storage holds, the time) and act on what comes back. See ARCHITECTURE.md.
//!
//! - [`api`]: the wire contract: every JSON message between worker and client
//!   ([`json_write`] writes them in the worker; [`json_read`] reads side files).
//! - [`nix`]: Nix's own formats (nix32, hashes, store paths, narinfo, keys, signatures).
//! - [`route`]: request paths as typed values; their canonical form is the storage key.
//! - [`http`]: Range, If-None-Match and query strings.
//! - [`config`]: the worker's variables.
//! - [`token`]: upload tokens; [`oidc`]: CI providers' ID tokens; [`credential`]: who a
//!   request is, whichever of the two it carried.
//! - [`reader`]: who may read a private cache, and what an isolate remembers of it.
//! - [`publish`]: what an upload must prove before it is published.
//! - [`multipart`]: the rules of multipart NAR uploads.
//! - [`dispatch`]: what the worker does for a method and route, and with which permission.
//! - [`storage`]: what R2's refusals mean.
//! - [`index`]: the index of what the cache holds and the GC's decisions, with the
//!   passes that act on them ([`gc`] holds the retention rules that need no storage).
//! - [`json_serde`]: typed reading of JSON with the strict reader.

/// Serializes a type as its text (`Display`) and reads it back with `FromStr`, so a
/// value has one spelling everywhere: in a narinfo, a key file, a log line and JSON.
macro_rules! serde_via_text {
    ($type:ty) => {
        impl serde::Serialize for $type {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = <String as serde::Deserialize>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use serde_via_text;

pub mod api;
pub mod config;
mod corpus;
pub mod credential;
pub mod dispatch;
pub mod gc;
pub mod http;
pub mod index;
pub mod json_read;
pub mod json_serde;
pub mod json_write;
pub mod lower_hex;
pub mod metrics;
pub mod multipart;
pub mod nix;
pub mod oidc;
pub mod pin_name;
mod properties;
pub mod publish;
pub mod reader;
pub mod route;
pub mod storage;
pub mod token;
