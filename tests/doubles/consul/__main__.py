"""``python -m tests.doubles.consul``: serve a ConsulDouble until killed.

With ``--datacenters dc1,dc2`` it serves one double per datacenter, WAN-joined, and prints
their urls (``urls``; ``url`` is the first's); then lines on stdin control the WAN:
``cut dc1 dc2`` / ``restore dc1 dc2`` (each answered with ``{}``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import signal
import sys
import threading

from tests.doubles.consul import ConsulDouble, partition
from tests.doubles.consul.durations import NS_PER_S
from tests.doubles.consul.sessions import SESSION_TTL_MIN_NS


def _control(doubles: dict[str, ConsulDouble]) -> None:
    for line in sys.stdin:
        words = line.split()
        if len(words) == 3 and words[0] in ("cut", "restore") and \
                words[1] in doubles and words[2] in doubles:
            partition(doubles[words[1]], doubles[words[2]], cut=words[0] == "cut")
            print("{}", flush=True)
        elif words:
            print(json.dumps({"error": f"unknown command {line.strip()!r}"}), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Serve until killed, after printing one JSON line with the url."""
    parser = argparse.ArgumentParser(description="Consul HTTP API test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--acl-token", default=None)
    parser.add_argument("--session-ttl-min", type=float, default=SESSION_TTL_MIN_NS / NS_PER_S)
    parser.add_argument("--datacenters", default="dc1",
                        help="one double per datacenter, WAN-joined (other ports: free ones)")
    args = parser.parse_args(argv)
    doubles: dict[str, ConsulDouble] = {}
    for k, dc in enumerate(args.datacenters.split(",")):
        doubles[dc] = ConsulDouble(
            args.host, args.port if k == 0 else 0, acl_token=args.acl_token,
            session_ttl_min=args.session_ttl_min, datacenter=dc)
    for a, b in itertools.combinations(doubles.values(), 2):
        a.join_wan(b)
    first = next(iter(doubles.values()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({"url": first.url, "host": first.host, "port": first.port,
                      "urls": {dc: d.url for dc, d in doubles.items()}}), flush=True)
    if len(doubles) > 1:
        threading.Thread(target=_control, args=(doubles,), daemon=True).start()
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for double in doubles.values():
            double.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
