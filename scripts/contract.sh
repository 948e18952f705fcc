#!/usr/bin/env bash
# The contract test: schemathesis (PyPI) reads the server's own OpenAPI description
# (/api/openapi.json) and runs every phase (examples, coverage, fuzzing, stateful) with every
# check against a real server on a real PostgreSQL, three times: anonymous, as a signed-in
# shopper, and with the admin token. It must find nothing: no 5xx, no status the description
# does not list, no schema-valid request refused and no invalid one accepted, no response
# outside its schema. The few rules JSON Schema cannot state are listed, with their reasons, in
# benches/schemathesis/schemathesis.toml.
#
#   scripts/contract.sh           (or: make contract) 100 examples per operation, a new seed
#                                 each run, release build
#   scripts/contract.sh --smoke   30 examples per operation, a fixed seed, the debug build
#                                 (the end of make test)
#
# The server runs on a database of its own (shop_contract, created afresh on the cluster of
# DATABASE_URL or the local one, dropped at the end). Reports: OUT/<who>.txt and the NDJSON event
# logs beside them (default target/contract, or target/contract-smoke).
#
# Environment:
#   EXAMPLES   examples per operation and phase (default 100; smoke 30)
#   SEED       schemathesis seed (default: a new one each run; smoke 1)
#   PORT       port of the server (default 3929)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

log() { printf 'contract: %s\n' "$*" >&2; }
die() { printf 'contract: error: %s\n' "$*" >&2; exit 2; }

EXAMPLES=${EXAMPLES:-100}
SEED=${SEED:-}
PROFILE=release
OUT=target/contract
if [[ ${1:-} == --smoke ]]; then
    EXAMPLES=30 SEED=${SEED:-1} PROFILE=debug OUT=target/contract-smoke
elif [[ -n ${1:-} ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "$0"
    [[ $1 == -h || $1 == --help ]] && exit 0
    exit 2
fi
[[ $EXAMPLES =~ ^[1-9][0-9]*$ ]] || die "EXAMPLES must be a positive number, got '$EXAMPLES'"
PORT=${PORT:-3929}
VENV=.local/venv
ST=$VENV/bin/schemathesis
SERVER=${CARGO_TARGET_DIR:-target}/$PROFILE/server
BASE=http://127.0.0.1:$PORT
command -v python3 >/dev/null || die "python3 is needed (for schemathesis)"
command -v curl >/dev/null || die "curl is needed"

if [[ ! -x $ST ]]; then
    [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    log "installing schemathesis from PyPI into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check schemathesis
fi
log "$("$ST" --version)"

if [[ -z ${DATABASE_URL:-} ]]; then
    scripts/pg.sh start
    DATABASE_URL=$(scripts/pg.sh url)
fi
# The same cluster, another database: postgres://user:password@host:port/shop_contract.
url=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/shop_contract")))' "$DATABASE_URL")
cluster_url=$DATABASE_URL
psql -q "$cluster_url" -c "DROP DATABASE IF EXISTS shop_contract WITH (FORCE)" -c "CREATE DATABASE shop_contract" >/dev/null

rm -rf "$OUT"
mkdir -p "$OUT"
# The trainer too: the admin's POST /api/ml-metrics/retrain runs it.
if [[ $PROFILE == release ]]; then
    cargo build --release -p server -p trainer
else
    cargo build -p server -p trainer
fi

ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
export DATABASE_URL=$url ADMIN_TOKEN
"$SERVER" migrate >/dev/null
"$SERVER" seed --products 200 >/dev/null
# The admin's retrains and rollbacks act on a copy of the committed models, and train on this
# run's own requests only (a few seconds each, not the minutes of the base corpus).
cp -r models "$OUT/models"
cat >"$OUT/server.toml" <<EOF
[telemetry]
log_dir = "$OUT/logs"
optimizer_log = "$OUT/ml-optimizer.log"

[models]
dir = "$OUT/models"
base_logs = []
EOF
HOST=127.0.0.1 PORT=$PORT SHOP_CONFIG=$OUT/server.toml "$SERVER" serve >"$OUT/server.log" 2>&1 &
server_pid=$!
cleanup() {
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    psql -q "$cluster_url" -c "DROP DATABASE IF EXISTS shop_contract WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
deadline=$((SECONDS + 60))
until curl --silent --fail --max-time 2 --output /dev/null "$BASE/readyz"; do
    kill -0 "$server_pid" 2>/dev/null || { tail -n 20 "$OUT/server.log" >&2; die "the server exited during start-up"; }
    ((SECONDS < deadline)) || die "the server was not ready within 60 s"
    sleep 0.2
done

shopper=$(curl --silent --fail -X POST "$BASE/api/auth/register" -H 'content-type: application/json' \
    -d '{"email": "contract@example.com", "password": "contract test password", "name": "Contract"}' |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])') || die "could not register the shopper"

failed=()
run() { # who [schemathesis arguments]
    local who=$1
    shift
    log "$who: every phase, $EXAMPLES examples per operation${SEED:+, seed $SEED}"
    # From OUT, so that schemathesis' example database (.schemathesis/) stays there too.
    if (cd "$OUT" && "$REPO/$ST" --config-file "$REPO/benches/schemathesis/schemathesis.toml" \
        run "$BASE/api/openapi.json" --checks all --workers 1 --request-timeout 120 \
        --max-examples "$EXAMPLES" ${SEED:+--seed "$SEED"} --report ndjson --report-dir "$who" "$@" \
        >"$who.txt" 2>&1); then
        log "$who: nothing found ($(grep -Eo '[0-9]+ generated' "$OUT/$who.txt" | head -1) test cases)"
    else
        sed -n '/FAILURES/,$p' "$OUT/$who.txt" >&2
        failed+=("$who")
    fi
}
run anonymous
# Signing out would revoke the token the rest of the run needs; the anonymous run covers it.
run shopper -H "Authorization: Bearer $shopper" --exclude-path /api/auth/logout
run admin -H "Authorization: Bearer $ADMIN_TOKEN"

if ((${#failed[@]})); then
    die "schemathesis found problems as: ${failed[*]} (reports in $OUT)"
fi
log "nothing found (reports in $OUT)"
