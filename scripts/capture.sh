#!/usr/bin/env bash
# Capture training data: start the release server with its request log in a fresh folder, drive
# it with k6 (benches/k6/capture.js: the shop mix plus stress-test bursts), keep the logs.
#
#   scripts/capture.sh        (or: make capture)
#
# Environment:
#   CAPTURE_DIR   where the logs go (default data/logs/capture-<UTC time>); must not exist yet
#   DURATION      k6 run time (default 120s); VUS (default 10), THINK_MS (default 60) and the
#                 burst knobs of capture.js pass through
#   PORT, PRODUCTS, DATABASE_URL, ADMIN_TOKEN, CARGO_TARGET_DIR: as for scripts/loadtest.sh
#
# Afterwards: trainer report --logs "$CAPTURE_DIR"; make train LOGS="$CAPTURE_DIR".
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

CAPTURE_DIR=${CAPTURE_DIR:-data/logs/capture-$(date -u +%Y%m%d-%H%M%S)}
[[ ! -e $CAPTURE_DIR ]] || { echo "capture: $CAPTURE_DIR already exists" >&2; exit 2; }
mkdir -p "$CAPTURE_DIR"
CAPTURE_DIR=$(cd "$CAPTURE_DIR" && pwd -P)

# The server reads its log folder from the config file; everything else stays default.
config=$(mktemp --suffix=.toml)
trap 'rm -f "$config"' EXIT
printf '[telemetry]\nlog_dir = "%s"\n' "$CAPTURE_DIR" >"$config"

export VUS=${VUS:-10} THINK_MS=${THINK_MS:-60} DURATION=${DURATION:-120s}
SHOP_CONFIG=$config SUMMARY_DIR=${SUMMARY_DIR:-target/k6} scripts/loadtest.sh capture.js
printf 'capture: logs in %s\n' "$CAPTURE_DIR"
ls -l "$CAPTURE_DIR"
