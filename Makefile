# quantd — the two commands for a fresh machine are `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
PY := .venv/bin/python
TICKS ?= ../shared/data/ticks

.PHONY: setup train-setup train study run audit test test-rust test-python test-training bench bench-batches bench-peers bench-cpu bench-quick bench-stream bench-swap bench-routes bench-control test-deploy default-model fuzz soak lint clean

## setup: ONNX Runtime library from PyPI, Python venv, release build (idempotent)
setup:
	./scripts/setup.sh

## run: set up, then serve the committed default model on 127.0.0.1:50051 (metrics :9100), journal in
## journal/, symbol state rebuilt from the journal's last 15 minutes at start-up (engine.warm_start)
run: setup
	QUANTD_ENGINE__WARM_START=$${QUANTD_ENGINE__WARM_START:-journal} ./target/release/quantd serve --models models --journal journal

## audit: prove every signal in journal/ by re-running it (quantd audit; JOURNAL=dir for another)
audit: setup
	./target/release/quantd audit --journal $${JOURNAL:-journal} --models models

## train-setup: training/.venv with PyTorch, torchao, ONNX, ONNX Runtime (idempotent; ~5 GB)
train-setup:
	./scripts/train-setup.sh

## train: the whole training pipeline on the shared data -> models/ (every architecture and
## quantization method, reduced-range int8 weights against full range on the MLP,
## the size sweep, the bar-replay comparison, REPORT.md); ~12 min on 2 cores
train: setup train-setup
	training/.venv/bin/python training/train.py --quantd target/release/quantd --shared ../shared/data \
	  --out models --sweep 64,128,256,512 --bars --range-study --json training/figures.json

## study: every committed variant at a common validation turnover, the MLP trained on the MSE against
## a trading utility (FP32 and QAT), bootstrap intervals; into models/quantd-mlp/2/REPORT.md (~10 min)
study: setup train-setup
	training/.venv/bin/python training/study.py --quantd target/release/quantd --shared ../shared/data \
	  --models models --json training/study.json

## test: set up, then every test (Rust unit + integration, Python grpcio interop, training smoke)
test: setup train-setup test-rust test-python test-training

test-rust:
	$(CARGO) test --locked --workspace --all-targets

test-python:
	$(PY) -m pytest -q tests/python

test-training:
	training/.venv/bin/python -m pytest -q training/tests

## test-deploy: the container image built (podman, local Debian base, no registry), run, streamed into,
## scraped, hot-swapped and stopped with SIGTERM; the k8s pod and the compose stack (quantd + Prometheus)
## through `podman kube play` (~2 min; skips without podman, fails then under QUANTD_DEPLOY_REQUIRE=1)
test-deploy: setup
	./scripts/deploy-setup.sh
	$(PY) scripts/test-deploy.py

## bench: criterion hot paths, then quantd, the echo floor and the Python peer at 1k/10k/50k ticks/s
## (3 runs each) and at their highest sustained rate, then the batch/transport section (bench-batches)
## and the off-the-shelf peer (bench-peers); rewrites BENCHMARKS.md's three suite sections (~40 min)
bench: setup
	./scripts/peer-setup.sh
	$(PY) scripts/bench.py

## bench-peers: Seldon MLServer serving the default model over the Open Inference Protocol, beside
## quantd's ModelInfer, Predict and stream, at 1k/10k ticks/s and the highest sustained rate (~10 min)
bench-peers: setup
	./scripts/peer-setup.sh
	$(PY) scripts/bench.py --only peers

## bench-batches: quantd and the echo floor over TCP and a Unix socket, 1/16/64 ticks per message, at
## fixed rates and at their highest sustained rate (the suite's batch section alone; ~17 min)
bench-batches: setup
	$(PY) scripts/bench.py --only batches

## bench-cpu: quantd's CPU per tick by thread (/proc/<pid>/task/*/stat) at RATE (default 10k) with
## BATCH ticks per message (default 1); PERF=docs/bench/x.svg adds a perf flamegraph (needs inferno)
bench-cpu: setup
	$(PY) scripts/cpu-per-tick.py --rate $${RATE:-10000} --batch $${BATCH:-1} $${PERF:+--perf $$PERF}

## bench-quick: the same suite, one short run each, no criterion (a smoke test, ~2 min)
bench-quick: setup
	$(PY) scripts/bench.py --quick

## bench-stream: one quantd at RATE ticks/s (default 10k) with the per-stage split
bench-stream: setup
	./scripts/stream-bench.sh $(RATE)

## bench-swap: 50k ticks/s with a model hot swap every 3 s; latency around swaps vs steady
bench-swap: setup
	./scripts/swap-bench.sh

## bench-routes: four models routed at once at 10k ticks/s over 4 streams, each model alone, and one
## of them swapped every 3 s, with the registry thread at nice 10 and at 0 (issue 15's goals; ~10 min)
bench-routes: setup
	$(PY) scripts/routes-bench.py --rate $${RATE:-10000} --duration $${SECS:-20} --repeats $${REPEATS:-3}

## bench-control: kill switch, /metrics scrape and SIGTERM drain under RATE ticks/s (default 20k; ~2 min)
bench-control: setup
	$(PY) scripts/control-bench.py --rate $${RATE:-20000} --secs 15

## fuzz: the property-based fuzzers of tests/fuzz.rs with many more cases (100k cases each, about a minute after the build)
fuzz: setup
	PROPTEST_CASES=$${PROPTEST_CASES:-100000} $(CARGO) test --locked --release --test fuzz

## soak: 10 minutes of recorded + synthetic (10k symbols) ticks, reconnecting clients, a model swap every 30 s
soak: setup
	QUANTD_SOAK_SECS=$${QUANTD_SOAK_SECS:-600} QUANTD_SOAK_RATE=$${QUANTD_SOAK_RATE:-10000} QUANTD_SOAK_SWAP_SECS=30 \
	  $(CARGO) test --locked --release --test soak -- --nocapture

## default-model: rebuild models/quantd-mlp/1 from the shared tick data
default-model: setup
	$(PY) training/make_default_model.py --quantd target/release/quantd --data $(TICKS) --out models
	$(PY) training/add_verify_sets.py --quantd target/release/quantd --models models

## lint: rustfmt, clippy (warnings are errors) and rustdoc (a broken intra-doc link or bad doc HTML is
## an error; private items are documented, so links to them are fine). CI runs it after the tests.
lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings -A rustdoc::private_intra_doc_links" \
	  $(CARGO) doc --locked --no-deps --workspace --document-private-items

clean:
	$(CARGO) clean
