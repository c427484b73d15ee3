"""A publisher process for the benchmarks: calls ``webhooks.publish()`` N times, as fast as it can or at a rate.

``python -m bench.publisher --count N [--rate R --phase S] [--warmup W]`` sets Django up against the
environment it is given, opens its database connection, prints ``ready`` and waits for ``go <unix time>``
on stdin, so several publishers start together. With a rate, event i is published at
``go time + phase + i / rate`` (an absolute schedule: a late publish does not shift the next ones). The
first W events are of type ``bench.warmup``. At the end it prints one JSON line with what it did and the
CPU seconds its publishing took (``cpu_s``).
"""

import argparse
import json
import os
import sys
import time

PAYLOAD_OVERHEAD = len('{"seq":0000000,"blob":""}')


def payload(size: int, seq: int) -> dict:
    """A JSON object of about ``size`` bytes once encoded."""
    return {"seq": seq, "blob": "x" * max(0, size - PAYLOAD_OVERHEAD)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--type", default="bench.e2e")
    parser.add_argument("--rate", type=float, default=0.0, help="events per second from this process; 0: flat out")
    parser.add_argument("--phase", type=float, default=0.0, help="seconds after the go time of the first publish")
    parser.add_argument("--warmup", type=int, default=0, help="publish this many bench.warmup events first")
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--time-limit", type=float, default=600.0, help="stop publishing after this many seconds")
    args = parser.parse_args()

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from webhooks import publish
    from webhooks.models import Event

    Event.objects.exists()  # open the connection before the clock starts
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if not line or line[0] != "go":
        sys.exit("publisher: no go")
    go = float(line[1]) if len(line) > 1 else time.time()

    total = args.warmup + args.count
    body = payload(args.payload_bytes, 0)
    behind_max = 0.0
    published = 0
    first = last = 0.0
    stop_at = time.monotonic() + args.time_limit
    cpu_before = time.process_time()
    for i in range(total):
        if time.monotonic() > stop_at:
            break
        if args.rate > 0:
            due = go + args.phase + i / args.rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            else:
                behind_max = max(behind_max, -wait)
        body["seq"] = i
        event_type = "bench.warmup" if i < args.warmup else args.type
        publish(event_type, body)
        last = time.time()
        first = first or last
        published += 1
    result = {"published": published, "first": first, "last": last, "behind_max_ms": round(behind_max * 1000, 2)}
    result["cpu_s"] = round(time.process_time() - cpu_before, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
