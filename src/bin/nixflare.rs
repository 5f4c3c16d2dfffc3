//! The `nixflare` command (see `nixflare::cli`).

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    nixflare::cli::main()
}
