"""Building an auth manager against a Vault target for tests, and recording its logs."""

from __future__ import annotations

import dataclasses
import json
import random
import traceback
from pathlib import Path
from typing import Any

from sidecar.cli import build_manager
from sidecar.config import AuthManagerConfig
from sidecar.manager import AuthManager
from sidecar.metrics import AuthManagerMetrics

PASSWORD = "store-pass-0123"
SUBJECT = "CN=broker-1.kafka.test,OU=kafka,O=Example"


class RecordingLog:
    """A structlog-like logger that keeps every event (and its JSON rendering)."""

    def __init__(self, **bound: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._bound = bound

    def bind(self, **fields: Any) -> RecordingLog:
        child = RecordingLog(**{**self._bound, **fields})
        child.events = self.events
        return child

    def _emit(self, level: str, event: str, **fields: Any) -> None:
        self.events.append({"level": level, "event": event, **self._bound, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, **fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, **fields)

    def exception(self, event: str, **fields: Any) -> None:
        """structlog's ``exception``: an error with the traceback (kept as its text)."""
        self._emit("error", event, exception=traceback.format_exc(), **fields)

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def text(self) -> str:
        return "\n".join(json.dumps(e, default=str) for e in self.events)


class ManualClock:
    """A monotonic clock that moves only when told (``AuthManager.clock``, the back-off's)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def password_file(directory: Path) -> Path:
    path = directory / "store-password"
    path.write_text(PASSWORD + "\n")
    path.chmod(0o600)
    return path


def make_config(url: str, token: str, volume: Path, secrets: Path, **overrides: Any
                ) -> AuthManagerConfig:
    """A static-mode config (root A) for a broker; override any field."""
    values: dict[str, Any] = dict(
        subject=SUBJECT, dns_sans=["broker-1.kafka.test", "localhost"], ip_sans=["127.0.0.1"],
        output_dir=volume, store_password_file=password_file(secrets), vault_addr=url,
        vault_token=token, root="pki_root_a", ttl="1h", backoff_initial=0.05,
        backoff_max=0.2, listen="")
    values.update(overrides)
    return AuthManagerConfig(**values)


def make_manager(config: AuthManagerConfig, seed: int = 7
                 ) -> tuple[AuthManager, AuthManagerMetrics, RecordingLog]:
    metrics = AuthManagerMetrics()
    log = RecordingLog()
    manager = build_manager(config, metrics, log)
    manager.rng = random.Random(seed)
    return manager, metrics, log


def metric(metrics: AuthManagerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def replace(config: AuthManagerConfig, **changes: Any) -> AuthManagerConfig:
    return dataclasses.replace(config, **changes)


def paced_manager(url: str, token: str, tmp_path: Path, backoff_initial: float = 2.0,
                  backoff_max: float = 60.0
                  ) -> tuple[AuthManager, AuthManagerMetrics, RecordingLog, ManualClock]:
    """A static-mode manager (volume ``tmp_path/volume``) whose back-off runs on a
    ManualClock: the test moves the time."""
    config = make_config(url, token, tmp_path / "volume", tmp_path,
                         backoff_initial=backoff_initial, backoff_max=backoff_max)
    manager, metrics, log = make_manager(config)
    manager.clock = clock = ManualClock()
    return manager, metrics, log, clock
