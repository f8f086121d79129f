"""In-process participants (auth manager + rotation participant + a stand-in monitor that
acknowledges every generation) for rotation tests against Consul and Vault."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monitor.reloader import write_ack
from sidecar import layout
from sidecar.consul_store import ConsulStore
from sidecar.coordinator import RotationParticipant
from sidecar.manager import AuthManager
from sidecar.manifest import Acknowledgement
from sidecar.rotation import parse_record
from sidecar.volume import Volume, VolumeError, read_generation
from tests.consul_setup import ConsulTarget
from tests.doubles.consul import ConsulDouble
from tests.manager_kit import RecordingLog, make_config, make_manager, metric
from tests.vault_setup import VaultTarget


def target_for(double: ConsulDouble) -> ConsulTarget:
    """A ConsulTarget on a double, for fault-injection tests."""
    return ConsulTarget(url=double.url, host=double.host, port=double.port, scheme="http",
                        token=None, prefix=f"kafka-pki-test/{uuid.uuid4()}/", double=double)


def acknowledge_generation(volume: Path, number: int) -> None:
    """Acknowledge one generation, as a monitor that is behind would."""
    manifest = read_generation(layout.generation_dir(volume, number))
    write_ack(volume, Acknowledgement(generation=manifest.generation, serial=manifest.serial,
                                      applied_at=dt.datetime.now(dt.UTC).isoformat(),
                                      verified_by="test"))


def acknowledge(volume: Path) -> bool:
    """Do what the TLS monitor does after verifying: acknowledge the current generation."""
    try:
        found = Volume(volume).read_current()
    except VolumeError:
        return False
    if found is None:
        return False
    manifest = found[1]
    current = Volume(volume).read_ack()
    if current is not None and (current.generation, current.serial) == (
            manifest.generation, manifest.serial):
        return False
    write_ack(volume, Acknowledgement(generation=manifest.generation, serial=manifest.serial,
                                      applied_at=dt.datetime.now(dt.UTC).isoformat(),
                                      verified_by="test"))
    return True


@dataclasses.dataclass
class Node:
    name: str
    volume: Path
    manager: AuthManager
    source: RotationParticipant
    log: RecordingLog
    stop: threading.Event
    threads: list[threading.Thread]
    monitor_enabled: threading.Event

    def served(self) -> tuple[tuple[str, ...], str] | None:
        found = Volume(self.volume).read_current()
        return (found[1].trust, found[1].signer) if found else None

    def step(self, ack: int | None = None) -> None:
        """One stepped round: acknowledge generation ``ack``, publish what is served, let this
        participant's keeper decide on a fresh read (if it holds or can take the lock), then run
        one reconcile pass."""
        if ack is not None:
            acknowledge_generation(self.volume, ack)
        state = self.source.node_state(self.manager.current_manifest(),
                                       self.manager.volume.read_ack())
        self.source.registration.ensure(state)
        self.source.keeper.pass_once()
        self.manager.step(self.source)

    def crash(self) -> None:
        """Stop every thread without a word to Consul (kill -9): its session, and the keeper
        lock if it held it, live on until the session's TTL runs out."""
        self.stop.set()
        self.source.registration.close(destroy=False)
        self.source.changed.set()
        for thread in self.threads:
            thread.join(timeout=10)

    def halt(self, destroy: bool = True) -> None:
        self.stop.set()
        self.source.changed.set()
        for thread in self.threads:
            thread.join(timeout=10)
        self.source.close(destroy=destroy)


class Cluster:
    """N participants sharing one Consul prefix and one Vault."""

    def __init__(self, consul: ConsulTarget, vault: VaultTarget, base: Path,
                 **overrides: Any) -> None:
        self.consul = consul
        self.vault = vault
        self.base = base
        self.overrides = overrides
        self.nodes: dict[str, Node] = {}
        cluster_prefix = consul.prefix.strip("/")
        self.config_prefix, self.cluster = cluster_prefix.rsplit("/", 1)
        self.store = ConsulStore(consul.url, consul.prefix, consul.token)

    def set_root(self, value: str) -> None:
        self.store.put("active-root", value.encode())

    def start(self, name: str, role: str = "broker", monitor: bool = True, run: bool = True,
              **overrides: Any) -> Node:
        """A participant; with ``run=False`` nothing runs until the test calls
        ``node.manager.step(node.source)`` and acknowledges by hand."""
        volume = self.base / name
        secrets = self.base / f"{name}-secrets"
        secrets.mkdir(parents=True, exist_ok=True)
        settings = {"consul_addr": self.consul.url, "consul_token": self.consul.token,
                    "consul_prefix": self.config_prefix, "cluster": self.cluster,
                    "node_id": name, "node_role": role, "root": None, "watch_wait": 5,
                    "subject": f"CN={name}.kafka.test,OU=kafka,O=Example",
                    "dns_sans": [f"{name}.kafka.test"], "ip_sans": [],
                    **self.overrides, **overrides}
        config = make_config(self.vault.url, self.vault.token, volume, secrets, **settings)
        manager, metrics, log = make_manager(config)
        stop = threading.Event()
        source = RotationParticipant.from_config(config, manager, metrics, log, stop)
        source.keeper_thread = run  # stepped by hand: the test runs the keeper's passes too
        source.fresh_reads = not run  # and each pass reads what the keeper just wrote
        enabled = threading.Event()
        if monitor:
            enabled.set()

        def monitor_loop() -> None:
            while not stop.wait(0.05):
                if enabled.is_set():
                    acknowledge(volume)

        threads = [threading.Thread(target=manager.run, args=(source, stop), daemon=True),
                   threading.Thread(target=monitor_loop, daemon=True)] if run else []
        for thread in threads:
            thread.start()
        node = Node(name, volume, manager, source, log, stop, threads, enabled)
        self.nodes[name] = node
        return node

    def keepers(self) -> list[Node]:
        """The participants that believe they hold the keeper lock now."""
        return [n for n in self.nodes.values() if n.source.keeper.holding]

    def keeper_metric(self, name: str) -> float:
        """A metric the keeper alone exports (0 on the others): the largest value."""
        return max((metric(n.manager.metrics, name) for n in self.nodes.values()), default=0.0)

    def record(self) -> Any:
        raw = self.store.read().value("rotation")
        return parse_record(raw) if raw else None

    def wait_until(self, predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; record={self.record()}")

    def converged(self, root: str) -> bool:
        record = self.record()
        if record is None or not record.stable or record.to_root != root:
            return False
        return all(n.served() == ((root,), root) for n in self.nodes.values()
                   if not n.stop.is_set())

    def stop(self) -> None:
        for node in self.nodes.values():
            if not node.stop.is_set():
                node.halt()
