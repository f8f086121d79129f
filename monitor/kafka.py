"""Talking to the broker: dynamic config alters (AdminClient) and served-certificate checks."""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from cryptography import x509

from monitor.kafka_logging import LogPump, with_logger
from sidecar import layout
from sidecar.lifecycle import STOP_CHECK, Stopped

# ApiVersions v0: the smallest Kafka request every broker answers, even before auth.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, 11) + b"tls-monitor"


#: Kafka error codes (org.apache.kafka.common.protocol.Errors) and what they mean to a reload.
_REFUSAL_KINDS = {
    40: "config_refused",  # INVALID_CONFIG
    42: "config_refused",  # INVALID_REQUEST: every SslFactory validation failure, any version
    44: "config_refused",  # POLICY_VIOLATION (alter.config.policy.class.name)
    31: "not_authorized",  # CLUSTER_AUTHORIZATION_FAILED: no ALTER_CONFIGS on the cluster
    7: "unavailable",  # REQUEST_TIMED_OUT
    41: "unavailable",  # NOT_CONTROLLER (KRaft: forwarded to a controller that moved)
}


def refusal_kind(code: int | None) -> str:
    """What a failed alter means, from Kafka's error code alone.

    The refusal's text differs by Kafka version and mode (ZooKeeper mode prefixes "Invalid
    config value for resource ConfigResource(...)"; before 3.7 one message covers a DN or a
    SAN change, later two; a refused signer switch reads "Empty client certificate chain" on
    2.4 and a PKIX failure elsewhere), so it is logged, never parsed. ``transport``: no answer
    from the broker (librdkafka's own negative codes, timeouts, TLS)."""
    if code is None or code < 0:
        return "transport"
    return _REFUSAL_KINDS.get(code, "broker_error")


class KafkaRefused(Exception):
    """The broker refused (or failed) the alter; ``code`` is Kafka's error code if known,
    ``kind`` what it means (``refusal_kind``)."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code
        self.kind = refusal_kind(code)


def default_log() -> Any:
    """Where librdkafka's lines go when no log is given: the monitor's JSON log."""
    return structlog.get_logger().bind(component="tls-monitor")


def admin_config(bootstrap: str, generation_dir: Path, hostname_verification: bool,
                 timeout: float) -> dict[str, str | int | float]:
    """AdminClient settings: SSL with a generation's PEM files."""
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": str(generation_dir / layout.CA_BUNDLE_PEM),
        "ssl.certificate.location": str(generation_dir / layout.FULLCHAIN_PEM),
        "ssl.key.location": str(generation_dir / layout.KEY_PEM),
        "ssl.endpoint.identification.algorithm": "https" if hostname_verification else "none",
        "socket.timeout.ms": int(timeout * 1000),
        "request.timeout.ms": int(timeout * 1000),
    }


def alter_broker_configs(config: Mapping[str, str | int | float], broker_id: int,
                         settings: Mapping[str, str], timeout: float,
                         stop: threading.Event | None = None,
                         admin: AdminClient | None = None, log: Any = None) -> None:
    """IncrementalAlterConfigs SET on the broker resource (with ``admin``, or a client made for
    this call, its librdkafka lines into ``log``); KafkaRefused on any failure, Stopped as soon
    as ``stop`` is set while waiting for the answer."""
    if admin is None:
        own = AdminClient(with_logger(config, log or default_log()))
        pump = LogPump(own)
        try:
            return alter_broker_configs(config, broker_id, settings, timeout, stop, own)
        finally:
            pump.close()
    entries = [ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
               for name, value in settings.items()]
    resource = ConfigResource(ResourceType.BROKER, str(broker_id), incremental_configs=entries)
    try:
        future = admin.incremental_alter_configs([resource], request_timeout=timeout)[resource]
        _await(future, timeout + 5, stop)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if isinstance(error, KafkaError):
            raise KafkaRefused(f"Kafka refused the reload: {error.str()}", error.code()) from None
        raise KafkaRefused(f"Kafka refused the reload: {exc}", None) from None
    except Stopped:
        raise
    except Exception as exc:  # timeouts and transport errors surface as plain exceptions
        raise KafkaRefused(f"alter failed: {type(exc).__name__}: {exc}", None) from None


class BrokerAdmin:
    """One AdminClient kept between alters, so an alter finds its connection open.

    A new client costs a TLS connection to the bootstrap listener, a Metadata request and a
    second TLS connection to the broker by id before the alter can be sent (tens of ms on an
    idle broker, ~0.1 s on a busy one). The client is made from one generation's PEM files
    (the one the broker is known to accept) and kept while that is the generation asked for;
    it is dropped after any failure that is not the broker's answer (transport, timeout, TLS),
    so the next alter reconnects from scratch. ``warm`` makes it and opens the connection to
    the broker ahead of the next generation (a DescribeConfigs of the broker, answer unused).
    The client's librdkafka lines go into ``log`` (see :mod:`monitor.kafka_logging`).
    """

    def __init__(self, bootstrap: str, broker_id: int, hostname_verification: bool,
                 timeout: float, log: Any = None) -> None:
        self.bootstrap = bootstrap
        self.broker_id = broker_id
        self.hostname_verification = hostname_verification
        self.timeout = timeout
        self.log = log if log is not None else default_log()
        self._client: AdminClient | None = None
        self._material: Path | None = None
        self._pump: LogPump | None = None

    def client(self, generation_dir: Path) -> AdminClient:
        """The kept client if it was made from ``generation_dir``, else a new one."""
        if self._client is None or self._material != generation_dir:
            self.drop()
            settings = admin_config(self.bootstrap, generation_dir, self.hostname_verification,
                                    self.timeout)
            self._client = AdminClient(with_logger(settings, self.log))
            self._material = generation_dir
            self._pump = LogPump(self._client)
        return self._client

    def warm(self, generation_dir: Path) -> None:
        """Have a client for ``generation_dir`` connected to the broker before it is needed."""
        resource = ConfigResource(ResourceType.BROKER, str(self.broker_id))
        try:
            future = self.client(generation_dir).describe_configs(
                [resource], request_timeout=self.timeout)[resource]
        except Exception:  # only a head start: the alter connects itself if this failed
            self.drop()
            return
        future.add_done_callback(lambda f: f.exception())  # the answer does not matter

    def alter(self, generation_dir: Path, settings: Mapping[str, str],
              stop: threading.Event | None = None) -> None:
        """``alter_broker_configs`` on the kept client; KafkaRefused as it raises."""
        try:
            alter_broker_configs({}, self.broker_id, settings, self.timeout, stop,
                                 admin=self.client(generation_dir))
        except KafkaRefused as exc:
            if exc.kind == "transport":  # no answer: reconnect from scratch next time
                self.drop()
            raise

    def alive_brokers(self, generation_dir: Path) -> set[int]:
        """Ids of the brokers the cluster shows alive (Metadata: in KRaft the registered,
        unfenced ones); KafkaRefused if the broker does not answer."""
        try:
            metadata = self.client(generation_dir).list_topics(timeout=self.timeout)
        except KafkaException as exc:
            self.drop()
            error = exc.args[0] if exc.args else None
            code = error.code() if isinstance(error, KafkaError) else None
            raise KafkaRefused(f"cannot read the cluster's brokers: {exc}", code) from None
        return set(metadata.brokers)

    def drop(self) -> None:
        """Forget the client; the next alter makes a new one."""
        if self._pump is not None:
            self._pump.close()
        self._client = None
        self._material = None
        self._pump = None


def _await(future: concurrent.futures.Future[object], timeout: float,
           stop: threading.Event | None) -> None:
    """The future's result within ``timeout`` seconds, looking at ``stop`` meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            future.result(timeout=max(0.0, min(left, STOP_CHECK)))
            return
        except concurrent.futures.TimeoutError:
            if stop is not None and stop.is_set():
                raise Stopped("stopping: alter abandoned") from None
            if left <= STOP_CHECK:
                raise


def served_certificate(host: str, port: int, context: ssl.SSLContext,
                       timeout: float = 5.0) -> x509.Certificate:
    """Handshake with a listener, exchange one Kafka request, return the served certificate.

    Reading matters: over TLS 1.3 a refused client certificate only shows on the first read.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        tls.sendall(struct.pack(">i", len(_API_VERSIONS)) + _API_VERSIONS)
        head = tls.recv(4)
        if len(head) < 4:
            raise ConnectionError(f"{host}:{port} closed the connection without answering")
        if der is None:
            raise ConnectionError(f"{host}:{port} presented no certificate")
        return x509.load_der_x509_certificate(der)
