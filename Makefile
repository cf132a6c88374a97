# One task runner; CI (.ci/run) calls `make test`.
CARGO ?= cargo
PY := .venv/bin/python

.PHONY: demo test lint unit e2e packaging bench build venv js fmt clean generate generate-check

## demo: run the whole flow locally (fake STS + fake Bedrock, no AWS account needed)
demo: build venv
	$(PY) scripts/demo.py

## test: everything CI runs: format, lints, generated files, Rust tests, end-to-end tests with real SDKs, packaging
test: lint generate-check unit e2e packaging

## generate: rewrite the files generated from the code (docs/configuration.md)
generate:
	UPDATE_GENERATED=1 $(CARGO) test --locked --test generated

## generate-check: fail when a generated file is stale
generate-check:
	$(CARGO) test --locked --test generated

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --locked

build:
	$(CARGO) build --locked

venv:
	./scripts/venv.sh

## js: the AWS SDK for JavaScript clients some end-to-end tests drive
js:
	./scripts/node-deps.sh

e2e: build venv js
	$(PY) -m pytest -q -p no:cacheprovider --timeout 300 tests/fakes tests/e2e

## packaging: render and validate the Helm chart, deploy/ staleness, alert rules, Dockerfile lint
packaging: build venv
	./packaging/test.sh

## bench: sidecar vs direct under load (wrk, nginx TLS mock): bench/results/latest.md
bench:
	python3 bench/run.py

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf .venv tests/e2e/js/node_modules
