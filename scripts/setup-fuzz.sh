#!/usr/bin/env bash
# What `make fuzz` needs on top of scripts/setup.sh: a nightly toolchain (cargo-fuzz
# builds with sanitizers) and cargo-fuzz, pinned. Idempotent: a second run takes seconds.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"

# The channel, not a dated build: the mirror here serves only the current nightly.
NIGHTLY=nightly
CARGO_FUZZ_VERSION=0.13.1

step() { printf '==> %s\n' "$*" >&2; }

if ! rustup run "$NIGHTLY" rustc --version >/dev/null 2>&1; then
  step "rustup toolchain install $NIGHTLY (once)"
  rustup toolchain install "$NIGHTLY" --profile minimal
fi
if ! cargo fuzz --version 2>/dev/null | grep -qw "$CARGO_FUZZ_VERSION"; then
  step "cargo install cargo-fuzz $CARGO_FUZZ_VERSION (a few minutes, once)"
  cargo install --quiet cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --force
fi
