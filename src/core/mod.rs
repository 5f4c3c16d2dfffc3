//! The pure core: every decision nixflare makes, with no I/O.
//!
//! Built for wasm32 (the worker) and the host (the CLI and `cargo test`) alike, so
//! nothing here may touch the network, storage, the clock or randomness: callers pass
//! in what the world looks like (a request's method and path, the bytes of an upload,
//! what storage holds, the time) and act on what comes back. See ARCHITECTURE.md.
//!
//! - [`nix`]: Nix's own formats (nix32, hashes, store paths, narinfo, keys, signatures).
//! - [`route`]: request paths as typed values; their canonical form is the storage key.
//! - [`http`]: Range, If-None-Match and query strings.
//! - [`config`]: the worker's variables.
//! - [`token`]: upload tokens.
//! - [`publish`]: what an upload must prove before it is published.
//! - [`multipart`]: the rules of multipart NAR uploads.

pub mod config;
pub mod http;
pub mod lower_hex;
pub mod multipart;
pub mod nix;
pub mod publish;
pub mod route;
pub mod token;
