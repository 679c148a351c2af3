#!/usr/bin/env python3
"""Publish the four seed samples to Tracely's METRICS stream and print each PubAck.

Needs nats-py and msgpack (pip install nats-py msgpack).

    python3 schemas/examples/publish.py                  # MessagePack
    python3 schemas/examples/publish.py --json           # JSON, with Content-Type
    python3 schemas/examples/publish.py --url nats://host:4222
"""

import argparse
import asyncio
import json
import os
import sys

import msgpack
import nats
from nats.js.errors import NoStreamResponseError

# recorded_at is an RFC 3339 string or integer unix milliseconds; both are shown.
SAMPLES = [
    {"service_id": "S1", "metric_type": "LATENCY_MS", "value": 180,
     "recorded_at": "2026-03-12T09:00:00Z", "id": "seed-S1-LATENCY_MS-0900"},
    {"service_id": "S1", "metric_type": "PACKET_LOSS", "value": 2.1,
     "recorded_at": "2026-03-12T09:00:00Z", "id": "seed-S1-PACKET_LOSS-0900"},
    {"service_id": "S2", "metric_type": "BUFFER_RATIO", "value": 7.5,
     "recorded_at": 1773306300000, "id": "seed-S2-BUFFER_RATIO-0905"},  # 09:05:00Z
    {"service_id": "S3", "metric_type": "ERROR_RATE", "value": 1.9,
     "recorded_at": "2026-03-12T09:10:00Z", "id": "seed-S3-ERROR_RATE-0910"},
]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--url",
        default=os.environ.get("TRACELY_NATS_URL", "nats://127.0.0.1:4222"),
        help="NATS server URL (default: $TRACELY_NATS_URL or nats://127.0.0.1:4222)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="send JSON with Content-Type: application/json instead of MessagePack",
    )
    args = parser.parse_args()

    errors = []

    async def remember(err):  # report connection errors once, below
        errors.append(err)

    try:
        # Two attempts, then give up (nats-py would otherwise retry for two minutes).
        nc = await nats.connect(
            args.url, connect_timeout=5, reconnect_time_wait=1,
            max_reconnect_attempts=1, allow_reconnect=False, error_cb=remember,
        )
    except Exception as e:  # noqa: BLE001 - any failure here means "cannot connect"
        cause = errors[-1] if errors else e
        print(f"error: cannot connect to NATS at {args.url}: {cause!r}", file=sys.stderr)
        return 1

    js = nc.jetstream()
    try:
        for sample in SAMPLES:
            subject = f"metrics.{sample['service_id']}.{sample['metric_type']}"
            # Nats-Msg-Id lets the stream drop repeats within its duplicate window.
            headers = {"Nats-Msg-Id": sample["id"]}
            if args.json:
                headers["Content-Type"] = "application/json"
                payload = json.dumps(sample).encode()
            else:
                headers["Content-Type"] = "application/msgpack"
                payload = msgpack.packb(sample)  # a map with field names
            ack = await js.publish(subject, payload, headers=headers)
            print(f"{subject}: stream={ack.stream} seq={ack.seq} duplicate={bool(ack.duplicate)}")
    except NoStreamResponseError:
        print(f"error: no stream stores {subject}; start Tracely first, it creates METRICS",
              file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001
        print(f"error: publishing {subject} failed: {e!r}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
