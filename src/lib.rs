//! nixflare: a Nix binary cache on Cloudflare Workers and R2.
//!
//! - [`nix`], [`route`], [`http`], [`config`]: the pure core. No I/O; builds for
//!   wasm32 and the host; unit-tested natively with `cargo test`.
//! - `edge` (wasm32 only): binds the core to workers-rs Requests, Responses and R2.
//! - [`cli`] (native only): the `nixflare` command, reusing the core.
#![forbid(unsafe_code)]

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod config;
pub mod http;
pub mod multipart;
pub mod nix;
pub mod route;
pub mod token;
pub mod upload;

#[cfg(target_arch = "wasm32")]
mod edge;
