#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers at AMQP_URL (default 127.0.0.1:5672).
# Order: already reachable -> a local rabbitmq-server -> `docker compose up -d rabbitmq`
# -> say exactly what to install. Records what it started in .run/ so that
# `make stop` stops only that.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .run

url="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}"
read -r host port < <(python3 - "$url" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or (5671 if u.scheme == "amqps" else 5672))
PY
)

reachable() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

wait_reachable() {
  for _ in $(seq 1 "${1:-60}"); do
    reachable && return 0
    sleep 1
  done
  return 1
}

if reachable; then
  echo "broker: reachable at $host:$port"
  exit 0
fi

if command -v rabbitmq-server >/dev/null 2>&1; then
  echo "broker: starting the local rabbitmq-server"
  rabbitmq-server -detached
  if wait_reachable 90; then
    # AMQP accepts TCP before the app is fully booted; wait for that too.
    command -v rabbitmqctl >/dev/null && rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    echo "local" > .run/broker-started
    echo "broker: started at $host:$port"
    exit 0
  fi
  echo "broker: rabbitmq-server did not come up; see /var/log/rabbitmq/" >&2
  exit 1
fi

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  echo "broker: starting RabbitMQ with docker compose"
  # The compose broker has no guest user: make (once) a local dev password and
  # leave the matching AMQP_URL in .run/broker.env, which `make run` loads.
  export RABBITMQ_USER="${RABBITMQ_USER:-rabbit-serve}"
  if [ -z "${RABBITMQ_PASSWORD:-}" ]; then
    if [ ! -s .run/rabbitmq-password ]; then
      (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(24))' >.run/rabbitmq-password)
    fi
    RABBITMQ_PASSWORD="$(cat .run/rabbitmq-password)"
    export RABBITMQ_PASSWORD
  fi
  docker compose up -d rabbitmq
  (umask 077 && echo "AMQP_URL=amqp://${RABBITMQ_USER}:${RABBITMQ_PASSWORD}@${host}:${port}/%2F" >.run/broker.env)
  if wait_reachable 90; then
    echo "docker" > .run/broker-started
    echo "broker: started (docker compose) at $host:$port"
    exit 0
  fi
  echo "broker: the rabbitmq container did not come up: docker compose logs rabbitmq" >&2
  exit 1
fi

cat >&2 <<MSG
broker: nothing answers at $host:$port and no way to start a broker was found.
Install one of:
  - RabbitMQ:  sudo apt-get install -y rabbitmq-server   (Debian/Ubuntu; then re-run)
               brew install rabbitmq                     (macOS)
  - Docker:    https://docs.docker.com/engine/install/   (then 'docker compose up -d rabbitmq')
or point AMQP_URL at a broker you already run.
MSG
exit 1
