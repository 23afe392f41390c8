# ironhub — the two commands a user needs: `make run` and `make test`.
# A persistent cargo target dir outside the clone keeps RocksDB from rebuilding every time.
CACHE_ROOT := $(shell [ -w /var/cache ] && echo /var/cache || echo $(HOME)/.cache)
export CARGO_TARGET_DIR ?= $(CACHE_ROOT)/ironhub/target
BIN := $(CARGO_TARGET_DIR)/release
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps build lint fmt bench bench-mqtt chaos chaos-faults chaos-soak clean-data bin-dir

## Install what a fresh machine lacks (clang/libclang for RocksDB's bindings, MQTT test clients:
## mosquitto-clients and paho-mqtt, libfaketime for ironhub-chaos's clock-skew fault).
deps:
	@missing=""; \
	for p in clang libclang-dev mosquitto mosquitto-clients curl faketime fonts-dejavu-core; do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@python3 -c 'import paho.mqtt' 2>/dev/null || { echo "installing: paho-mqtt (python)"; python3 -m pip install -q paho-mqtt 2>/dev/null || python3 -m pip install -q --break-system-packages paho-mqtt; }
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs"; exit 1; }

## Build every binary in release mode.
build: deps
	cargo build --release --workspace

## Start a single-node hub with data in ./data (Ctrl-C stops it).
run: build
	$(BIN)/ironhub serve --data-dir ./data

## The whole test suite (unit, storage suites, in-process cluster, real processes), release mode.
test: deps
	cargo build --release --workspace
	cargo test --release --workspace -- --test-threads=2

## rustfmt and clippy.
lint:
	cargo fmt --all -- --check
	cargo clippy --release --workspace --all-targets -- -D warnings

fmt:
	cargo fmt --all

## Raft commit benchmark (1 and 3 nodes); results go in docs/benchmarks.md.
bench: build
	cargo run --release -p ironhub-raft --example commit_bench -- --nodes 1 --seconds 20
	cargo run --release -p ironhub-raft --example commit_bench -- --nodes 3 --seconds 20

## MQTT: mosquitto vs one and three ironhub nodes with ironhub-bench, every run bounded (~10 min with
## the waits for a quiet machine); results go in docs/benchmarks.md. ROWS="q0 conn" runs some rows.
bench-mqtt: build
	BIN=$(BIN) OUT=./bench-out bench/scripts/mqtt-table.sh $(ROWS)

## Chaos: the short CI scenario (kill -9 the leader twice, pause a node, partition one away under QoS 1
## load; about a minute). `make test` runs it too (chaos/tests/ci_scenario.rs). See docs/chaos.md.
chaos: build
	$(BIN)/ironhub-chaos run --scenario chaos/scenarios/ci.toml --bin $(BIN)/ironhub

## Chaos: disk full, latency and loss, clock skew, snapshot lag (process backend, root; ~5 min).
chaos-faults: build
	$(BIN)/ironhub-chaos run --scenario chaos/scenarios/faults.toml --bin $(BIN)/ironhub

## Chaos soak: an hour of seeded random faults in network namespaces (root). SEED=n replays a run.
chaos-soak: build
	$(BIN)/ironhub-chaos run --scenario chaos/scenarios/soak.toml --backend netns --bin $(BIN)/ironhub $(if $(SEED),--seed $(SEED))

clean-data:
	rm -rf ./data

bin-dir:
	@echo $(BIN)
