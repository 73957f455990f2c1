#!/usr/bin/env bash
# The whole test command (what CI runs through .ci/run):
#   install test deps -> cargo fmt --check -> clippy -D warnings -> cargo test
#   -> cargo build --release (server, then loadtest) -> end-to-end suite (pytest, as root,
#   network namespaces)
#
# Usage: scripts/test-all.sh [--e2e-only] [--no-e2e] [-- PYTEST ARGS...]
#   --e2e-only   skip fmt/clippy/cargo test (still builds the release binaries)
#   --no-e2e     stop after the release build
#   -- ARGS      passed to pytest, e.g.  -- -k leave   or   -- tests/e2e/test_auth.py
# Environment:
#   SB_TEST_BUDGET   seconds for the whole run (default 2580 = 43 min); each stage is also
#                    capped on its own and gets at most what is left of the budget
#   SB_E2E_TMP       pytest --basetemp, where per-test logs go (default target/e2e-tmp)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

E2E_ONLY=0
NO_E2E=0
PYTEST_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --e2e-only) E2E_ONLY=1 ;;
    --no-e2e) NO_E2E=1 ;;
    --) shift; PYTEST_ARGS=("$@"); break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

BUDGET=${SB_TEST_BUDGET:-2580}
E2E_TMP=${SB_E2E_TMP:-$ROOT/target/e2e-tmp}
T0=$SECONDS
SUMMARY=()

if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0   # clean builds: incremental only costs time
fi
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

# stage NAME CAP_SECONDS CMD...: run CMD bounded by min(CAP, what is left of the budget)
stage() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET - (SECONDS - T0) ))
  local t=$(( cap < left ? cap : left ))
  if [ "$t" -le 0 ]; then
    echo "=== [$name] no time left in the ${BUDGET}s budget ===" >&2
    exit 124
  fi
  echo
  echo "=== [$name] start (timeout ${t}s, $(( SECONDS - T0 ))s elapsed) ==="
  echo "+ $*"
  local s=$SECONDS rc=0
  timeout -k 30 "$t" "$@" || rc=$?
  local d=$(( SECONDS - s ))
  if [ "$rc" -ne 0 ]; then
    [ "$rc" -eq 124 ] && echo "=== [$name] TIMED OUT after ${t}s ===" >&2
    echo "=== [$name] FAILED (exit $rc) after ${d}s ===" >&2
    SUMMARY+=("$name: FAILED (${d}s)")
    printf '  %s\n' "${SUMMARY[@]}" >&2
    exit "$rc"
  fi
  echo "=== [$name] ok in ${d}s ==="
  SUMMARY+=("$name: ok (${d}s)")
}

echo "=== switchboard test-all: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(uname -srm), $(nproc) cores ==="
echo "    $(cargo --version), $(rustc --version)"
echo "    $(python3 --version 2>&1), uid $(id -u), budget ${BUDGET}s"

# --- 1. test dependencies (outside the clone; idempotent) --------------------------------
VENV_FILE=$(mktemp)
trap 'rm -f "$VENV_FILE"' EXIT
stage install 900 bash -c "scripts/install-test-deps.sh > '$VENV_FILE'"
VENV=$(tail -n1 "$VENV_FILE")
[ -x "$VENV/bin/python" ] || { echo "install step gave no venv ($VENV)" >&2; exit 1; }
echo "venv: $VENV"

# --- 2-5. Rust --------------------------------------------------------------------------
if [ "$E2E_ONLY" -eq 0 ]; then
  stage fmt 300 cargo fmt --all -- --check
  stage clippy 1200 cargo clippy --workspace --all-targets --locked -- -D warnings
  stage cargo-test 1200 cargo test --workspace --locked
fi
# One package per build, the server as `cargo run --release` (README) builds it: cargo
# unifies dependency features over the packages of one invocation, and the loadtest's
# (webrtc's ring, aws-lc-rs's defaults, ...) would change the server's dependencies; the
# README's command would then rebuild them, into another binary than the one tested here.
stage build-release 1200 cargo build --release --locked -p switchboard
stage build-loadtest 1200 cargo build --release --locked -p switchboard-loadtest

# --- 6. end-to-end ----------------------------------------------------------------------
if [ "$NO_E2E" -eq 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "the end-to-end suite needs root (network namespaces); run as root or pass --no-e2e" >&2
    exit 1
  fi
  export SB_E2E_SERVER_BIN=${SB_E2E_SERVER_BIN:-$ROOT/target/release/switchboard}
  DEFAULT_RUN=0
  [ ${#PYTEST_ARGS[@]} -eq 0 ] && DEFAULT_RUN=1
  [ $DEFAULT_RUN -eq 1 ] && PYTEST_ARGS=(tests/e2e)
  echo "per-test logs (server-*.log, peer-*.log, peer-*.json): $E2E_TMP/<test name>/"
  # The suite runs with the default media threads (one per core); one browser call then runs
  # with exactly 1 and with 2 media threads, whatever the machine (livekit-client 2.22, what
  # Element Call bundles, against the Python SDK).
  stage e2e 1500 "$VENV/bin/python" -m pytest -v --durations=10 --basetemp "$E2E_TMP" \
    "${PYTEST_ARGS[@]}"
  if [ $DEFAULT_RUN -eq 1 ]; then
    for n in 1 2; do
      stage "e2e-media-threads-$n" 300 env SB_E2E_MEDIA_THREADS=$n "$VENV/bin/python" -m pytest \
        -v --basetemp "$E2E_TMP-threads-$n" \
        "tests/e2e/test_browser.py::test_browser_and_python_sdk_see_and_hear_each_other[2.22]"
    done
  fi
fi

echo
echo "=== all stages passed in $(( SECONDS - T0 ))s ==="
printf '  %s\n' "${SUMMARY[@]}"
