//! nixflare: a Nix binary cache on Cloudflare Workers and R2.
//!
//! - [`nix`], [`route`], [`http`], [`config`]: the pure core. No I/O; builds for
//!   wasm32 and the host; unit-tested natively with `cargo test`.
//! - `edge` (wasm32 only): binds the core to workers-rs Requests, Responses and R2.
//! - `src/bin/nixflare.rs`: the native client (`nixflare` command).
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod multipart;
pub mod nix;
pub mod route;
pub mod token;
pub mod upload;

#[cfg(target_arch = "wasm32")]
mod edge;
