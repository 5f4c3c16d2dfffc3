# nixflare: the two commands a new user needs are `make dev` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

export PATH := $(HOME)/.cargo/bin:$(PATH)
# worker-build would download these from GitHub; use the pinned local ones instead.
export WASM_BINDGEN_BIN := $(HOME)/.cargo/bin/wasm-bindgen
export ESBUILD_BIN := $(CURDIR)/node_modules/@esbuild/linux-x64/bin/esbuild
export WASM_OPT_BIN := $(CURDIR)/node_modules/.bin/wasm-opt
# Offline: skip wrangler's Request.cf lookup and telemetry.
export CLOUDFLARE_CF_FETCH_ENABLED := false
export WRANGLER_SEND_METRICS := false

WORKER := build/worker/shim.mjs
WORKER_SOURCES := $(shell find src -name '*.rs') www/index.html Cargo.toml Cargo.lock

.PHONY: help setup worker dev test lint unit e2e bench soak fuzz init deploy

help:
	@echo "make dev     start the cache locally on http://127.0.0.1:8787 (installs what it needs)"
	@echo "make test    run every test (installs what it needs)"
	@echo "make bench   benchmarks against baselines; writes benches/RESULTS.md (BENCHES=\"worker index\" for some)"
	@echo "make soak    the index's model-based test for SOAK_CASES cases (default 5000)"
	@echo "make fuzz    every fuzz target for FUZZ_SECONDS (default 60) each (installs nightly)"
	@echo "make init    stand up your cache on Cloudflare: keys, bucket, deploy, tokens (README)"
	@echo "make deploy  deploy your cache again after a git pull (nixflare deploy)"

setup:
	@scripts/setup.sh

# Rebuilt only when a Rust source changed (wrangler also runs this as its build command).
worker: $(WORKER)
$(WORKER): $(WORKER_SOURCES)
	worker-build --release
	@# worker-build keeps the wasm name section (~17 KB gzip); stripping it keeps the
	@# worker under 120 KB gzip. Panics still log their message; wasm stack frames show
	@# function indices instead of names.
	$(WASM_OPT_BIN) -Oz --strip-debug --strip-producers build/index_bg.wasm -o build/index_bg.wasm
	@touch $@

dev: setup
	@scripts/dev.sh

lint:
	cargo fmt --check
	cargo clippy --quiet --all-targets -- -D warnings
	cargo clippy --quiet --lib --target wasm32-unknown-unknown -- -D warnings

unit:
	cargo test --quiet

e2e: worker
	cargo build --quiet --bin nixflare
	.venv/bin/pytest tests/e2e

test: setup
	@$(MAKE) --no-print-directory lint unit e2e

bench: setup worker
	.venv/bin/python benches/run.py $(BENCHES)

# The model-based test of the index and the GC (src/core/index/tests/model.rs), longer.
SOAK_CASES ?= 5000
soak:
	PROPTEST_CASES=$(SOAK_CASES) cargo test --release --lib index::tests::model -- --nocapture

fuzz: setup
	@scripts/fuzz.sh

# `nixflare init` and `nixflare deploy` (src/cli/deploy/): the deployment's settings and
# keys live in ~/.config/nixflare/deployments/WORKER, never in this checkout.
# ARGS: their flags, e.g. make init ARGS="--worker my-cache --access private".
NIXFLARE := target/release/nixflare
init: setup
	cargo build --release --quiet --bin nixflare
	$(NIXFLARE) init --checkout . $(ARGS)

deploy: setup
	cargo build --release --quiet --bin nixflare
	$(NIXFLARE) deploy --checkout . $(ARGS)
