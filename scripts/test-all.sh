#!/usr/bin/env bash
# certvault: the single "run all tests" command.
#
# Works on a fresh Debian 12 machine where it runs as root (CI runs it as
# `bash .ci/run` with CI=true and no stdin, from a fresh clone). It installs
# whatever the tests need, then runs, stopping at the first failure:
#
#   1. cargo fmt --check
#   2. cargo clippy (all targets, -D warnings)
#   3. cargo test
#   4. cargo build -p certvault
#   5. the Azure SDK conformance suite (tests/sdk, pytest) against that binary
#   6. api: schemathesis against the committed OpenAPI document (docs/openapi.json)
#      and that binary (tests/api/run_schemathesis.py): no 5xx, no schema violation
#   7. ui: the web console's end-to-end tests (tests/ui: node + playwright-core driving
#      Debian's chromium) against that binary
#
# Usage: scripts/test-all.sh [STAGE...]   (default: all; STAGE is one of
#        fmt clippy test test-pg build sdk sdk-pg api ui; sdk, sdk-pg, api and ui imply
#        build). Extra pytest options go in PYTEST_ADDOPTS, e.g. PYTEST_ADDOPTS="-k merge -x".
#
# Nothing is ever skipped because it is missing: it is installed, or the
# script fails loudly.
#
# Adding a Debian package: one line in APT_PACKAGES below.
# Adding a service the tests need: one `start_service` line in start_services
# (stopped by PID when the script exits).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# ------------------------------------------------------------------ settings
# Debian packages the tests need, one per line: "package" or
# "package:command" (the command is checked as well, so a package that is
# "installed" but whose binary is gone is reinstalled).
APT_PACKAGES=(
  "python3:/usr/bin/python3"
  "python3-venv"
  "python3-pip"
  "openssl:openssl"
  "ca-certificates"
  "curl:curl"
  "pkg-config:pkg-config"
  "gcc:gcc"
  "softhsm2:softhsm2-util"
  # pkcs11-tool: an independent look at the token's key attributes in tests/sdk/test_hsm.py
  "opensc:pkcs11-tool"
  # ACME/DNS-01 tests (crates/certvault-acme, crates/certvault-dns): the tests start these
  # themselves on free loopback ports (crates/certvault-testkit) and fail if they are missing.
  "pebble:pebble"
  "pebble:pebble-challtestsrv"
  "bind9:named"
  "bind9-dnsutils:dig"
  # PostgreSQL 15 backend: the Rust tests start private servers (crates/certvault-testkit),
  # the sdk-pg stage starts one below; all fail (never skip) when it is missing.
  "postgresql:/usr/lib/postgresql/15/bin/initdb"
  "postgresql:/usr/lib/postgresql/15/bin/postgres"
  "postgresql:psql"
  "postgresql:/usr/lib/postgresql/15/bin/pg_dump"
  "postgresql:/usr/lib/postgresql/15/bin/pg_restore"
  # The web console's end-to-end tests (tests/ui) drive Debian's chromium with playwright-core
  # under node.
  "chromium:chromium"
  "nodejs:node"
  # npm: NodeSource's nodejs (on this machine kind) bundles it and conflicts with Debian's npm
  # package, so ensure_ui_deps installs Debian's npm only when the command is missing.
)

# The Python interpreter the venv is made from: Debian's, which the list
# above installs (a pyenv or other python on PATH is deliberately not used).
SYSTEM_PYTHON=/usr/bin/python3
VENV="$ROOT/.venv"
REQUIREMENTS="$ROOT/tests/sdk/requirements.txt"
# schemathesis for the api stage, installed into the same venv.
API_REQUIREMENTS="$ROOT/tests/api/requirements.txt"
VENV_STAMP="$VENV/.certvault-requirements.sha256"
PY="$VENV/bin/python"

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1
export PYTHONDONTWRITEBYTECODE=1
# rustup's cargo lives here; CI's environment may not have it on PATH.
if [[ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

# ------------------------------------------------------------------ output
STAGES_PASSED=0
STAGES_FAILED=0
CURRENT_STAGE=""
SCRIPT_START=$SECONDS

section() {
  printf '\n==================================================================\n'
  printf '== %s\n' "$*"
  printf '==================================================================\n'
}

die() {
  printf '\ntest-all: ERROR: %s\n' "$*" >&2
  exit 1
}

summary() {
  local rc=$?
  set +e
  stop_services
  local elapsed=$((SECONDS - SCRIPT_START))
  printf '\n==================================================================\n'
  if [[ $rc -eq 0 && $STAGES_FAILED -eq 0 ]]; then
    printf 'test-all: OK, all stages passed in %ss\n' "$elapsed"
  else
    if [[ -n "$CURRENT_STAGE" && $STAGES_FAILED -eq 0 ]]; then
      printf 'test-all: FAILED during: %s\n' "$CURRENT_STAGE"
      STAGES_FAILED=1
    fi
    printf 'test-all: FAILED after %ss (exit code %s)\n' "$elapsed" "$rc"
    [[ $rc -eq 0 ]] && rc=1
  fi
  printf 'stages: %d passed, %d failed\n' "$STAGES_PASSED" "$STAGES_FAILED"
  exit "$rc"
}
trap summary EXIT

# run_stage "title" cmd args...: runs one stage, stops the script on failure.
run_stage() {
  local title="$1"
  shift
  section "$title"
  printf '$ %s\n' "$*"
  CURRENT_STAGE="$title"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  if [[ $rc -ne 0 ]]; then
    STAGES_FAILED=$((STAGES_FAILED + 1))
    CURRENT_STAGE=""
    printf '\n-- FAILED: %s (exit code %d, %ss)\n' "$title" "$rc" "$((SECONDS - start))"
    exit "$rc"
  fi
  STAGES_PASSED=$((STAGES_PASSED + 1))
  CURRENT_STAGE=""
  printf -- '-- passed: %s (%ss)\n' "$title" "$((SECONDS - start))"
}

# ------------------------------------------------------------------ packages
APT_UPDATED=0
apt_install() {
  [[ $# -gt 0 ]] || return 0
  command -v apt-get >/dev/null || die "apt-get not found; install by hand: $*"
  [[ $(id -u) -eq 0 ]] || die "not root; cannot install missing packages: $*"
  if [[ $APT_UPDATED -eq 0 ]]; then
    echo "apt-get update"
    apt-get update -q || die "apt-get update failed"
    APT_UPDATED=1
  fi
  echo "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
    || die "apt-get install failed: $*"
}

pkg_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

ensure_packages() {
  local missing=() entry pkg cmd
  for entry in "${APT_PACKAGES[@]}"; do
    pkg="${entry%%:*}"
    cmd=""
    [[ "$entry" == *:* ]] && cmd="${entry#*:}"
    if ! pkg_installed "$pkg"; then
      missing+=("$pkg")
    elif [[ -n "$cmd" ]] && ! command -v "$cmd" >/dev/null; then
      missing+=("$pkg")
    fi
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    echo "all Debian packages present: ${APT_PACKAGES[*]%%:*}"
  else
    apt_install "${missing[@]}"
  fi
  # Verify after installing: fail loudly rather than run with something missing.
  for entry in "${APT_PACKAGES[@]}"; do
    pkg="${entry%%:*}"
    pkg_installed "$pkg" || die "package $pkg is still not installed"
    if [[ "$entry" == *:* ]]; then
      command -v "${entry#*:}" >/dev/null || die "package $pkg installed but ${entry#*:} not found"
    fi
  done
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found (the machine's rustup toolchain is required)"
  cargo fmt --version >/dev/null 2>&1 || die "rustfmt is missing from the Rust toolchain"
  cargo clippy --version >/dev/null 2>&1 || die "clippy is missing from the Rust toolchain"
  cargo --version
  rustc --version
}

# ------------------------------------------------------------------ python venv
requirements_hash() {
  # The interpreter version is part of the stamp: a new python means a new venv.
  { sha256sum "$REQUIREMENTS" "$API_REQUIREMENTS" | cut -d' ' -f1; "$SYSTEM_PYTHON" -c 'import sys; print(sys.version)'; } \
    | sha256sum | cut -d' ' -f1
}

ensure_venv() {
  [[ -f "$REQUIREMENTS" ]] || die "missing $REQUIREMENTS"
  [[ -f "$API_REQUIREMENTS" ]] || die "missing $API_REQUIREMENTS"
  local want
  want="$(requirements_hash)"
  if [[ -x "$PY" && -f "$VENV_STAMP" && "$(cat "$VENV_STAMP")" == "$want" ]]; then
    echo "venv up to date: $VENV"
  else
    echo "(re)creating venv $VENV from $REQUIREMENTS"
    rm -rf "$VENV"
    "$SYSTEM_PYTHON" -m venv "$VENV" || die "python3 -m venv failed"
    "$PY" -m pip install -q -r "$REQUIREMENTS" -r "$API_REQUIREMENTS" \
      || die "pip install -r $REQUIREMENTS -r $API_REQUIREMENTS failed"
    "$PY" -m pip check || die "pip check failed"
    echo "$want" >"$VENV_STAMP"
  fi
  "$PY" -c 'import azure.keyvault.certificates, azure.keyvault.secrets, azure.keyvault.keys, azure.identity, msal, cryptography, requests, pytest, aiosmtpd, schemathesis' \
    || die "venv is broken (imports fail); delete $VENV and rerun"
  "$PY" -m pip freeze | grep -iE '^(azure-|msal|cryptography|pytest|requests|aiosmtpd|schemathesis)' | sed 's/^/  /'
}

# The Azure SDKs (azure-identity, MSAL) read the managed-identity challenge key file only from
# this directory on Linux; certvault's identity endpoint writes its key files there
# (tests/sdk/test_identity.py).
ARC_KEY_DIR=/var/opt/azcmagent/tokens
ensure_arc_key_dir() {
  if [[ ! -d "$ARC_KEY_DIR" ]]; then
    [[ $(id -u) -eq 0 ]] || die "$ARC_KEY_DIR is missing and this is not root: create it (mode 0700, owned by the user running the tests)"
    mkdir -p "$ARC_KEY_DIR" || die "cannot create $ARC_KEY_DIR"
    chmod 0700 "$ARC_KEY_DIR"
  fi
  [[ -w "$ARC_KEY_DIR" ]] || die "$ARC_KEY_DIR is not writable by $(id -un)"
  echo "managed-identity key directory: $ARC_KEY_DIR"
}

# ------------------------------------------------------------------ services
# PIDs of background services this script started; stopped on exit.
SERVICE_PIDS=()

# start_service NAME CMD...: start CMD in the background and remember its PID.
start_service() {
  local name="$1"
  shift
  echo "starting $name: $*"
  "$@" &
  SERVICE_PIDS+=("$!")
}

start_services() {
  # None: the SDK suite starts certvault itself (tests/sdk/conftest.py), and the ACME/DNS
  # tests start pebble, pebble-challtestsrv and named per test (crates/certvault-testkit).
  :
}

# A private PostgreSQL for the sdk-pg stage: initdb into a temporary directory (as the
# `postgres` user when root: PostgreSQL refuses to run as root), a free loopback port, durability
# off (test data only), trust authentication for the role `postgres`. Exports
# CERTVAULT_TEST_PG_PORT; stopped with the other services on exit.
PG_BIN=/usr/lib/postgresql/15/bin
PG_TMP=""
start_test_postgres() {
  local as=() port i
  PG_TMP="$(mktemp -d /tmp/certvault-sdk-pg-XXXXXX)"
  if [[ $(id -u) -eq 0 ]]; then
    chown postgres:postgres "$PG_TMP"
    as=(setpriv --reuid=postgres --regid=postgres --init-groups)
  fi
  "${as[@]}" "$PG_BIN/initdb" -D "$PG_TMP/data" -U postgres --auth=trust --no-locale -E UTF8 \
    --no-sync >"$PG_TMP/initdb.log" 2>&1 || { cat "$PG_TMP/initdb.log"; die "initdb failed"; }
  port="$("$SYSTEM_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  start_service postgres "${as[@]}" "$PG_BIN/postgres" -D "$PG_TMP/data" -p "$port" \
    -h 127.0.0.1 -k "$PG_TMP" -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c max_connections=300
  for i in $(seq 1 100); do
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break
    sleep 0.2
  done
  psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c 'SELECT 1' >/dev/null \
    || die "the private PostgreSQL did not start on port $port"
  export CERTVAULT_TEST_PG_PORT="$port" CERTVAULT_TEST_PG_DATA="$PG_TMP/data"
  echo "PostgreSQL for the SDK suite on 127.0.0.1:$port ($PG_TMP)"
}

stop_services() {
  local pid
  for pid in "${SERVICE_PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${SERVICE_PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  SERVICE_PIDS=()
  if [[ -n "$PG_TMP" ]]; then
    rm -rf "$PG_TMP"
    PG_TMP=""
  fi
}

# ------------------------------------------------------------------ stages
UI_DIR="$ROOT/tests/ui"
ensure_ui_deps() {
  [[ -f "$UI_DIR/package-lock.json" ]] || die "missing $UI_DIR/package-lock.json"
  if ! command -v npm >/dev/null; then
    apt_install npm
    command -v npm >/dev/null || die "npm is still missing after installing Debian's npm"
  fi
  # npm ci: exactly the locked playwright-core (no browser download: it drives /usr/bin/chromium).
  (cd "$UI_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund) || die "npm ci in tests/ui failed"
  node --version
  /usr/bin/chromium --version || die "/usr/bin/chromium does not start"
}

run_ui_suite() {
  export CERTVAULT_BIN="$ROOT/target/debug/certvault"
  [[ -x "$CERTVAULT_BIN" ]] || { echo "CERTVAULT_BIN=$CERTVAULT_BIN is missing"; return 1; }
  export UI_SCREENSHOTS="${UI_SCREENSHOTS:-$ROOT/target/ui-screenshots}"
  rm -rf "$UI_SCREENSHOTS"
  echo "console screenshots: $UI_SCREENSHOTS"
  (cd "$UI_DIR" && node --test --test-concurrency=1 .)
  local rc=$?
  echo "console screenshots: $UI_SCREENSHOTS"
  return "$rc"
}

run_sdk_suite() {
  local rc=0
  export CERTVAULT_BIN="$ROOT/target/debug/certvault"
  [[ -x "$CERTVAULT_BIN" ]] || { echo "CERTVAULT_BIN=$CERTVAULT_BIN is missing"; return 1; }
  "$PY" -m pytest tests/sdk -v -ra || rc=$?
  if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests (exit code 5): counted as a failure"
  fi
  return "$rc"
}

# The same suite with every server's store in the private PostgreSQL (tests/sdk/support.py
# reads these variables).
run_sdk_suite_pg() {
  local CERTVAULT_TEST_DATABASE=postgres
  export CERTVAULT_TEST_DATABASE
  run_sdk_suite
}

setup_stage() {
  CURRENT_STAGE="$1"
  section "$1"
  shift
  "$@"
  CURRENT_STAGE=""
}
run_api_suite() {
  export CERTVAULT_BIN="$ROOT/target/debug/certvault"
  [[ -x "$CERTVAULT_BIN" ]] || { echo "CERTVAULT_BIN=$CERTVAULT_BIN is missing"; return 1; }
  "$PY" tests/api/run_schemathesis.py
}

setup_stage "setup: Debian packages" ensure_packages
setup_stage "setup: Rust toolchain" ensure_rust
setup_stage "setup: Python venv (.venv)" ensure_venv
setup_stage "setup: services" start_services

# Stages to run: all by default; a developer may name some (sdk and api imply build).
STAGES=("$@")
[[ ${#STAGES[@]} -gt 0 ]] || STAGES=(fmt clippy test test-pg build sdk sdk-pg api ui)
wanted() {
  local s
  for s in "${STAGES[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  return 1
}
for s in "${STAGES[@]}"; do
  case "$s" in fmt | clippy | test | test-pg | build | sdk | sdk-pg | api | ui) ;; *) die "unknown stage '$s' (stages: fmt clippy test test-pg build sdk sdk-pg api ui)" ;; esac
done

if wanted fmt; then run_stage "cargo fmt" cargo fmt --all -- --check; fi
if wanted clippy; then run_stage "cargo clippy" cargo clippy --workspace --all-targets --locked -- -D warnings; fi
# Rust tests that cross-check with Python's cryptography use the venv's interpreter.
export CERTVAULT_TEST_PYTHON="$PY"
if wanted test; then run_stage "cargo test" cargo test --workspace --locked; fi
# The store tests run on both backends in `test`; this reruns the server's integration tests
# with every server on PostgreSQL (each test process starts its own private server).
if wanted test-pg; then
  run_stage "cargo test on PostgreSQL (certvault-server)" \
    env CERTVAULT_TEST_DATABASE=postgres cargo test --locked -p certvault-server
  # Replicas: three `certvault serve` on one private PostgreSQL (SIGKILL, database restart).
  run_stage "replicas on PostgreSQL (crates/certvault/tests/replicas.rs)" \
    cargo test --locked -p certvault --test replicas
  # The real binary's operations tests (shutdown, metrics, JSON logs) with the store in
  # PostgreSQL; their backup tests pick their backend themselves.
  run_stage "cargo test on PostgreSQL (certvault ops_binary)" \
    env CERTVAULT_TEST_DATABASE=postgres cargo test --locked -p certvault --test ops_binary
fi
if wanted build || wanted sdk || wanted sdk-pg || wanted api || wanted ui; then run_stage "cargo build (certvault)" cargo build --locked -p certvault; fi
if wanted sdk || wanted sdk-pg; then
  setup_stage "setup: managed-identity key directory" ensure_arc_key_dir
fi
if wanted sdk; then
  run_stage "SDK conformance suite (tests/sdk)" run_sdk_suite
fi
if wanted sdk-pg; then
  setup_stage "setup: PostgreSQL for the SDK suite" start_test_postgres
  run_stage "SDK conformance suite on PostgreSQL (tests/sdk)" \
    run_sdk_suite_pg
fi
if wanted api; then run_stage "API conformance: schemathesis (tests/api, docs/openapi.json)" run_api_suite; fi
if wanted ui; then
  setup_stage "setup: console test dependencies (tests/ui)" ensure_ui_deps
  run_stage "web console end-to-end tests (tests/ui, chromium)" run_ui_suite
fi
