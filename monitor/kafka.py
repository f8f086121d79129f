"""Talking to the broker: dynamic config alters (AdminClient) and served-certificate checks."""

from __future__ import annotations

import concurrent.futures
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType
from cryptography import x509

from sidecar import layout
from sidecar.lifecycle import STOP_CHECK, Stopped

# ApiVersions v0: the smallest Kafka request every broker answers, even before auth.
_API_VERSIONS = struct.pack(">hhih", 18, 0, 1, 11) + b"tls-monitor"


class KafkaRefused(Exception):
    """The broker refused (or failed) the alter; ``code`` is Kafka's error code if known."""

    def __init__(self, message: str, code: int | None) -> None:
        super().__init__(message)
        self.code = code


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
                         on_admin: Callable[[], None] | None = None) -> None:
    """IncrementalAlterConfigs SET on the broker resource; KafkaRefused on any failure,
    Stopped as soon as ``stop`` is set while waiting for the answer. ``on_admin`` is called
    once the client exists (the step timings)."""
    admin = AdminClient(dict(config))
    if on_admin is not None:
        on_admin()
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
