#!/usr/bin/env bash
# `make serve`: the service on the pipeline's outputs (after `make demo`).
#
#   1. a Redis server at serve.redis_url: the one that answers there, else one started here
#      (loopback only, nothing saved to disk; stopped again when this script ends);
#   2. `recsys publish`: the latest run date's recommendations into it;
#   3. `recsys serve` in the foreground, until Ctrl-C (the exposures are flushed, the counts printed).
#
# Usage: scripts/serve.sh [CONFIG] [section.key=value ...]   (the overrides go to publish and serve)
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-conf/local.yaml}
shift $(( $# > 0 ? 1 : 0 ))
BIN=.venv/bin

read -r HOST PORT ROOT < <("$BIN/python" - "$CONFIG" "$@" <<'EOF'
import sys
from urllib.parse import urlsplit

from recsys_spark.config import load_config

cfg = load_config(sys.argv[1], sys.argv[2:])
url = urlsplit(cfg.serve.redis_url)
print(url.hostname, url.port or 6379, cfg.paths.root)
EOF
)

answers() {
    "$BIN/python" -c "import redis, sys; redis.Redis(host=sys.argv[1], port=int(sys.argv[2]), socket_timeout=1,
socket_connect_timeout=1).ping()" "$HOST" "$PORT" >/dev/null 2>&1
}

if answers; then
    echo "serve: using the Redis server at $HOST:$PORT"
else
    case "$HOST" in
        127.0.0.1|localhost) ;;
        *) echo "serve: no Redis server answers at $HOST:$PORT (serve.redis_url)" >&2; exit 1 ;;
    esac
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "serve: redis-server is not installed: run \`make setup\` (or apt-get install redis-server)" >&2
        exit 1
    fi
    mkdir -p "$ROOT"
    ROOT="$(cd "$ROOT" && pwd)"  # redis-server changes into --dir before it opens --logfile
    redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$ROOT" \
        --logfile "$ROOT/redis.log" --daemonize no &
    REDIS_PID=$!
    trap 'kill "$REDIS_PID" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do answers && break; sleep 0.1; done
    answers || { echo "serve: redis-server did not start on port $PORT (see $ROOT/redis.log)" >&2; exit 1; }
    echo "serve: started redis-server on 127.0.0.1:$PORT (pid $REDIS_PID; stopped when this ends)"
fi

"$BIN/recsys" publish --config "$CONFIG" "$@"
"$BIN/recsys" serve --config "$CONFIG" "$@"
