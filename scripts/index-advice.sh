#!/usr/bin/env bash
# Index advice end to end on a generated catalogue: the 1,000,000-product figures in
# docs/benchmarks.md.
#
#   DATABASE_URL=postgres://.../advisor_bench scripts/index-advice.sh
#
# Expects a database migrated and seeded with `server seed --products N` and no index on
# products.category. Moves one product in RARE_EVERY (default 1000) into a rare category RARE
# (default collectibles), starts a release
# server on PORT (default 3111) with the response cache off (every request reaches PostgreSQL)
# and AUTO_INDEX=true, lists every category ROUNDS times (default 30), runs an advisor pass
# (suggest + build), lists them again, runs a pass (measure: keep or drop), prints both passes'
# JSON and leaves the optimizer and request logs in $OUT. Other server settings come from the
# environment as usual (e.g. SLOW_QUERY_P95_MS). It builds an index in that database: point it only at
# a scratch database.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to a scratch database seeded with server seed --products N}"
PORT=${PORT:-3111}
ROUNDS=${ROUNDS:-30}
OUT=${OUT:-target/index-advice}
SERVER=${CARGO_TARGET_DIR:-target}/release/server
TOKEN=index-advice-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
RARE=${RARE:-collectibles}
RARE_EVERY=${RARE_EVERY:-1000}
CATEGORIES="electronics books home fashion sports toys garden beauty $RARE"

mkdir -p "$OUT"
rm -rf "$OUT/logs" "$OUT/data"
cat > "$OUT/shop.toml" <<TOML
[features]
caching = false
[telemetry]
log_dir = "$OUT/data/logs"
optimizer_log = "$OUT/logs/ml-optimizer.log"
TOML

psql -qX "$DATABASE_URL" -v rare="$RARE" -v every="$RARE_EVERY" <<'SQL'
UPDATE products SET category = :'rare' WHERE id % :every = 0 AND category <> :'rare';
VACUUM ANALYZE products;
SQL

SHOP_CONFIG=$OUT/shop.toml ADMIN_TOKEN=$TOKEN PORT=$PORT HOST=127.0.0.1 AUTO_INDEX=true \
    ADVISOR_INTERVAL_SECS=0 "$SERVER" serve > "$OUT/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "localhost:$PORT/healthz" > /dev/null && break
    sleep 0.1
done

browse() {
    for _ in $(seq "$ROUNDS"); do
        for c in $CATEGORIES; do
            curl -sf -o /dev/null "localhost:$PORT/api/products?category=$c"
        done
    done
    sleep 1 # the request log writer aggregates every 50 ms
}
advise() {
    curl -sf -X POST "localhost:$PORT/api/ml-metrics/index-advice" -H "authorization: Bearer $TOKEN"
}

browse
advise > "$OUT/pass1.json"
browse
advise > "$OUT/pass2.json"
echo "pass 1 (suggest, build):"; cat "$OUT/pass1.json"; echo
echo "pass 2 (measure):"; cat "$OUT/pass2.json"; echo
echo "optimizer log: $OUT/logs/ml-optimizer.log"
