#!/usr/bin/env bash
# Send the sample images to a running rabbit-serve and print the answers.
#   scripts/send_requests.sh [URL] [IMAGE...]
set -euo pipefail
cd "$(dirname "$0")/.."
url="${1:-http://127.0.0.1:8000}"
shift || true
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(examples/images/chelsea.jpg examples/images/coffee.jpg)

pretty() {
  if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps(d, indent=2))'
  else
    cat
  fi
}

for image in "${images[@]}"; do
  echo "== $image (JSON, base64)"
  payload=$(mktemp)
  printf '{"image": "%s", "top_k": 3}' "$(base64 -w0 "$image")" >"$payload"
  curl -sS -X POST "$url/v1/classify" -H 'content-type: application/json' \
    --data-binary @"$payload" | pretty
  rm -f "$payload"
  echo "== $image (multipart upload)"
  curl -sS -X POST "$url/v1/classify" -F "file=@$image" -F top_k=1 | pretty
done
