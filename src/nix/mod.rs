//! Nix's own formats, one module each.

pub mod keys;
pub mod nix32;
pub mod store_path;
