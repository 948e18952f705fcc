#!/usr/bin/env bash
# Project-local PostgreSQL 15 cluster for development and tests.
#
#   scripts/pg.sh start    create the cluster on first use, start it, ensure database "shop"
#   scripts/pg.sh stop     stop it (no-op when not running)
#   scripts/pg.sh status   exit 0 when running, 1 otherwise
#   scripts/pg.sh url      print postgres://shop:<password>@127.0.0.1:<port>/shop
#   scripts/pg.sh psql     open psql on database "shop" (extra arguments go to psql)
#   scripts/pg.sh destroy  stop it and delete the cluster, its password and its log
#   scripts/pg.sh crash    stop it as a crash would (pg_ctl -m immediate: no checkpoint, no
#                          goodbye to clients), for scripts/crash.sh
#   scripts/pg.sh replica-urls          print the running replicas' URLs, comma-separated
#                                       (the server's DATABASE_REPLICA_URLS)
#   scripts/pg.sh replica-stop K        stop replica K (1-based): its sessions are cut at once
#                                       (fast shutdown, so that it restarts without a long
#                                       recovery)
#   scripts/pg.sh replica-start K       start replica K again; it catches up by streaming
#
# Read replicas: SHOP_PG_REPLICAS=N (make run REPLICAS=N) makes `start` also create and start N
# hot standbys of the cluster: each made once with pg_basebackup, streaming from the primary,
# on port+K, in .local/pg/replica-K. `stop` and `destroy` take the replicas along.
#
# Everything lives under <repo>/.local/pg/ (git-ignored), or SHOP_PG_DIR for a second cluster
# (scripts/crash.sh uses .local/pg-crash). Port: ${SHOP_PG_PORT:-54329}, TCP on 127.0.0.1 only.
#
# Durable by default: fsync, full_page_writes and synchronous_commit stay on (PostgreSQL's own
# defaults), so an order the server acknowledged survives a crash. SHOP_PG_UNSAFE=1 turns all
# three off for speed (throwaway test clusters only: a crash can lose acknowledged writes and a
# power loss can corrupt the cluster); the setting is rewritten on every start.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
PORT=${SHOP_PG_PORT:-54329}
DB_USER=shop
DB_NAME=shop
READY_TIMEOUT=30
REPLICAS=${SHOP_PG_REPLICAS:-0}
# Internal, set when this script starts a replica of its own cluster: the primary's port and
# base folder.
STANDBY_OF=${SHOP_PG_STANDBY_OF:-}
PRIMARY_BASE=${SHOP_PG_PRIMARY_BASE:-}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PG_BASE=${SHOP_PG_DIR:-$REPO/.local/pg}
DATA_LINK=$PG_BASE/data
PASSWORD_FILE=$PG_BASE/password
LOG_FILE=$PG_BASE/postgres.log
# Short, stable per-checkout id for paths outside the repo.
HASH=$(printf '%s' "${SHOP_PG_DIR:-$REPO}" | sha256sum | cut -c1-10)
EXT_BASE=/var/tmp/shop-pg-$HASH

log() { printf 'pg: %s\n' "$*" >&2; }
die() { printf 'pg: error: %s\n' "$*" >&2; exit 1; }

if ! [[ $PORT =~ ^[1-9][0-9]{0,4}$ ]] || ((PORT > 65535)); then
    die "SHOP_PG_PORT must be a TCP port number, got '$PORT'"
fi
if ! [[ $REPLICAS =~ ^[0-9]$ ]]; then
    die "SHOP_PG_REPLICAS must be 0 to 9, got '$REPLICAS'"
fi

# initdb and postgres refuse to run as root; as root we run them as the 'postgres' user.
AS_ROOT=0
[[ $(id -u) -eq 0 ]] && AS_ROOT=1

as_pg() {
    if ((AS_ROOT)); then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Give a path to whoever runs the server (postgres when we are root).
own_for_pg() {
    if ((AS_ROOT)); then chown postgres:postgres "$@"; fi
}

need_binaries() {
    [[ -x $PG_BIN/initdb ]] || die "PostgreSQL 15 not found in $PG_BIN; run scripts/setup.sh (or make setup)"
    if ((AS_ROOT)) && ! id postgres >/dev/null 2>&1; then
        die "running as root needs the 'postgres' system user; run scripts/setup.sh (installs postgresql-15)"
    fi
}

# ---------------------------------------------------------------------------
# Layout: where the data folder and the unix socket live.
# DATA is the real data folder; normally .local/pg/data, but when root and the
# postgres user cannot reach the repo (e.g. a clone under /root), it lives in
# /var/tmp/shop-pg-<hash>/data and .local/pg/data is a symlink to it.
# ---------------------------------------------------------------------------
DATA=
SOCK_DIR=

resolve_layout() { # [create]
    if [[ ${1:-} == create ]]; then
        mkdir -p "$PG_BASE"
        # postgres (as root) only needs to traverse these; the password file itself is mode 600.
        if ((AS_ROOT)); then chmod 711 "$REPO/.local" "$PG_BASE"; fi
    fi

    local ext=0
    if [[ -L $DATA_LINK ]]; then
        ext=1
    elif [[ ! -e $DATA_LINK ]] && ((AS_ROOT)) && ! runuser -u postgres -- test -x "$PG_BASE" 2>/dev/null; then
        ext=1
    fi

    if ((ext)); then
        DATA=$EXT_BASE/data
        SOCK_DIR=$EXT_BASE/sock
    else
        DATA=$DATA_LINK
        SOCK_DIR=$PG_BASE/sock
    fi
    # Unix socket paths are limited to ~107 bytes; fall back to a short /tmp path.
    local sock_file=$SOCK_DIR/.s.PGSQL.$PORT
    if ((${#sock_file} > 100)); then
        SOCK_DIR=/tmp/shop-pg-$HASH
    fi
}

# Create a folder owned by the server user (postgres when root, else us).
make_pg_dir() { # dir mode
    local dir=$1 mode=$2 want owner
    if ((AS_ROOT)); then want=postgres; else want=$(id -un); fi
    # Shared places (/tmp, /var/tmp): never follow a planted symlink or adopt a
    # folder someone else made.
    [[ -L $dir ]] && die "$dir is a symlink; refusing to use it"
    if [[ -e $dir ]]; then
        owner=$(stat -c %U "$dir")
        [[ $owner == "$want" ]] || { ((AS_ROOT)) && [[ $owner == root ]]; } \
            || die "$dir is owned by $owner, expected $want; remove it"
    else
        mkdir -p "$dir"
    fi
    own_for_pg "$dir"
    chmod "$mode" "$dir"
}

# ---------------------------------------------------------------------------
# Running-state detection.
# A postmaster.pid left behind by a crash or reboot may name a PID that now
# belongs to another process, so "alive" also requires the process to be a
# postgres whose working folder is our data folder.
# ---------------------------------------------------------------------------
pid_file_pid() {
    local f=$DATA/postmaster.pid pid
    [[ -f $f ]] || return 1
    read -r pid <"$f" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    printf '%s\n' "$pid"
}

running_pid() {
    local pid cwd data_real
    pid=$(pid_file_pid) || return 1
    [[ -d /proc/$pid ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == postgres* ]] || return 1
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || return 1
    data_real=$(readlink -f "$DATA")
    [[ $cwd == "$data_real" ]] || return 1
    printf '%s\n' "$pid"
}

running_port() { sed -n 4p "$DATA/postmaster.pid" 2>/dev/null; }

remove_stale_pid() {
    if [[ -f $DATA/postmaster.pid ]] && ! running_pid >/dev/null; then
        log "removing stale $DATA/postmaster.pid (server not running; crash or reboot)"
        rm -f "$DATA/postmaster.pid"
    fi
    # Same for the socket lock file the postmaster keeps next to its socket.
    local lock=$SOCK_DIR/.s.PGSQL.$PORT.lock
    if [[ -f $lock ]] && ! running_pid >/dev/null; then
        rm -f "$lock" "$SOCK_DIR/.s.PGSQL.$PORT"
    fi
}

# ---------------------------------------------------------------------------
# Password and cluster creation.
# ---------------------------------------------------------------------------
read_password() {
    [[ -s $PASSWORD_FILE ]] || die "no password file $PASSWORD_FILE; run: scripts/pg.sh start"
    local pw
    read -r pw <"$PASSWORD_FILE"
    printf '%s' "$pw"
}

ensure_password() {
    [[ -s $PASSWORD_FILE ]] && return 0
    # Hex only, so it can go into a URL without escaping.
    local tmp
    tmp=$(mktemp "$PG_BASE/password.XXXXXX")
    chmod 600 "$tmp"
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp"
    mv "$tmp" "$PASSWORD_FILE"
}

# Crash safety: PostgreSQL's durable defaults, or all off with SHOP_PG_UNSAFE=1.
durability() {
    if [[ ${SHOP_PG_UNSAFE:-0} == 1 ]]; then
        printf '%s\n' "# UNSAFE (SHOP_PG_UNSAFE=1): fast, but a crash can lose acknowledged writes" \
            "# and a power loss can corrupt the cluster; recreate it with 'make clean-db'." \
            'fsync = off' 'synchronous_commit = off' 'full_page_writes = off'
    else
        printf '%s\n' "# Durable (PostgreSQL's defaults): an acknowledged commit survives a crash." \
            'fsync = on' 'synchronous_commit = on' 'full_page_writes = on'
    fi
}

durability_word() {
    if [[ ${SHOP_PG_UNSAFE:-0} == 1 ]]; then
        printf 'UNSAFE: fsync, full_page_writes and synchronous_commit off (SHOP_PG_UNSAFE=1)'
    else
        printf 'durable: fsync, full_page_writes and synchronous_commit on'
    fi
}

# Settings live in a file we rewrite on every start, included from postgresql.conf,
# so changing the port or socket folder needs no re-init.
write_config() {
    local conf=$DATA/shop-dev.conf sock_q=${SOCK_DIR//\'/\'\'}
    cat >"$conf" <<EOF
# Written by scripts/pg.sh on every start; edits are lost.
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$sock_q'
max_connections = 300
shared_buffers = 256MB
$(durability)
# Replicas: WAL kept for a standby that was away a while, and no query on a standby cancelled
# because the primary vacuumed the rows it reads.
wal_keep_size = 256MB
hot_standby_feedback = on
# shared_preload_libraries stays unset: hypopg is loaded by CREATE EXTENSION.
EOF
    chmod 644 "$conf"
    own_for_pg "$conf"
}

# A standby's data folder: a base backup of the primary, then streaming from it. The connection
# settings (with the password) go to a file only the server user can read.
init_standby() {
    cp "$PRIMARY_BASE/password" "$PASSWORD_FILE"
    chmod 600 "$PASSWORD_FILE"
    local pw passfile
    pw=$(read_password)
    passfile=$(mktemp /tmp/shop-pg-pass.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the variable is local
    trap "rm -f '$passfile'" EXIT
    printf '127.0.0.1:%s:*:%s:%s\n' "$STANDBY_OF" "$DB_USER" "$pw" >"$passfile"
    chmod 600 "$passfile"
    own_for_pg "$passfile"
    log "creating replica in $DATA from the primary on port $STANDBY_OF (log: $LOG_FILE)"
    as_pg env PGPASSFILE="$passfile" "$PG_BIN/pg_basebackup" -h 127.0.0.1 -p "$STANDBY_OF" \
        -U "$DB_USER" -D "$DATA" -X stream -c fast >>"$LOG_FILE" 2>&1 \
        || { tail -n 20 "$LOG_FILE" >&2; rm -rf -- "${DATA:?}"; die "pg_basebackup failed; see $LOG_FILE"; }
    rm -f "$passfile"
    trap - EXIT
    local conf=$DATA/shop-standby.conf
    printf "primary_conninfo = 'host=127.0.0.1 port=%s user=%s password=%s application_name=%s'\n" \
        "$STANDBY_OF" "$DB_USER" "$pw" "$(basename "$PG_BASE")" >"$conf"
    chmod 600 "$conf"
    own_for_pg "$conf"
    printf "include_if_exists = 'shop-standby.conf'\n" >>"$DATA/postgresql.conf"
    as_pg touch "$DATA/standby.signal"
}

init_cluster() {
    [[ -f $DATA/PG_VERSION ]] && return 0

    if [[ -L $DATA_LINK && ! -e $DATA_LINK ]]; then
        log "data folder $(readlink "$DATA_LINK") is gone; creating a new cluster"
    fi
    if [[ -e $DATA && -n $(ls -A "$DATA" 2>/dev/null) ]]; then
        # No PG_VERSION: an interrupted initdb, not a usable cluster.
        log "removing incomplete cluster in $DATA"
        rm -rf -- "${DATA:?}"
    fi
    if [[ $DATA != "$DATA_LINK" ]]; then
        mkdir -p "$EXT_BASE"
        [[ ! -L $EXT_BASE && $(stat -c %U "$EXT_BASE") == root ]] || die "$EXT_BASE is not a folder owned by root; remove it"
        chmod 755 "$EXT_BASE"
        ln -sfn "$DATA" "$DATA_LINK"
        log "postgres cannot reach $REPO; data folder is $DATA (symlinked from .local/pg/data)"
    fi
    make_pg_dir "$DATA" 700
    if [[ -n $STANDBY_OF ]]; then
        init_standby
        return 0
    fi
    ensure_password

    # initdb runs as the server user, who may not be able to read our 600 password
    # file, so hand it a private copy it owns.
    local pwcopy
    pwcopy=$(mktemp /tmp/shop-pg-pw.XXXXXX)
    # shellcheck disable=SC2064 # expand now: the variable is local
    trap "rm -f '$pwcopy'" EXIT
    cp "$PASSWORD_FILE" "$pwcopy"
    own_for_pg "$pwcopy"

    log "creating cluster in $DATA (log: $LOG_FILE)"
    local -a args=(-D "$DATA" --auth=scram-sha-256 --username="$DB_USER" --pwfile="$pwcopy" --encoding=UTF8)
    if ! as_pg "$PG_BIN/initdb" "${args[@]}" --locale=C.UTF-8 >>"$LOG_FILE" 2>&1; then
        log "initdb with locale C.UTF-8 failed; retrying with locale C"
        rm -rf -- "${DATA:?}"
        make_pg_dir "$DATA" 700
        as_pg "$PG_BIN/initdb" "${args[@]}" --locale=C >>"$LOG_FILE" 2>&1 \
            || { tail -n 20 "$LOG_FILE" >&2; die "initdb failed; see $LOG_FILE"; }
    fi
    rm -f "$pwcopy"
    trap - EXIT

    printf "\ninclude_if_exists = 'shop-dev.conf'\n" >>"$DATA/postgresql.conf"
}

# psql/createdb against our own socket (unique to this cluster, unlike the port).
admin_env() {
    PGPASSWORD=$(read_password)
    export PGPASSWORD PGHOST=$SOCK_DIR PGPORT=$PORT PGUSER=$DB_USER PGCONNECT_TIMEOUT=5
}

wait_ready() {
    # A standby replays the WAL since its last restartpoint before it takes connections: after
    # a crash of a busy cluster that can take minutes.
    local timeout=$READY_TIMEOUT
    [[ -n $STANDBY_OF ]] && timeout=300
    local deadline=$((SECONDS + timeout))
    until "$PG_BIN/pg_isready" -q -h "$SOCK_DIR" -p "$PORT" -d postgres; do
        if ((SECONDS >= deadline)); then
            tail -n 20 "$LOG_FILE" >&2
            die "server not ready after ${timeout}s; see $LOG_FILE"
        fi
        # Give up early if the postmaster died (port in use, bad config, ...).
        if ((SECONDS > 1)) && [[ ! -f $DATA/postmaster.pid ]]; then
            sleep 0.5
            if [[ ! -f $DATA/postmaster.pid ]]; then
                tail -n 20 "$LOG_FILE" >&2
                die "server exited during start-up; see $LOG_FILE"
            fi
        fi
        sleep 0.5
    done
}

ensure_database() {
    admin_env
    local exists
    exists=$("$PG_BIN/psql" -X -q -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")
    if [[ $exists != 1 ]]; then
        log "creating database $DB_NAME"
        "$PG_BIN/createdb" -O "$DB_USER" "$DB_NAME"
    fi
}

# ---------------------------------------------------------------------------
# Subcommands.
# ---------------------------------------------------------------------------
cmd_start() {
    need_binaries
    resolve_layout create
    init_cluster

    local pid
    if pid=$(running_pid); then
        local rport
        rport=$(running_port)
        [[ $rport == "$PORT" ]] || die "already running on port $rport (pid $pid), but SHOP_PG_PORT is $PORT; run scripts/pg.sh stop first"
        # The durability settings all take effect on a reload.
        write_config
        as_pg "$PG_BIN/pg_ctl" reload -D "$DATA" >>"$LOG_FILE" 2>&1 || die "pg_ctl reload failed; see $LOG_FILE"
        log "running: $(durability_word)"
        return 0
    fi

    remove_stale_pid
    make_pg_dir "$SOCK_DIR" 755
    write_config

    # The log is opened here, by the invoking user, so it stays in .local/pg and
    # readable by them even when the server runs as postgres.
    printf '\n=== %s pg.sh start (port %s) ===\n' "$(date -u +%FT%TZ)" "$PORT" >>"$LOG_FILE"
    log "starting PostgreSQL on 127.0.0.1:$PORT (log: $LOG_FILE)"
    # -W: do not wait here; readiness is checked below with pg_isready.
    as_pg "$PG_BIN/pg_ctl" start -W -D "$DATA" </dev/null >>"$LOG_FILE" 2>&1 \
        || { tail -n 20 "$LOG_FILE" >&2; die "pg_ctl start failed; see $LOG_FILE"; }
    wait_ready
    if [[ -n $STANDBY_OF ]]; then
        log "ready: replica on 127.0.0.1:$PORT, streaming from port $STANDBY_OF"
        return 0
    fi
    ensure_database
    log "ready: database $DB_NAME on 127.0.0.1:$PORT (scripts/pg.sh url), $(durability_word)"
    start_replicas
}

# The replicas live in replica-K next to the primary's data, on port+K.
replica_base() { printf '%s/replica-%s' "$PG_BASE" "$1"; }

# Runs this script on replica K.
on_replica() { # k command...
    local k=$1
    shift
    [[ $k =~ ^[1-9]$ ]] || die "replica number must be 1 to 9, got '$k'"
    SHOP_PG_DIR=$(replica_base "$k") SHOP_PG_PORT=$((PORT + k)) SHOP_PG_STANDBY_OF=$PORT \
        SHOP_PG_PRIMARY_BASE=$PG_BASE SHOP_PG_REPLICAS=0 "${BASH_SOURCE[0]}" "$@"
}

# Replica numbers that exist on disk, in order.
existing_replicas() {
    local dir
    for dir in "$PG_BASE"/replica-[1-9]; do
        [[ -d $dir ]] && printf '%s\n' "${dir##*-}"
    done
}

start_replicas() {
    local k
    for ((k = 1; k <= REPLICAS; k++)); do on_replica "$k" start; done
}

cmd_stop() {
    resolve_layout
    local k
    for k in $(existing_replicas); do on_replica "$k" stop; done
    if ! running_pid >/dev/null; then
        [[ -d $DATA ]] && remove_stale_pid
        log "not running"
        return 0
    fi
    need_binaries
    log "stopping PostgreSQL"
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m fast -w -t 60 >>"$LOG_FILE" 2>&1 \
        || { tail -n 20 "$LOG_FILE" >&2; die "pg_ctl stop failed; see $LOG_FILE"; }
}

cmd_crash() {
    resolve_layout
    running_pid >/dev/null || die "not running"
    need_binaries
    log "stopping PostgreSQL as a crash would (immediate)"
    as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w -t 60 >>"$LOG_FILE" 2>&1 \
        || { tail -n 20 "$LOG_FILE" >&2; die "pg_ctl stop -m immediate failed; see $LOG_FILE"; }
}

cmd_status() {
    resolve_layout
    local pid
    if pid=$(running_pid); then
        echo "running (pid $pid, 127.0.0.1:$(running_port), data $DATA)"
        return 0
    fi
    echo "not running"
    return 1
}

cmd_url() {
    local pw
    pw=$(read_password)
    printf 'postgres://%s:%s@127.0.0.1:%s/%s\n' "$DB_USER" "$pw" "$PORT" "$DB_NAME"
}

cmd_psql() {
    resolve_layout
    admin_env
    exec "$PG_BIN/psql" -d "$DB_NAME" "$@"
}

cmd_destroy() {
    resolve_layout
    local k
    for k in $(existing_replicas); do on_replica "$k" destroy; done
    cmd_stop
    # The data folder may be a symlink to /var/tmp; delete the target too.
    if [[ -L $DATA_LINK ]]; then
        rm -rf -- "$(readlink "$DATA_LINK")"
        rmdir "$EXT_BASE/sock" "$EXT_BASE" 2>/dev/null || true
    fi
    if [[ -d /tmp/shop-pg-$HASH && ! -L /tmp/shop-pg-$HASH ]]; then rm -rf -- "/tmp/shop-pg-$HASH"; fi
    rm -rf -- "${PG_BASE:?}"
    log "deleted local cluster ($PG_BASE)"
}

cmd_replica_urls() {
    resolve_layout
    local k pw urls=()
    pw=$(read_password)
    for k in $(existing_replicas); do
        if on_replica "$k" status >/dev/null; then
            urls+=("postgres://$DB_USER:$pw@127.0.0.1:$((PORT + k))/$DB_NAME")
        fi
    done
    (IFS=,; printf '%s\n' "${urls[*]}")
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//p;}' "${BASH_SOURCE[0]}"
}

case ${1:-} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    crash) cmd_crash ;;
    status) cmd_status ;;
    url) cmd_url ;;
    psql) shift; cmd_psql "$@" ;;
    destroy) cmd_destroy ;;
    replica-urls) cmd_replica_urls ;;
    replica-stop) resolve_layout; on_replica "${2:-}" stop ;;
    replica-start) resolve_layout; on_replica "${2:-}" start ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
