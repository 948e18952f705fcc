#!/usr/bin/env bash
# The crash test: shoppers check out (benches/k6/crash.js) while something crashes under them,
# and is started again RESTART_AFTER s later: PostgreSQL, stopped as a crash would (pg_ctl -m
# immediate), the server itself, killed with SIGKILL, or every database session of the server,
# ended from another one (pg_terminate_backend, as a failover or an operator does; nothing to
# restart: the server must open new connections by itself). Then every order the server
# acknowledged with 201 must be in the database, every key that was answered 201 must have
# exactly one order (orders = keys recorded with 201; a retry never found cart_empty), no request
# may have answered a 5xx other than 503, and every 503 must carry Retry-After.
#
#   scripts/crash.sh           (or: make crash) 60 s of checkouts, the crash 20 s in
#   scripts/crash.sh --smoke   20 s, the crash 6 s in, on the debug build (the end of make test)
#
# The database is a cluster of its own (.local/pg-crash, port CRASH_PG_PORT), durable as the
# one `make run` creates, so nothing else using the project's cluster is touched; it is stopped
# at the end. Results: OUT/result.json (default target/crash, or target/crash-smoke), with the
# k6 summary and the server's log beside it.
#
# Environment:
#   KILL            what crashes: postgres (default), server or backends
#   SECONDS_TOTAL   how long the shoppers shop (default 60; smoke 20)
#   CRASH_AT        seconds after the first order until the crash (default 20; smoke 6)
#   RESTART_AFTER   seconds PostgreSQL stays down (default 3)
#   VUS             shoppers (default 20)
#   CRASH_PG_PORT   port of the crash cluster (default 54339)
#   PORT            port of the server (default 3919)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

log() { printf 'crash: %s\n' "$*" >&2; }
die() { printf 'crash: error: %s\n' "$*" >&2; exit 2; }

SECONDS_TOTAL=${SECONDS_TOTAL:-60}
CRASH_AT=${CRASH_AT:-20}
RESTART_AFTER=${RESTART_AFTER:-3}
VUS=${VUS:-20}
KILL=${KILL:-postgres}
[[ $KILL == postgres || $KILL == server || $KILL == backends ]] ||
    die "KILL must be postgres, server or backends, got '$KILL'"
OUT=target/crash
export PROFILE=${PROFILE:-release}
if [[ ${1:-} == --smoke ]]; then
    SECONDS_TOTAL=20 CRASH_AT=6 OUT=target/crash-smoke PROFILE=debug
elif [[ -n ${1:-} ]]; then
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "$0"
    [[ $1 == -h || $1 == --help ]] && exit 0
    exit 2
fi
((CRASH_AT < SECONDS_TOTAL)) || die "CRASH_AT ($CRASH_AT) must come before the end ($SECONDS_TOTAL)"
command -v python3 >/dev/null || die "python3 is needed"

export SHOP_PG_DIR=$REPO/.local/pg-crash SHOP_PG_PORT=${CRASH_PG_PORT:-54339}
unset SHOP_PG_UNSAFE
scripts/pg.sh start
trap 'scripts/pg.sh stop >/dev/null 2>&1 || true' EXIT
url=$(scripts/pg.sh url)
# A fresh start: orders of earlier runs do not count.
psql -q "$url" -c "DROP SCHEMA public CASCADE; CREATE SCHEMA public;" >/dev/null

[[ $KILL == postgres ]] || OUT=$OUT-$KILL
rm -rf "$OUT"
mkdir -p "$OUT"
if [[ $PROFILE == release ]]; then
    cargo build --release -p server
else
    cargo build -p server
fi

PORT=${PORT:-3919}
SERVER=${CARGO_TARGET_DIR:-target}/$PROFILE/server
server_up() { curl --silent --fail --max-time 2 --output /dev/null "http://127.0.0.1:$PORT/readyz"; }
# KILL=server: this script runs the server (k6 is pointed at it), so that it can kill it.
start_server() {
    HOST=127.0.0.1 PORT=$PORT LOG_DIR=$OUT/logs DATABASE_URL=$url ADMIN_TOKEN=$ADMIN_TOKEN \
        "$SERVER" serve >>"$OUT/server.log" 2>&1 &
    echo $! >"$OUT/server.pid"
    local deadline=$((SECONDS + 60))
    until server_up; do
        ((SECONDS < deadline)) || { log "the server was not ready within 60 s"; return 1; }
        sleep 0.1
    done
}
if [[ $KILL == server ]]; then
    ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
    export ADMIN_TOKEN
    DATABASE_URL=$url "$SERVER" migrate >/dev/null
    DATABASE_URL=$url "$SERVER" seed --products 100 >/dev/null
    start_server || die "the server did not start"
    trap 'kill -KILL "$(cat "$OUT/server.pid" 2>/dev/null)" 2>/dev/null || true; scripts/pg.sh stop >/dev/null 2>&1 || true' EXIT
fi

# The crash, once the shoppers have placed their first orders.
crasher() {
    local deadline=$((SECONDS + 180)) orders=0
    while ((SECONDS < deadline)); do
        orders=$(psql -Atq "$url" -c "SELECT count(*) FROM orders" 2>/dev/null || echo 0)
        ((orders > 0)) && break
        sleep 0.5
    done
    ((orders > 0)) || { log "no order within 180 s: no crash"; return 1; }
    sleep "$CRASH_AT"
    case $KILL in
        postgres) scripts/pg.sh crash ;;
        server)
            log "killing the server (SIGKILL) in the middle of checkouts"
            kill -KILL "$(cat "$OUT/server.pid")"
            ;;
        backends)
            local ended
            ended=$(psql -Atq "$url" -c "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                WHERE datname = current_database() AND application_name = 'shop-api'")
            log "ended $ended database sessions of the server in the middle of checkouts"
            ;;
    esac
    date +%s%3N >"$OUT/crashed-at"
    [[ $KILL == backends ]] || sleep "$RESTART_AFTER"
    case $KILL in
        postgres) scripts/pg.sh start ;;
        server) start_server ;;
    esac
    date +%s%3N >"$OUT/restarted-at"
}
crasher &
crasher_pid=$!

status=0
if [[ $KILL != server ]]; then
    DATABASE_URL=$url PRODUCTS=100 PORT=$PORT SUMMARY_DIR=$OUT VUS=$VUS \
        DURATION=${SECONDS_TOTAL}s scripts/loadtest.sh crash.js 2>&1 | tee "$OUT/k6.log" || status=$?
else
    BASE_URL=http://127.0.0.1:$PORT SUMMARY_DIR=$OUT VUS=$VUS \
        DURATION=${SECONDS_TOTAL}s scripts/loadtest.sh crash.js 2>&1 | tee "$OUT/k6.log" || status=$?
fi
wait "$crasher_pid" || die "the crash did not happen"
((status == 0)) || die "the load run failed (exit $status)"

grep -o 'ACK [0-9]*' "$OUT/k6.log" | cut -d' ' -f2 | sort -un >"$OUT/acknowledged.txt"
found=$(python3 - "$OUT/acknowledged.txt" <<'PY' | psql -Atq "$url"
import sys
ids = [l.strip() for l in open(sys.argv[1]) if l.strip()]
print(f"SELECT count(*) FROM orders WHERE id = ANY('{{{','.join(ids)}}}'::bigint[])")
PY
)
orders=$(psql -Atq "$url" -c "SELECT count(*) FROM orders")
# How soon checkouts worked again: the first order placed after the restart (ms after it).
back_after=$(psql -Atq "$url" -c "SELECT coalesce(round(extract(epoch FROM min(created_at)) * 1000 - $(cat "$OUT/restarted-at"))::text, 'none') \
    FROM orders WHERE created_at >= to_timestamp($(cat "$OUT/restarted-at") / 1000.0)")
keyed=$(psql -Atq "$url" -c "SELECT count(*) FROM idempotency_keys WHERE status_code = 201")
python3 - "$OUT" "$found" "$orders" "$keyed" "$KILL" "$back_after" <<'PY'
import json, sys
out, found, orders, keyed, kill = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
back_after = None if sys.argv[6] == "none" else int(sys.argv[6])
acked = sum(1 for l in open(f"{out}/acknowledged.txt") if l.strip())
metrics = json.load(open(f"{out}/crash.json"))["metrics"]
count = lambda name: int(metrics.get(name, {}).get("values", {}).get("count", 0))
result = {
    "killed": kill,
    "acknowledged": acked,
    "found_after_restart": found,
    "lost": acked - found,
    "status_5xx_not_503": count("crash_status_500"),
    "status_503": count("crash_status_503"),
    "status_503_without_retry_after": count("crash_503_without_retry_after"),
    "transport_errors": count("crash_transport_errors"),
    "checkouts_abandoned": count("crash_checkouts_abandoned"),
    "cart_empty_on_retry": count("crash_cart_empty_on_retry"),
    "orders": orders,
    "keys_answered_201": keyed,
    "first_order_after_restart_ms": back_after,
    "crashed_at_ms": int(open(f"{out}/crashed-at").read()),
    "restarted_at_ms": int(open(f"{out}/restarted-at").read()),
}
json.dump(result, open(f"{out}/result.json", "w"), indent=1)
print("crash: " + json.dumps(result))
problems = []
if result["acknowledged"] == 0:
    problems.append("no order was acknowledged")
if result["lost"]:
    problems.append(f"{result['lost']} acknowledged orders lost")
if result["status_5xx_not_503"]:
    problems.append(f"{result['status_5xx_not_503']} answers were 5xx other than 503")
if result["status_503_without_retry_after"]:
    problems.append("503 without Retry-After")
if orders != keyed:
    problems.append(f"{orders} orders for {keyed} keys answered 201: a key placed two orders, or an order has no key")
if back_after is None or back_after > 10_000:
    problems.append(f"no checkout succeeded within 10 s of the restart ({back_after} ms)")
if result["cart_empty_on_retry"]:
    problems.append(f"{result['cart_empty_on_retry']} retries answered cart_empty")
if problems:
    sys.exit("crash: " + "; ".join(problems))
PY
