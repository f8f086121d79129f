"""A Kafka broker double: TLS listeners, the admin wire protocol, KIP-226 keystore reloads.

Standalone: ``python -m tests.doubles.kafka --broker-id 1 --config server.properties`` (from
the project root; ``python -m tests.doubles.kafka_broker`` too) prints one JSON line with the
listener ports and serves until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
import threading
from collections.abc import Iterator, Mapping

from tests.doubles.kafka.profiles import PROFILES, KafkaProfile, profile_for
from tests.doubles.kafka.server import KafkaBrokerDouble
from tests.doubles.kafka.timing import INSTANT


def read_properties(path: str) -> dict[str, str]:
    """A server.properties file (``key=value`` / ``key: value``, ``#`` comments), or JSON."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    props: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#!":
            continue
        m = re.match(r"([^=:\s]+)\s*[=:\s]?\s*(.*)", line)
        if m:
            props[m.group(1)] = m.group(2)
    return props


def broker_from_properties(
    broker_id: int, props: Mapping[str, str], profile: KafkaProfile | None = None
) -> KafkaBrokerDouble:
    """A double configured like a broker: ``listeners=SSL://127.0.0.1:0,INTERNAL://...``."""
    props = dict(props)
    listeners: dict[str, int] = {}
    host = "127.0.0.1"
    for item in props.pop("listeners", "SSL://127.0.0.1:0").split(","):
        m = re.fullmatch(r"\s*([A-Za-z0-9_]+)://([^:]*):(\d+)\s*", item)
        if not m:
            raise SystemExit(f"bad listener {item!r}")
        listeners[m.group(1)] = int(m.group(3))
        host = m.group(2) or host
    inter = props.pop("inter.broker.listener.name", None)
    return KafkaBrokerDouble(broker_id, listeners, props, inter, host=host, profile=profile)


@contextlib.contextmanager
def _signals_stop() -> Iterator[threading.Event]:
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    yield done


def main(argv: list[str] | None = None) -> int:
    """CLI: start one broker, print ``{"broker_id":..,"ports":{..}}`` and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-id", type=int, default=1)
    parser.add_argument("--config", required=True, help="server.properties (or .json)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="a supported Kafka version and mode (default: the newest)")
    parser.add_argument("--mode", choices=("kraft", "zk"), help="instead of --profile")
    parser.add_argument("--kafka-version", help="major.minor, e.g. 3.6 (instead of --profile)")
    parser.add_argument("--instant", action="store_true",
                        help="no validation cost, apply before answering (timing.INSTANT)")
    args = parser.parse_args(argv)
    if args.profile:
        profile = PROFILES[args.profile]
    else:
        version = None
        if args.kafka_version:
            major, minor = args.kafka_version.split(".")[:2]
            version = (int(major), int(minor))
        profile = profile_for(version, args.mode)
    broker = broker_from_properties(args.broker_id, read_properties(args.config), profile)
    if args.instant:
        broker.timing = INSTANT
    with _signals_stop() as done, broker:
        print(
            json.dumps(
                {
                    "broker_id": broker.broker_id,
                    "ports": broker.ports,
                    "bootstrap": {n: broker.bootstrap(n) for n in broker.ports},
                }
            ),
            flush=True,
        )
        while not done.wait(0.5):
            pass
        for line in broker.log:
            print(line, file=sys.stderr)
    return 0

