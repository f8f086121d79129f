"""librdkafka's log lines as JSON events, never as its own lines on stderr.

Without a ``logger`` librdkafka prints lines such as
``%6|1733600000.123|FAIL|rdkafka#producer-7| ... Disconnected`` to stderr, between the JSON
objects. Given one, confluent-kafka queues each line and calls
``logger.log(level, "%s [%s] %s", facility, client_name, message)`` when the client is polled
(confluent_kafka.c ``log_cb``), the syslog level already mapped to :mod:`logging`'s: 0-2
CRITICAL, 3 ERROR, 4 WARNING, 5-6 INFO, 7 DEBUG. Lines are delivered only by ``poll()``
(Admin.c: ``rd_kafka_set_log_queue`` to the main queue); an AdminClient's answers come on
librdkafka's background thread, so nothing else polls it: :class:`LogPump` does.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Mapping
from typing import Any, Protocol

#: The event name of every librdkafka line.
EVENT = "librdkafka"
#: How often a pumped client's queued lines are written.
PUMP_INTERVAL = 0.5


class Pollable(Protocol):
    def poll(self, timeout: float) -> Any: ...


def level_name(level: int) -> str:
    """structlog's method for a :mod:`logging` level (as confluent-kafka passes it)."""
    if level >= logging.CRITICAL:
        return "critical"
    if level >= logging.ERROR:
        return "error"
    if level >= logging.WARNING:
        return "warning"
    if level >= logging.INFO:
        return "info"
    return "debug"


class LibrdkafkaLogger:
    """confluent-kafka's ``logger``: each librdkafka line becomes one ``librdkafka`` event
    at its level, with ``facility`` (FAIL, REQTMOUT, ...), ``client`` (rdkafka#producer-7)
    and ``message``."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def log(self, level: int, msg: str, *args: object) -> None:
        if len(args) == 3:
            facility, client, message = (str(a) for a in args)
            fields = {"facility": facility, "client": client, "message": message}
        else:  # not confluent-kafka's format: keep the text whole
            try:
                text = msg % args if args else msg
            except (TypeError, ValueError):
                text = " ".join([msg, *map(str, args)])
            fields = {"message": text}
        try:
            getattr(self._log, level_name(level))(EVENT, **fields)
        except Exception:  # raised here it would end the poll() that called us
            return


def with_logger(settings: Mapping[str, Any], log: Any) -> dict[str, Any]:
    """A client's configuration with librdkafka's lines routed into ``log``."""
    return {**settings, "logger": LibrdkafkaLogger(log)}


class LogPump:
    """Polls one client from a daemon thread, so that its queued log lines are written as they
    come (every ``interval`` seconds) and not at its next use, hours later. ``close`` writes
    what is left and ends the thread; so does the client being freed (it is held weakly, so
    a client its owner forgot is not kept connecting to a broker for ever)."""

    def __init__(self, client: Pollable, interval: float = PUMP_INTERVAL) -> None:
        self._client = weakref.ref(client)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="librdkafka-log")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval) and self._poll():
            pass
        self._poll()

    def _poll(self) -> bool:
        """Serve the client's queue; False once the client is gone."""
        client = self._client()
        if client is None:
            return False
        with contextlib.suppress(Exception):  # a line lost; the client itself is unaffected
            client.poll(0)
        return True

    def close(self) -> None:
        self._stop.set()
