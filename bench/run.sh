#!/usr/bin/env bash
# Builds the release server and the load generator, then runs the benchmarks.
#
#   bench/run.sh                      # all three targets with the default settings
#   bench/run.sh get-secret [args]    # one benchmark; args go to certvault-bench
#                                     # (--wrk adds a wrk second opinion: apt-get install wrk)
#   bench/run.sh create --kty ec
#   bench/run.sh scale --shape certs
#   bench/run.sh scheduler            # lifecycle: one scheduler pass, 1,000,000 certificates
#   bench/run.sh renewals             # lifecycle: 10,000 due EC P-256 renewals (test clock)
#   bench/run.sh webhooks             # lifecycle: signed webhook deliveries to a local receiver
#   bench/run.sh pg                   # PostgreSQL issue: GET secret and create on SQLite and
#                                     # PostgreSQL (private server) in one run, per-request costs
#   bench/run.sh acme [--certs 100 --parallel 10]
#                                     # ACME: certificates through DNS-01 from one pebble,
#                                     # certvault vs lego (Debian `lego`, installed if missing)
#   DURATION=10 WARMUP=3 bench/run.sh  # seconds per figure / warm-up
#
# The benchmarks start the release server themselves on a free 127.0.0.1 port with a
# temporary data directory and stop it afterwards. Nothing secret is printed.
#
# The two binaries are copied to a private directory first: the target directory is shared
# with other builds, and a rebuild in the middle of a run would otherwise swap the server
# under the benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p certvault -p certvault-bench
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/certvault-bench-bin.XXXXXX")
trap 'rm -rf "$BIN_DIR"' EXIT
cp "$TARGET_DIR/release/certvault" "$TARGET_DIR/release/certvault-bench" "$BIN_DIR/"
BENCH="$BIN_DIR/certvault-bench"
COMMON=(--server-bin "$BIN_DIR/certvault" --duration "${DURATION:-10}" --warmup "${WARMUP:-3}")
echo "certvault-bench: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)'), $(date -u '+%Y-%m-%d %H:%M UTC')"
if [ "${1:-}" = acme ]; then
    shift
    # The ACME benchmark's peers: pebble, BIND 9 (+ dnsutils) and lego, from Debian; the
    # SDK suite's virtualenv (scripts/test-all.sh sdk makes it) for its Python helpers.
    missing=()
    for pc in pebble:pebble bind9:named bind9-dnsutils:dig lego:lego; do
        command -v "${pc#*:}" >/dev/null || [ -x "/usr/sbin/${pc#*:}" ] || missing+=("${pc%%:*}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "apt-get install ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    PY=.venv/bin/python
    [ -x "$PY" ] || { echo "no .venv: run 'bash scripts/test-all.sh sdk' first" >&2; exit 1; }
    status=0
    "$PY" bench/acme.py --server-bin "$BIN_DIR/certvault" "$@" || status=$?
    exit $status
fi
if [ $# -gt 0 ]; then
    cmd=$1
    shift
    status=0
    "$BENCH" "$cmd" "${COMMON[@]}" "$@" || status=$?
    exit $status
fi
status=0
"$BENCH" get-secret "${COMMON[@]}" --kty rsa --wrk || status=1
"$BENCH" get-secret "${COMMON[@]}" --kty ec --wrk || status=1
"$BENCH" create "${COMMON[@]}" --kty ec rsa || status=1
"$BENCH" scale "${COMMON[@]}" --shape versions || status=1
"$BENCH" scale "${COMMON[@]}" --shape certs || status=1
exit $status
