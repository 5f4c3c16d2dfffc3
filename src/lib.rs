//! nixflare: a Nix binary cache on Cloudflare Workers and R2.
//!
//! - [`core`]: the pure core. No I/O; builds for wasm32 and the host; unit-tested
//!   natively with `cargo test`.
//! - `edge` (wasm32 only): binds the core to workers-rs Requests, Responses, R2 and cron.
//! - [`cli`] (native only): the `nixflare` command, reusing the core.
//!
//! ARCHITECTURE.md has the map.
#![forbid(unsafe_code)]

#[cfg(not(target_arch = "wasm32"))]
pub mod cli;
pub mod core;

#[cfg(target_arch = "wasm32")]
mod edge;
