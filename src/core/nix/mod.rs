//! Nix's own formats, one module each.

pub mod content_address;
pub mod hash;
pub mod keys;
pub mod nar_file;
pub mod narinfo;
pub mod nix32;
pub mod realisation;
pub mod side_file;
pub mod store_path;
