"""A broker beside its sidecars: the auth manager writes the volume the broker's listeners
are configured on, and the TLS monitor reloads it. The broker is the double, or a real one
(KAFKA_BOOTSTRAP_SERVERS + KAFKA_TEST_VOLUME_DIR: the volume its listeners point at)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from monitor.config import MonitorConfig
from monitor.metrics import MonitorMetrics
from monitor.reloader import Reloader
from monitor.stores import STORE_FILES
from sidecar import layout
from sidecar.manager import AuthManager
from sidecar.manifest import Manifest
from sidecar.renewal import Desired
from tests.doubles.kafka import KafkaBrokerDouble
from tests.manager_kit import PASSWORD, RecordingLog, make_config, make_manager
from tests.vault_setup import VaultTarget

A = "pki_root_a"
B = "pki_root_b"
PHASES = [Desired(A, (A,)), Desired(A, (A, B)), Desired(B, (A, B)), Desired(B, (B,))]


@dataclasses.dataclass
class Rig:
    volume: Path
    manager: AuthManager
    broker: KafkaBrokerDouble | None
    addresses: dict[str, str]
    store_type: str
    secrets: Path

    def install(self, desired: Desired) -> Manifest:
        """The auth manager writes a generation for ``desired``."""
        return self.manager.reconcile(desired)

    def monitor(self, **overrides: Any) -> tuple[Reloader, MonitorMetrics, RecordingLog]:
        listeners = [f"{name}={addr}" for name, addr in self.addresses.items()]
        settings: dict[str, Any] = dict(
            volume_dir=self.volume, mode="broker", keystore_type=self.store_type,
            store_password_file=self.secrets / "store-password",
            bootstrap_servers=self.addresses["SSL"],
            broker_id=int(os.environ.get("KAFKA_BROKER_ID", "1")), listeners=listeners,
            inter_broker_listener="INTERNAL" if "INTERNAL" in self.addresses else None,
            admin_hostname_verification=False, verify_timeout=5.0, listen="")
        settings.update(overrides)
        metrics, log = MonitorMetrics(), RecordingLog()
        return Reloader(MonitorConfig(**settings), metrics, log), metrics, log

    def require_double(self) -> KafkaBrokerDouble:
        if self.broker is None:
            pytest.skip("needs the broker double's fault controls")
        return self.broker


def broker_settings(volume: Path, store_type: str, controller: bool = False) -> dict[str, str]:
    """Both listeners on the volume's stable current/ stores, client auth required; with
    ``controller``, a KRaft CONTROLLER listener on them too, asking no client certificate
    (SASL_SSL: its Raft clients authenticate with SASL PLAIN)."""
    keystore, truststore = STORE_FILES[store_type]
    current = volume / layout.CURRENT
    base = {"ssl.keystore.type": store_type, "ssl.keystore.location": str(current / keystore),
            "ssl.truststore.type": store_type,
            "ssl.truststore.location": str(current / truststore),
            "ssl.client.auth": "required"}
    if store_type != "PEM":
        base |= {"ssl.keystore.password": PASSWORD, "ssl.key.password": PASSWORD,
                 "ssl.truststore.password": PASSWORD}
    listeners = ("ssl", "internal", "controller") if controller else ("ssl", "internal")
    out = {f"listener.name.{listener}.{k}": v for listener in listeners for k, v in base.items()}
    if controller:
        out["listener.name.controller.ssl.client.auth"] = "none"
        out["controller.listener.names"] = "CONTROLLER"
    return out


@contextmanager
def broker_rig(vault: VaultTarget, tmp_path: Path, store_type: str = "PKCS12",
               first: Desired = PHASES[0], controller: bool = False,
               **manager_overrides: Any) -> Iterator[Rig]:
    """Material for ``first`` on the volume, and a broker serving it (with ``controller``, a
    KRaft broker with a CONTROLLER listener and its Raft client)."""
    real = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if real and not os.environ.get("KAFKA_TEST_VOLUME_DIR"):
        pytest.fail("KAFKA_BOOTSTRAP_SERVERS is set but KAFKA_TEST_VOLUME_DIR (the volume the "
                    "broker's listeners read) is not: see docs/testing.md")
    volume = Path(os.environ["KAFKA_TEST_VOLUME_DIR"]) if real else tmp_path / "volume"
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    config = make_config(vault.url, vault.token, volume, secrets, **manager_overrides)
    manager = make_manager(config)[0]
    manager.reconcile(first)
    if real:
        addresses = {"SSL": real.split(",")[0]}
        if os.environ.get("KAFKA_INTERNAL_BOOTSTRAP"):
            addresses["INTERNAL"] = os.environ["KAFKA_INTERNAL_BOOTSTRAP"]
        yield Rig(volume, manager, None, addresses, os.environ.get("KAFKA_STORE_TYPE",
                                                                     store_type), secrets)
        return
    listeners = {"SSL": 0, "INTERNAL": 0} | ({"CONTROLLER": 0} if controller else {})
    broker = KafkaBrokerDouble(1, listeners, broker_settings(volume, store_type, controller),
                               "INTERNAL")
    broker.start()
    try:
        yield Rig(volume, manager, broker, {n: broker.bootstrap(n) for n in broker.ports},
                  store_type, secrets)
    finally:
        broker.stop()


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 15) -> None:
    """Poll ``predicate`` until it is true; AssertionError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def supervised_sleeper(pid_file: Path) -> Iterator[int]:
    """A supervisor loop that starts a sleeping process again whenever it exits, writing its
    pid to ``pid_file`` (what the restart action expects); yields the first pid."""
    supervisor = subprocess.Popen([sys.executable, "-c", f"""
import subprocess, sys, pathlib
while True:
    p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    pathlib.Path({str(pid_file)!r}).write_text(str(p.pid))
    p.wait()
"""])
    try:
        wait_for(lambda: pid_file.exists() and pid_file.read_text().strip().isdigit(),
                 "the supervised process")
        yield int(pid_file.read_text())
    finally:
        supervisor.kill()  # first, so that nothing starts the process again
        supervisor.wait()
        with contextlib.suppress(OSError, ValueError):  # then the process it left running
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
