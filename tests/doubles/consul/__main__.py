"""``python -m tests.doubles.consul``: serve a ConsulDouble until killed."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from tests.doubles.consul import ConsulDouble
from tests.doubles.consul.durations import NS_PER_S
from tests.doubles.consul.sessions import SESSION_TTL_MIN_NS


def main(argv: list[str] | None = None) -> int:
    """Serve until killed, after printing one JSON line with the url."""
    parser = argparse.ArgumentParser(description="Consul HTTP API test double")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8500)
    parser.add_argument("--acl-token", default=None)
    parser.add_argument("--session-ttl-min", type=float, default=SESSION_TTL_MIN_NS / NS_PER_S)
    args = parser.parse_args(argv)
    double = ConsulDouble(
        args.host, args.port, acl_token=args.acl_token, session_ttl_min=args.session_ttl_min
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({"url": double.url, "host": double.host, "port": double.port}), flush=True)
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        double.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
