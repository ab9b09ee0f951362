# shoal — build, run and test from a fresh clone.
#
#   make run    build everything, then serve the bundled echo plugin on 127.0.0.1:8080
#               (make run PLUGIN=chat LISTEN=127.0.0.1:7000 serves target/plugins/chat.wasm)
#   make test   build everything, lint, and run every test
#
# Plugins are built for wasm32-wasip2 (or wasm32-unknown-unknown, where they use no WASI) by
# scripts/build-plugins.sh, which installs the targets through rustup (or falls back to
# Debian's toolchain) and leaves each plugin at
# target/plugins/<name>.wasm; the C plugins (plugins/c) by scripts/build-c-plugins.sh, with
# Debian's clang, as target/plugins/<name>-c.wasm; the JavaScript plugins (plugins/js) by
# scripts/build-js-plugins.sh, with componentize-js from npm, as target/plugins/<name>-js.wasm;
# the Python plugins (plugins/python) by scripts/build-python-plugins.sh, with componentize-py
# from PyPI, as target/plugins/<name>-py.wasm.

CARGO ?= cargo
LISTEN ?= 127.0.0.1:8080
# A plugin to serve instead of the bundled echo, e.g. PLUGIN=chat (target/plugins/chat.wasm).
PLUGIN ?=

.PHONY: all deps plugins build run test lint clean bench profile

all: build

# System tools the tests use (nc); installed through apt when missing.
deps:
	@scripts/install-deps.sh

plugins:
	@scripts/build-plugins.sh
	@scripts/build-c-plugins.sh
	@scripts/build-js-plugins.sh
	@scripts/build-python-plugins.sh

build: plugins
	$(CARGO) build --workspace --all-targets

# The binary `build` made: `cargo run -p shoal-host` would resolve features for that package
# alone and rebuild half of wasmtime.
run: build
	target/debug/shoal serve --listen $(LISTEN) $(if $(PLUGIN),target/plugins/$(PLUGIN).wasm)

lint: plugins
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	scripts/build-plugins.sh --clippy
	python3 scripts/check-module-cycles.py host/src
	scripts/vendor-wasmtime.sh --check
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

test: deps build lint
	$(CARGO) test --workspace

clean:
	$(CARGO) clean
	cd plugins && $(CARGO) clean

# Benchmarks (BENCHMARKS.md): release build, then every scenario against the Wasm echo, the
# native echo and a raw tokio echo in alternating rounds. Takes about 5 minutes.
bench: plugins
	$(CARGO) build --release -p shoal-host -p shoal-bench
	target/release/shoal-bench $(BENCH_ARGS)

# Profiles (BENCHMARKS.md, issue 16): the Wasm and native echo under the paced loads, recorded
# by `perf record -e cpu-clock` with DWARF stacks, drawn as flame graphs in bench/profiles/
# and summed by area and function. Needs perf (scripts/install-deps.sh installs it). ~1 minute.
profile: plugins
	@scripts/install-deps.sh --perf
	$(CARGO) build --release -p shoal-host -p shoal-bench
	target/release/shoal-bench --scenarios profile $(BENCH_ARGS)
