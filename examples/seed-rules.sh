#!/usr/bin/env bash
# Creates the three seed rules on a running Tracely (default http://127.0.0.1:8080).
set -euo pipefail
api="${TRACELY_API:-http://127.0.0.1:8080}/api/rules"
post() { curl -fsS -X POST "$api" -H 'Content-Type: application/json' -d "$1"; echo; }
post '{"name": "Latency above 150 ms", "metric_type": "LATENCY_MS", "operator": ">", "threshold": 150, "severity": "HIGH"}'
post '{"name": "Packet loss above 1.5%", "metric_type": "PACKET_LOSS", "operator": ">", "threshold": 1.5, "severity": "MEDIUM", "enabled": false}'
post '{"name": "Buffer ratio above 6", "metric_type": "BUFFER_RATIO", "operator": ">", "threshold": 6, "severity": "MEDIUM"}'
