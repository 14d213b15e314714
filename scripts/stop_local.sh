#!/usr/bin/env bash
# Stop what `make run` started: Ray, and the broker only if `make run` started it.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ -f .run/ray-started ]; then
  echo "ray: stopping"
  .venv/bin/ray stop --force >/dev/null 2>&1 || ray stop --force >/dev/null 2>&1 || true
  rm -f .run/ray-started
fi

if [ -f .run/broker-started ]; then
  case "$(cat .run/broker-started)" in
    local) echo "broker: stopping the rabbitmq-server that make run started"; rabbitmqctl -q stop || true ;;
    docker) echo "broker: stopping the rabbitmq container that make run started"; docker compose stop rabbitmq || true ;;
  esac
  rm -f .run/broker-started
fi
