# Moniepoint Storage Engine — developer entry points. `make help` lists them.
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help run-leader test lint bench bench-engine bench-index bench-http soak fmt clean-bench

PORT ?= 8080
DATA ?= ./data

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

run-leader: ## Run the server: a standalone leader on $(PORT) with data in $(DATA) (no other configuration)
	$(CARGO) run --release -p kv-server -- --port $(PORT) --data-path $(DATA)

test: ## Run every test of the workspace (unit, property, golden, recovery, crash loops, HTTP, processes)
	$(CARGO) build -p kv-server -p kvctl
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint: ## rustfmt, clippy (warnings are errors) and rustdoc (warnings are errors)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

fmt: ## Format the code
	$(CARGO) fmt --all

bench: bench-engine bench-index bench-http ## All benchmarks (results go in docs/benchmarks.md)

bench-engine: ## Engine throughput, latency, open time (BENCH_INDEX, BENCH_KEYS, BENCH_SECS, BENCH_ONLY)
	$(CARGO) bench -p kv-infra-fs --bench engine

bench-index: ## Keydir memory per key and read latency under writes, at 1 M and 10 M keys
	$(CARGO) bench -p kv-infra-fs --bench index

bench-http: ## HTTP load with wrk against kv-server and a bare hyper ceiling server (needs wrk: apt-get install wrk)
	bench/http/run.sh

soak: ## Long reliability runs: 200 SIGKILL cycles, 1000 power-loss histories (release build)
	$(CARGO) build --release -p kv-server
	CRASH_CYCLES=200 $(CARGO) test --release -p integration-tests --test crash_recovery -- --nocapture
	POWER_LOSS_HISTORIES=1000 $(CARGO) test --release -p kv-infra-fs --test power_loss -- --nocapture
	PROPTEST_CASES=2000 $(CARGO) test --release -p kv-infra-fs --test model

clean-bench: ## Remove benchmark data
	rm -rf target/bench-data
