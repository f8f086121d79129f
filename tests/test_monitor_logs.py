"""Every line tls-monitor writes is one JSON object, librdkafka's included."""

from __future__ import annotations

import json
import logging
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.kafka_logging import LibrdkafkaLogger, LogPump, level_name
from tests.console import Console
from tests.manager_kit import RecordingLog
from tests.monitor_kit import PHASES, Rig, broker_rig
from tests.test_stop import ALTER, broker_monitor_env
from tests.vault_setup import VaultTarget


@pytest.fixture
def rig(vault: VaultTarget, tmp_path: Path) -> Iterator[Rig]:
    with broker_rig(vault, tmp_path) as rig:
        rig.require_double()
        yield rig


def not_json_objects(text: str) -> list[str]:
    """The lines of ``text`` that are not one JSON object each."""
    bad = []
    for line in text.splitlines():
        try:
            if isinstance(json.loads(line), dict):
                continue
        except ValueError:
            pass
        bad.append(line)
    return bad


def test_a_broker_disconnect_during_an_alter_writes_only_json(rig: Rig, tmp_path: Path) -> None:
    """The broker drops the monitor's connection on receiving its alter: librdkafka reports
    the disconnect, and the line is a ``librdkafka`` event, not ``%6|...|FAIL|...``."""
    broker = rig.require_double()
    dropped = threading.Event()

    def drop_the_first_alter(api_key: int, version: int) -> None:
        if api_key == ALTER and not dropped.is_set():
            dropped.set()
            raise ConnectionResetError("the test drops the connection")  # the double closes it

    log = tmp_path / "monitor.log"
    monitor = Console("tls-monitor", [], broker_monitor_env(rig, MONITOR_RETRY_INTERVAL="1"),
                      log)
    try:
        monitor.wait_for("reload_verified")
        broker.on_request = drop_the_first_alter
        manifest = rig.install(PHASES[1])
        monitor.wait_for("reload_verified", timeout=60,
                         where=lambda e: e.get("generation") == manifest.generation)
        assert dropped.is_set()
        monitor.wait_for("librdkafka", timeout=30, where=lambda e: e.get("facility") == "FAIL")
    finally:
        monitor.stop()
    text = log.read_text()
    assert not not_json_objects(text), text
    lines = [e for e in monitor.events() if e["event"] == "librdkafka"]
    fail = next(e for e in lines if e["facility"] == "FAIL")
    assert fail["component"] == "tls-monitor" and fail["client"].startswith("rdkafka#")
    assert fail["level"] in ("info", "warning", "error") and "isconnected" in fail["message"]


@pytest.mark.parametrize(("level", "name"), [
    (logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
    (logging.INFO, "info"), (logging.DEBUG, "debug")])
def test_confluent_kafkas_levels_become_structlogs(level: int, name: str) -> None:
    assert level_name(level) == name


def test_a_line_becomes_one_event_with_its_facility() -> None:
    log = RecordingLog()
    logger = LibrdkafkaLogger(log)
    logger.log(logging.INFO, "%s [%s] %s", "FAIL", "rdkafka#producer-7",
               "ssl://b1:9093/1: Disconnected: SSL connection closed by peer")
    logger.log(logging.WARNING, "%d lines %s", "not-a-number", "x")  # another format: kept
    assert log.events == [
        {"level": "info", "event": "librdkafka", "facility": "FAIL",
         "client": "rdkafka#producer-7",
         "message": "ssl://b1:9093/1: Disconnected: SSL connection closed by peer"},
        {"level": "warning", "event": "librdkafka", "message": "%d lines %s not-a-number x"}]


def test_the_pump_serves_a_client_until_closed() -> None:
    polled = threading.Event()
    calls: list[float] = []

    class Client:
        def poll(self, timeout: float) -> Any:
            calls.append(timeout)
            polled.set()
            return 0

    client = Client()
    pump = LogPump(client, interval=0.01)
    assert polled.wait(10), "polled without anyone asking"
    pump.close()
    pump._thread.join(10)
    assert not pump._thread.is_alive() and set(calls) == {0}


def test_the_pump_lets_a_forgotten_client_go() -> None:
    """The thread holds the client weakly: dropped by its owner, it is freed and the pump
    ends by itself."""

    class Client:
        def poll(self, timeout: float) -> Any:
            return 0

    client = Client()
    gone = threading.Event()
    weakref.finalize(client, gone.set)
    pump = LogPump(client, interval=0.01)
    del client
    assert gone.wait(10), "freed although the pump polls it"
    pump._thread.join(10)
    assert not pump._thread.is_alive()
