#!/usr/bin/env bash
# Install what the end-to-end tests need, idempotently, OUTSIDE the clone (but for the
# browser tests' node_modules):
#   - Debian packages: iproute2 (ip netns / veth), only if `ip` is missing; nftables (random
#     loss for the bandwidth tests), only if `nft` is missing; chromium, only if
#     /usr/bin/chromium is missing;
#   - a Python venv at ${SB_TEST_CACHE:-~/.cache/switchboard}/venv-<hash>, where <hash>
#     covers tests/e2e/requirements.txt (hash-pinned lock) and the interpreter version, so a
#     changed lock builds a new venv and an unchanged one is reused as is;
#   - tests/browser/node_modules from tests/browser/package-lock.json (`npm ci`), when the lock
#     is newer than the last install.
# Prints the venv path as the last line of stdout (everything else goes to stderr).
set -euo pipefail
cd "$(dirname "$0")/.."
REQ=tests/e2e/requirements.txt

log() { printf '[install] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------
if ! command -v ip >/dev/null 2>&1; then
  log "installing iproute2 (apt)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 600 apt-get install -y -qq --no-install-recommends iproute2 >&2
fi
# nftables: random loss on a subscriber's link (tests/e2e/test_bandwidth.py; no netem here)
if ! command -v nft >/dev/null 2>&1 && [ ! -x /usr/sbin/nft ]; then
  log "installing nftables (apt)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 600 apt-get install -y -qq --no-install-recommends nftables >&2
fi

# --- Python interpreter ----------------------------------------------------------------
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$(command -v "$cand"); break; fi
  done
fi
[ -n "$PY" ] || { log "no python3 found"; exit 1; }
if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
  # Debian's own python3 needs python3-venv for `python3 -m venv`.
  log "installing python3-venv (apt) for $PY"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get update -qq >&2
  timeout 600 apt-get install -y -qq --no-install-recommends python3-venv >&2
fi
pyver=$("$PY" -c 'import platform,sys;print(platform.python_implementation(), platform.python_version(), sys.platform, platform.machine())')

# --- venv keyed by the lock file -------------------------------------------------------
CACHE=${SB_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/switchboard}
key=$( { cat "$REQ"; echo "$pyver"; } | sha256sum | cut -c1-16)
VENV="$CACHE/venv-$key"
mkdir -p "$CACHE"

# One installer at a time per cache (two checkouts may share it).
exec 9>"$CACHE/.install.lock"
timeout 900 flock 9 || { log "could not lock $CACHE/.install.lock"; exit 1; }

if [ -f "$VENV/.complete" ] && "$VENV/bin/python" -c 'import livekit.rtc, livekit.api, numpy, pytest, synapse' >/dev/null 2>&1; then
  log "venv up to date: $VENV"
else
  log "building venv $VENV ($pyver)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  # --require-hashes: every package, transitive ones included, must match the lock;
  # --no-deps: the lock is complete, so nothing unpinned can sneak in;
  # --only-binary: never build from source (the lock only has wheel hashes).
  timeout 900 "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-input --require-hashes --no-deps --only-binary=:all: -r "$REQ" >&2
  "$VENV/bin/python" -m pip check >&2
  "$VENV/bin/python" -c 'import livekit.rtc, livekit.api, numpy, pytest, synapse' >&2
  cp "$REQ" "$VENV/requirements.lock.txt"
  touch "$VENV/.complete"
  log "venv ready: $VENV"
fi
touch "$VENV/.last-used"
# Drop venvs of older lock files that nobody used for 3 days (another checkout may still
# be on an older lock, so never remove a recently used one).
for old in "$CACHE"/venv-*; do
  [ "$old" = "$VENV" ] && continue
  [ -d "$old" ] || continue
  if [ -z "$(find "$old/.last-used" -mtime -3 2>/dev/null)" ]; then
    log "removing stale venv $old"
    rm -rf "$old"
  fi
done

# --- browser tests (tests/browser/, see tests/README.md) --------------------------------
# Debian's chromium, driven by playwright-core (which never downloads a browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # a fresh machine may have no package lists yet, or stale ones
  if ! apt-cache show chromium >/dev/null 2>&1 || ! timeout 900 apt-get install -y -qq --no-install-recommends chromium >&2; then
    timeout 600 apt-get update -qq >&2
    timeout 900 apt-get install -y -qq --no-install-recommends chromium >&2
  fi
fi
# livekit-client (2.22.4 and 2.23.0) and playwright-core, exactly as package-lock.json says;
# reinstalled only when the lock file is newer than the stamp of the last install.
BROWSER=tests/browser
STAMP=$BROWSER/node_modules/.sb-npm-ci
command -v npm >/dev/null 2>&1 || { log "npm not found (Node 20 + npm are needed for the browser tests)"; exit 1; }
if [ ! -f "$STAMP" ] || [ "$BROWSER/package-lock.json" -nt "$STAMP" ]; then
  log "installing $BROWSER/node_modules (npm ci)"
  ( cd "$BROWSER" && timeout 600 npm ci --no-audit --no-fund --loglevel=error ) >&2
  touch "$STAMP"
else
  log "$BROWSER/node_modules up to date"
fi

echo "$VENV"
