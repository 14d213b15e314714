#!/usr/bin/env bash
# Least-privilege RabbitMQ users for rabbit-serve: one for the ingress replicas
# (INGRESS_AMQP_URL), one for the consumers (CONSUMER_AMQP_URL). Each may configure,
# write and read only what it needs, and has no tags: no management UI, no policies,
# no other vhost. Idempotent: run it again to apply a new password (rotation) or a
# renamed queue; docker-compose.yaml and cluster.yaml run it on every start.
#
#   RABBITMQ_INGRESS_PASSWORD=... RABBITMQ_CONSUMER_PASSWORD=... scripts/broker_users.sh
#
# Environment (passwords only from here, never from the repository or argv):
#   RABBITMQ_INGRESS_PASSWORD, RABBITMQ_CONSUMER_PASSWORD   required
#   RABBITMQ_INGRESS_USER     default rabbit-serve-ingress
#   RABBITMQ_CONSUMER_USER    default rabbit-serve-consumer
#   RABBITMQ_VHOST            default /; created if missing
#   REQUEST_QUEUE, DEAD_LETTER_QUEUE, REPLY_QUEUE_PREFIX, WEBHOOK_QUEUE,
#   WEBHOOK_DEAD_LETTER_QUEUE the application's settings, same names and defaults
#                             (tests/unit/test_deploy_files.py checks the defaults)
#   RABBITMQCTL               the command, split on spaces; default rabbitmqctl, e.g.
#                             "sudo rabbitmqctl" or "rabbitmqctl -n rabbit@rabbitmq"
#
# What each user may do (RabbitMQ checks configure to declare or delete a queue,
# write to publish to an exchange, read to consume; the default exchange is
# "amq.default" to its permissions):
#   ingress   configure, read: its reply queues (REPLY_QUEUE_PREFIX.*) only
#             write: amq.default (publishing to the request queue)
#             So it cannot consume, purge or delete the request queue or any other
#             queue, nor publish through any named exchange. It does not declare the
#             request queue either: RabbitMQ asks read permission of whoever first
#             declares a queue with a dead-letter exchange, so the consumers do.
#   consumer  configure: the request, dead-letter, webhook and webhook dead-letter
#             queues (it declares them); read: the first three; write: amq.default
#             (results to reply queues, entries to the webhook outbox). It cannot
#             declare or consume any other queue (the ingress's reply queues, the
#             webhook dead letters, which an operator replays with AMQP_URL).
# The default exchange routes by queue name, so write on it reaches any queue of the
# vhost: a broker-level limit RabbitMQ cannot narrow (topic permissions apply to topic
# exchanges only). What a message may make a consumer do is checked by the consumer.
set -euo pipefail

read -r -a ctl <<<"${RABBITMQCTL:-rabbitmqctl}"
vhost="${RABBITMQ_VHOST:-/}"
ingress_user="${RABBITMQ_INGRESS_USER:-rabbit-serve-ingress}"
consumer_user="${RABBITMQ_CONSUMER_USER:-rabbit-serve-consumer}"
ingress_password="${RABBITMQ_INGRESS_PASSWORD:?set RABBITMQ_INGRESS_PASSWORD}"
consumer_password="${RABBITMQ_CONSUMER_PASSWORD:?set RABBITMQ_CONSUMER_PASSWORD}"
if [ "$ingress_user" = "$consumer_user" ]; then
  echo "broker_users: the ingress and consumer users must differ" >&2
  exit 2
fi

request_queue="${REQUEST_QUEUE:-rabbit-serve.requests}"
dead_letter_queue="${DEAD_LETTER_QUEUE:-rabbit-serve.requests.dead}"
reply_queue_prefix="${REPLY_QUEUE_PREFIX:-rabbit-serve.replies}"
webhook_queue="${WEBHOOK_QUEUE:-rabbit-serve.webhooks}"
webhook_dead_letter_queue="${WEBHOOK_DEAD_LETTER_QUEUE:-rabbit-serve.webhooks.dead}"

# A name as a regular expression that matches only that name.
quote() { printf '%s' "$1" | sed 's/[][\.*^$()+?{}|]/\\&/g'; }
# Exactly these names.
only() {
  local out="" name
  for name in "$@"; do out="${out:+$out|}$(quote "$name")"; done
  printf '^(%s)$' "$out"
}

replies="^$(quote "$reply_queue_prefix")\\..+\$"
default_exchange='^amq\.default$'

rmq() { "${ctl[@]}" -q "$@"; }

# First column of a listing, one name a line.
names() { rmq "$@" --no-table-headers | cut -f1; }

# Create the user or set its password; the password goes through stdin, never argv.
ensure_user() {
  local user="$1" password="$2"
  if names list_users | grep -qxF -- "$user"; then
    printf '%s\n' "$password" | rmq change_password -- "$user"
  else
    printf '%s\n' "$password" | rmq add_user -- "$user"
  fi
  rmq set_user_tags -- "$user" # no tags: no management UI or HTTP API
}

if ! names list_vhosts | grep -qxF -- "$vhost"; then
  rmq add_vhost -- "$vhost"
fi

ensure_user "$ingress_user" "$ingress_password"
rmq set_permissions -p "$vhost" -- "$ingress_user" "$replies" "$default_exchange" "$replies"

ensure_user "$consumer_user" "$consumer_password"
rmq set_permissions -p "$vhost" -- "$consumer_user" \
  "$(only "$request_queue" "$dead_letter_queue" "$webhook_queue" "$webhook_dead_letter_queue")" \
  "$default_exchange" \
  "$(only "$request_queue" "$dead_letter_queue" "$webhook_queue")"

echo "broker_users: $ingress_user and $consumer_user ready on vhost $vhost"
