#!/usr/bin/env bash
# `make cluster`: the shop as it scales out, on one machine, for trying it out.
#
#   HAProxy on PORT (default 3000), round robin with health checks (/readyz) over
#   two server instances (ports PORT+1 and PORT+2), which share
#     - one PostgreSQL primary and a streaming read replica (scripts/pg.sh, SHOP_PG_REPLICAS=1),
#       reads spread over both,
#     - one request log folder (data/logs; each instance's files carry its name) and one model
#       folder (models/): one instance at a time retrains (an advisory lock), both load the
#       published model,
#     - dashboard sessions, login limits and cache invalidation, through PostgreSQL.
#
# Runs in the foreground; Ctrl-C stops HAProxy and both instances (the database keeps running:
# scripts/pg.sh stop). Sign in to the dashboard with the token in .local/admin-token, as for
# `make run`. Needs the release build (`make cluster` builds it) and haproxy (scripts/setup.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"
PORT=${PORT:-3000}
OUT=.local/cluster
SERVER=${CARGO_TARGET_DIR:-target}/release/server
mkdir -p "$OUT"

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

[[ -x $SERVER ]] || die "no release server at $SERVER; run make cluster"
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[[ -x $HAPROXY ]] || die "haproxy not found; run scripts/setup.sh"

SHOP_PG_REPLICAS=1 scripts/pg.sh start
DATABASE_URL=$(scripts/pg.sh url)
DATABASE_REPLICA_URLS=$(scripts/pg.sh replica-urls)
[[ -n $DATABASE_REPLICA_URLS ]] || die "the replica did not start; see .local/pg/replica-1/postgres.log"
if [[ -z ${ADMIN_TOKEN:-} ]]; then
    if [[ ! -s .local/admin-token ]]; then
        (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >.local/admin-token)
    fi
    ADMIN_TOKEN=$(<.local/admin-token)
fi
export DATABASE_URL DATABASE_REPLICA_URLS ADMIN_TOKEN
# The instances believe X-Forwarded-For from HAProxy only.
export TRUSTED_PROXIES=127.0.0.1
if ORT_DYLIB_PATH=$(scripts/ort.sh); then export ORT_DYLIB_PATH; fi

"$SERVER" migrate
"$SERVER" seed

pids=()
stop() {
    trap - EXIT INT TERM
    log "stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop EXIT INT TERM

servers=
for n in 1 2; do
    port=$((PORT + n))
    PORT=$port INSTANCE_ID=instance-$n "$SERVER" serve >"$OUT/instance-$n.log" 2>&1 &
    pids+=($!)
    servers+="    server instance-$n 127.0.0.1:$port check inter 1s"$'\n'
    log "instance-$n on port $port (log: $OUT/instance-$n.log)"
done

cat >"$OUT/haproxy.cfg" <<EOF
# Written by scripts/cluster.sh; edits are lost.
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
frontend shop
    bind 127.0.0.1:$PORT
    option forwardfor
    default_backend instances
backend instances
    balance roundrobin
    option httpchk GET /readyz
$servers
EOF
"$HAPROXY" -db -f "$OUT/haproxy.cfg" >"$OUT/haproxy.log" 2>&1 &
pids+=($!)

# Ready when both instances answer through HAProxy (bounded: 60 s).
for _ in $(seq 1 120); do
    if curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then
        log "ready: http://localhost:$PORT (dashboard: /dashboard, token in .local/admin-token)"
        wait -n "${pids[@]}" || true
        die "a process of the cluster exited; see $OUT/*.log"
    fi
    sleep 0.5
done
die "the cluster did not answer on port $PORT within 60 s; see $OUT/*.log"
