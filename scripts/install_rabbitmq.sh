#!/usr/bin/env bash
# Install a supported RabbitMQ on an Ubuntu head node (cluster.yaml runs this).
#
# Ubuntu's own archive is too old for rabbit-serve (22.04 ships 3.9, below the 3.10
# floor in rabbit_serve/broker_version.py: quorum queues ignore per-message TTL before
# 3.10), so this installs Team RabbitMQ's packages, pinned to RABBITMQ_VERSION, from
# their apt mirrors (https://www.rabbitmq.com/docs/install-debian), then checks the
# version the node reports. docker-compose.yaml pins the same minor release.
set -euo pipefail

RABBITMQ_VERSION="${RABBITMQ_VERSION:-3.13.7-1}"
CODENAME="$(. /etc/os-release && echo "${VERSION_CODENAME}")"
KEYS=https://github.com/rabbitmq/signing-keys/releases/download/3.0
MIRROR=https://ppa1.rabbitmq.com/rabbitmq

sudo apt-get -o DPkg::Lock::Timeout=600 install -y curl gnupg apt-transport-https
curl -1sLf "$KEYS/cloudsmith.rabbitmq-erlang.E495BB49CC4BBE5B.key" |
  sudo gpg --batch --yes --dearmor -o /usr/share/keyrings/rabbitmq.E495BB49CC4BBE5B.gpg
curl -1sLf "$KEYS/cloudsmith.rabbitmq-server.9F4587F226208342.key" |
  sudo gpg --batch --yes --dearmor -o /usr/share/keyrings/rabbitmq.9F4587F226208342.gpg
sudo tee /etc/apt/sources.list.d/rabbitmq.list >/dev/null <<LIST
deb [arch=amd64 signed-by=/usr/share/keyrings/rabbitmq.E495BB49CC4BBE5B.gpg] $MIRROR/rabbitmq-erlang/deb/ubuntu $CODENAME main
deb [arch=amd64 signed-by=/usr/share/keyrings/rabbitmq.9F4587F226208342.gpg] $MIRROR/rabbitmq-server/deb/ubuntu $CODENAME main
LIST
sudo apt-get -o DPkg::Lock::Timeout=600 update -y
sudo apt-get -o DPkg::Lock::Timeout=600 install -y erlang-base erlang-asn1 erlang-crypto \
  erlang-eldap erlang-ftp erlang-inets erlang-mnesia erlang-os-mon erlang-parsetools \
  erlang-public-key erlang-runtime-tools erlang-snmp erlang-ssl erlang-syntax-tools \
  erlang-tftp erlang-tools erlang-xmerl
sudo apt-get -o DPkg::Lock::Timeout=600 install -y --allow-downgrades \
  "rabbitmq-server=${RABBITMQ_VERSION}"
sudo apt-mark hold rabbitmq-server
sudo systemctl enable --now rabbitmq-server
sudo rabbitmqctl await_startup
installed="$(sudo rabbitmqctl version)"
python - "$installed" <<'PY'
import sys
from rabbit_serve.broker_version import check_version
warning = check_version(sys.argv[1])
print(warning or f"RabbitMQ {sys.argv[1]}: supported")
PY
