#!/usr/bin/env bash
# Creates the three seed rules on a running Tracely (TRACELY_API_URL, default
# http://127.0.0.1:8080).
# Needs an admin key in TRACELY_API_KEY; `make run` writes one to .tracely/dev.env.
set -euo pipefail
if [ -z "${TRACELY_API_KEY:-}" ] && [ -f "${TRACELY_DATA_DIR:-.tracely}/dev.env" ]; then
  TRACELY_API_KEY=$(sed -n 's/^TRACELY_API_KEY=//p' "${TRACELY_DATA_DIR:-.tracely}/dev.env")
fi
: "${TRACELY_API_KEY:?set TRACELY_API_KEY to an admin key (tracely apikey create --role admin)}"
api="${TRACELY_API_URL:-http://127.0.0.1:8080}/api/rules"
post() {
  curl -fsS -X POST "$api" -H "Authorization: Bearer $TRACELY_API_KEY" \
    -H 'Content-Type: application/json' -d "$1"
  echo
}
post '{"name": "Latency above 150 ms", "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}'
post '{"name": "Packet loss above 1.5%", "metric_type": "PACKET_LOSS", "operator": ">", "threshold": 1.5, "severity": "MEDIUM", "enabled": false}'
post '{"name": "Buffer ratio above 6", "metric_type": "BUFFER_RATIO", "operator": ">", "threshold": 6, "severity": "MEDIUM"}'
