#!/usr/bin/env bash
# Builds the release server and the load generator, then runs the benchmarks.
#
#   bench/run.sh                      # all three targets with the default settings
#   bench/run.sh get-secret [args]    # one benchmark; args go to certvault-bench
#   bench/run.sh create --kty ec
#   bench/run.sh scale --shape certs
#   DURATION=10 WARMUP=3 bench/run.sh  # seconds per figure / warm-up
#
# The benchmarks start target/release/certvault themselves on a free 127.0.0.1 port with a
# temporary data directory and stop it afterwards. Nothing secret is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p certvault -p certvault-bench
BENCH=target/release/certvault-bench
COMMON=(--duration "${DURATION:-10}" --warmup "${WARMUP:-3}")
if [ $# -gt 0 ]; then
    cmd=$1
    shift
    exec "$BENCH" "$cmd" "${COMMON[@]}" "$@"
fi
status=0
"$BENCH" get-secret "${COMMON[@]}" --kty rsa || status=1
"$BENCH" get-secret "${COMMON[@]}" --kty ec || status=1
"$BENCH" create "${COMMON[@]}" --kty ec rsa || status=1
"$BENCH" scale "${COMMON[@]}" --shape versions || status=1
"$BENCH" scale "${COMMON[@]}" --shape certs || status=1
exit $status
