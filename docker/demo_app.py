"""Demo producer and consumer for the compose stack (shipped in the image, not in the package).

    python demo_app.py produce --volume /var/run/kafka-pki --pid-file /var/run/kafka-pki/app.pid
    python demo_app.py consume --volume /var/run/kafka-pki --pid-file /var/run/kafka-pki/app.pid
    python demo_app.py setup --volume /var/run/kafka-pki --producer DN --consumer DN

The bootstrap servers come from KAFKA_BOOTSTRAP_SERVERS. The mTLS settings come from the
volume's ``librdkafka.properties`` (written by pki-auth-manager): ``current`` is resolved once
per client, so a client never mixes files of two generations. SIGHUP (tls-monitor's
``reload_action=signal``) closes the client and creates a new one from the current generation.

Every failure is printed on a line starting with ``DEMO_ERROR`` (``docker/rotate-demo.sh``
greps for it); progress lines start with ``DEMO_PROGRESS``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ERROR_MARKER = "DEMO_ERROR"
WARN_MARKER = "DEMO_WARN"
PROGRESS_MARKER = "DEMO_PROGRESS"
RELOAD_MARKER = "DEMO_RELOAD"
PROPERTIES = "librdkafka.properties"
PROGRESS_EVERY = 50
# A transport error whose text says this is a TLS failure (a refused or untrusted certificate
# often surfaces as a plain transport error over TLS 1.3) counts as an error, not a warning.
_TLS_WORDS = ("ssl", "tls", "certificate", "handshake", "alert")
# librdkafka names the broker in its messages ("ssl://host:9093/1: ..."): not a TLS word.
_BROKER_NAME = re.compile(r"\b(?:ssl|plaintext|sasl_ssl|sasl_plaintext)://\S+", re.IGNORECASE)


def log(marker: str, **fields: object) -> None:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    text = " ".join(f"{key}={value}" for key, value in fields.items())
    print(f"{stamp} {marker} {text}", flush=True)


def read_properties(text: str) -> dict[str, str]:
    """Parse a Java-style properties file (``key=value`` lines, ``#``/``!`` comments)."""
    out: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"line {number}: expected key=value")
        out[key.strip()] = value.strip()
    return out


def client_config(volume: Path) -> tuple[dict[str, str], Path]:
    """librdkafka settings of the current generation, with paths pinned to that generation."""
    current = volume / "current"
    generation = current.resolve(strict=True)
    settings = read_properties((generation / PROPERTIES).read_text())
    prefix = f"{current}/"
    for key, value in settings.items():
        if value.startswith(prefix):
            settings[key] = str(generation / value[len(prefix):])
    return settings, generation


def is_error(code: int, reason: str) -> bool:
    """True for failures; False for the transient transport noise librdkafka retries itself."""
    from confluent_kafka import KafkaError

    if code == KafkaError._TRANSPORT:
        text = _BROKER_NAME.sub("", reason).lower()
        return any(word in text for word in _TLS_WORDS)
    return True


def error_callback(role: str) -> Callable[[Any], None]:
    def callback(error: Any) -> None:
        code, reason = int(error.code()), str(error.str())
        marker = ERROR_MARKER if is_error(code, reason) or error.fatal() else WARN_MARKER
        log(marker, role=role, source="client", code=error.name(), reason=repr(reason))
    return callback


def write_pid_file(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


class Signals:
    """SIGHUP asks for a new client; SIGTERM/SIGINT stop the loop."""

    def __init__(self) -> None:
        self.reload = threading.Event()
        self.stop = threading.Event()
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())


def base_config(args: argparse.Namespace, role: str) -> tuple[dict[str, Any], Path]:
    settings, generation = client_config(args.volume)
    config: dict[str, Any] = dict(settings)
    config.update({"bootstrap.servers": args.bootstrap_servers,
                   "client.id": f"demo-{role}",
                   "log.connection.close": False,
                   "error_cb": error_callback(role)})
    return config, generation


def run_producer(args: argparse.Namespace, signals: Signals) -> int:
    from confluent_kafka import Producer

    delivered = 0

    def on_delivery(error: Any, message: Any) -> None:
        nonlocal delivered
        if error is not None:
            log(ERROR_MARKER, role="producer", source="delivery", code=error.name(),
                reason=repr(str(error.str())))
            return
        delivered += 1
        if delivered % PROGRESS_EVERY == 0:
            log(PROGRESS_MARKER, role="producer", delivered=delivered,
                partition=message.partition(), offset=message.offset())

    def make() -> Any:
        config, generation = base_config(args, "producer")
        config.update({"acks": "all", "linger.ms": 5, "message.timeout.ms": 30000})
        log(RELOAD_MARKER, role="producer", generation=generation.name)
        return Producer(config)

    producer = make()
    sequence = 0
    while not signals.stop.is_set():
        if signals.reload.is_set():
            signals.reload.clear()
            left = producer.flush(15)
            if left:
                log(ERROR_MARKER, role="producer", source="reload", undelivered=left)
            producer = make()
        sequence += 1
        producer.produce(args.topic, value=f"{sequence} {time.time():.3f}".encode(),
                         on_delivery=on_delivery)
        producer.poll(args.interval)
    left = producer.flush(15)
    if left:
        log(ERROR_MARKER, role="producer", source="shutdown", undelivered=left)
    return 0


def run_consumer(args: argparse.Namespace, signals: Signals) -> int:
    from confluent_kafka import Consumer, KafkaError

    def make() -> Any:
        config, generation = base_config(args, "consumer")
        config.update({"group.id": args.group, "auto.offset.reset": "earliest"})
        consumer = Consumer(config)
        consumer.subscribe([args.topic])
        log(RELOAD_MARKER, role="consumer", generation=generation.name)
        return consumer

    consumer = make()
    consumed = 0
    while not signals.stop.is_set():
        if signals.reload.is_set():
            signals.reload.clear()
            consumer.close()
            consumer = make()
        message = consumer.poll(1.0)
        if message is None:
            continue
        error = message.error()
        if error is not None:
            if error.code() == KafkaError._PARTITION_EOF:
                continue
            code, reason = int(error.code()), str(error.str())
            log(ERROR_MARKER if is_error(code, reason) else WARN_MARKER, role="consumer",
                source="poll", code=error.name(), reason=repr(reason))
            continue
        consumed += 1
        if consumed % PROGRESS_EVERY == 0:
            log(PROGRESS_MARKER, role="consumer", consumed=consumed,
                partition=message.partition(), offset=message.offset())
    consumer.close()
    return 0


def acl_bindings(topic: str, group: str, producer: str, consumer: str) -> list[Any]:
    # The public names (confluent_kafka.admin re-exports them without __all__ for mypy).
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    def allow(kind: Any, name: str, principal: str, operation: Any) -> Any:
        return AclBinding(kind, name, ResourcePatternType.LITERAL, f"User:{principal}", "*",
                          operation, AclPermissionType.ALLOW)

    return [allow(ResourceType.TOPIC, topic, producer, AclOperation.WRITE),
            allow(ResourceType.TOPIC, topic, consumer, AclOperation.READ),
            allow(ResourceType.GROUP, group, consumer, AclOperation.READ)]


def run_setup(args: argparse.Namespace) -> int:
    """Create the demo topic and the producer's/consumer's ACLs (idempotent, retried)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    settings, _ = client_config(args.volume)
    admin = AdminClient({**settings, "bootstrap.servers": args.bootstrap_servers})
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            topic = NewTopic(args.topic, num_partitions=3, replication_factor=3,
                             config={"min.insync.replicas": "2"})
            for future in admin.create_topics([topic], request_timeout=15).values():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise
            bindings = acl_bindings(args.topic, args.group, args.producer, args.consumer)
            for future in admin.create_acls(bindings, request_timeout=15).values():
                future.result()
        except KafkaException as exc:
            if time.monotonic() > deadline:
                log(ERROR_MARKER, role="setup", reason=repr(str(exc)))
                return 1
            log(WARN_MARKER, role="setup", retrying=repr(str(exc)))
            time.sleep(3)
            continue
        log(PROGRESS_MARKER, role="setup", topic=args.topic, acls=len(bindings))
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo_app", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("produce", "consume", "setup"))
    parser.add_argument("--volume", type=Path, default=Path("/var/run/kafka-pki"))
    parser.add_argument("--pid-file", type=Path, help="written at start (for tls-monitor)")
    parser.add_argument("--bootstrap-servers",
                        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"))
    parser.add_argument("--topic", default="demo")
    parser.add_argument("--group", default="demo-consumer")
    parser.add_argument("--interval", type=float, default=0.2,
                        help="seconds between produced messages")
    parser.add_argument("--producer", help="setup: the producer's certificate DN")
    parser.add_argument("--consumer", help="setup: the consumer's certificate DN")
    parser.add_argument("--timeout", type=float, default=300.0, help="setup: give up after")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.bootstrap_servers:
        print("demo_app: set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    if args.command == "setup":
        if not (args.producer and args.consumer):
            print("demo_app: setup needs --producer and --consumer", file=sys.stderr)
            return 2
        return run_setup(args)
    signals = Signals()  # handlers first: a SIGHUP must never kill the app
    if args.pid_file:
        write_pid_file(args.pid_file)
    try:
        if args.command == "produce":
            return run_producer(args, signals)
        return run_consumer(args, signals)
    finally:
        if args.pid_file:
            args.pid_file.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
