"""Rotation drill under live mTLS traffic, with faults.

    python -m tests.drill --brokers 3 --clients 3 [--fault NAME ...] [--keep DIR] [--prometheus]

Vault, Consul and the brokers are test doubles (in this process); every broker and every
client gets a real ``pki-auth-manager`` and ``tls-monitor`` as separate OS processes sharing a
per-participant volume, as deployed. Clients are simulated apps: their monitor reloads them
through an HTTP hook, after which they use the new material. Traffic runs for the whole drill:
every client to every broker (client listener) and every broker to every other broker
(inter-broker listener), each attempt a full handshake plus a read.

With ``--prometheus`` every sidecar listens on a port of its own and a real Prometheus
(``tests/prom.py``) scrapes them all every second and evaluates the shipped rules
(deploy/monitoring) with their durations scaled down (``PROMETHEUS_SCALE``); the report lists
every alert that went pending or firing, with its times.

With ``--keep DIR`` the volumes and the sidecars' logs stay in DIR, and ``timeline.svg`` there
draws the drill (``tests/drill_picture.py``): one row per participant, the material it served
over time, reloads, faults and failed handshakes.

With ``--fault impersonation`` every participant logs in with an AppRole of its own and signs
with the least-privilege roles (``tests.vault_setup.prepare_least_privilege``: ``kafka-broker``
/ ``kafka-client``, allowed names templated on the AppRole); at phase 1 of the rotation the
first client's auth manager is killed and started again with a broker's subject. Vault must
refuse it (400 "common name ... not allowed by this role"), no generation may appear on that
client's volume and its old material keeps serving the traffic; then the client's auth manager
is started again correctly, and the rotation converges *with* the client. Consul runs with ACLs
on (default deny) and every participant holds a token of its own from the shipped policy; with
the client's token the drill tries to flip ``active-root`` and to overwrite a broker's report:
both must be refused. The report says ``impersonation=refused`` (or what happened instead) on
a line before the last.

Ends with ``failed_handshakes=<n> converged=<yes|no> rotation_seconds=<s>`` and exits non-zero
if a handshake between two live participants failed or the rotation did not converge.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from monitor.checks import client_context
from monitor.kafka import served_certificate
from sidecar import layout
from sidecar.consul_store import ConsulError, ConsulStore
from sidecar.rotation import RotationRecord, parse_record
from sidecar.volume import Volume, VolumeError, read_generation
from tests.consul_setup import participant_rules
from tests.doubles.consul import ConsulDouble, partition
from tests.doubles.kafka import KafkaBrokerDouble
from tests.drill_controllers import Controllers
from tests.monitor_kit import broker_settings
from tests.prom import JOBS, AlertSeen, Prometheus
from tests.vault_setup import BROKER_ROLE, CLIENT_ROLE, FaultyVault, prepare_least_privilege, server

FAULTS = ("kill-auth-manager", "kill-monitor", "vault-outage", "consul-restart",
          "broker-refuses", "volume-full", "volume-read-only", "malformed-root", "rollback",
          "third-root", "client-reload-fails", "impersonation", "controller-restarts",
          "wan-partition")
#: The alerts the client-reload-fails fault must bring to firing (with --prometheus).
RELOAD_FAILS_ALERTS = ("PkiRotationPhaseStuck", "PkiRotationParticipantBehind",
                       "TlsMonitorReloadFailing")
#: --prometheus: the rules' durations times this (for: 10m -> 20s, [15m] -> [30s]).
PROMETHEUS_SCALE = 1 / 30
#: controller-restarts: certificates that renew every ~20-30 s, and renewals before the flip.
RENEWING_TTL = "45s"
RENEWALS_FIRST = 2
# Root ignores file modes through these capabilities: the volume-read-only victim runs without.
DAC_CAPABILITIES = ("dac_override", "dac_read_search", "fowner")
#: Teardown: how long a sidecar may take to exit after SIGTERM before it is killed -9.
STOP_GRACE = 10.0
#: Teardown: how long to wait for a sidecar started moments ago (a kill fault's restart) to
#: log ``started`` before sending it SIGTERM (earlier, the signal finds no handler yet).
START_GRACE = 10.0
PASSWORD = "drill-store-pass"
PREFIX, CLUSTER = "kafka-pki", "drill"
#: The roots the drill rotates between: a Vault PKI mount each (the default), or three issuers
#: of one mount (``--roots issuers``, Vault 1.11+). The drill reads A, B and C when it runs.
ROOT_LAYOUTS = {"mounts": ("pki_root_a", "pki_root_b", "pki_root_c"),
                "issuers": ("pki:root-a", "pki:root-b", "pki:root-c")}
A, B, C = ROOT_LAYOUTS["mounts"]


def use_roots(layout: str) -> None:
    """Rotate between the roots of ``layout`` (see ROOT_LAYOUTS) from now on."""
    global A, B, C
    A, B, C = ROOT_LAYOUTS[layout]


def start_vault() -> FaultyVault:
    """The tests' Vault (OpenBao, or VAULT_ADDR) behind the fault proxy, holding fresh roots
    A, B and C: one mount each, or one mount with three issuers."""
    vault = FaultyVault(*server(), mounts=()).start()
    for mount in sorted({root.split(":")[0] for root in (A, B, C)}):
        vault.add_mount(mount, with_root=":" not in A)
    for root in (A, B, C):
        mount, _, issuer = root.partition(":")
        if issuer:
            vault.add_issuer(mount, issuer)
    return vault


def short_root(root: str) -> str:
    """pki_root_b -> B: the drill's mounts differ only in their last letter."""
    return root.removeprefix("pki_root_").upper()


def log(message: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class Mark:
    """A fault or an operator action, at one moment or over a span, for every row or one."""

    label: str
    at: float
    until: float | None = None
    who: str | None = None  # the participant it concerns; None: the whole drill
    kind: str = "fault"  # or "operator"


@dataclasses.dataclass(frozen=True)
class StopTime:
    """How one sidecar ended at teardown."""

    kind: str  # pki-auth-manager or tls-monitor
    participant: str
    outcome: str  # "exited" (by itself after SIGTERM), "killed" (-9 after STOP_GRACE),
    #               "killed by a fault" (kill -9, not restarted), "exited before teardown"
    seconds: float | None = None  # SIGTERM to exit
    returncode: int | None = None


class Proc:
    """A sidecar process (restartable; logs to a file)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_file: Path,
                 wrapper: tuple[str, ...] = ()) -> None:
        self.name, self.args, self.env, self.log_file = name, args, env, log_file
        self.wrapper = wrapper  # a command the process is started (and restarted) under
        self.popen: subprocess.Popen[bytes] | None = None
        self.killed = False  # the current process was killed -9 (a fault)
        self._log_offset = 0  # where the current process's output starts in the log file

    def start(self) -> Proc:
        # Output goes through a pipe, copied to the log file here: a pipe is not subject to
        # the file size limit the volume-full fault puts on the process.
        self.killed = False
        with suppress(FileNotFoundError):
            self._log_offset = self.log_file.stat().st_size
        self.popen = subprocess.Popen([*self.wrapper, sys.executable, *self.args], env=self.env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._copy, args=(self.popen,), daemon=True).start()
        return self

    def _copy(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        with self.log_file.open("ab") as handle:
            for line in popen.stdout:
                handle.write(line)
                handle.flush()

    def kill9(self) -> None:
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()
            self.killed = True

    def started(self) -> bool:
        """The current process logged ``started`` (its stop handlers are installed)."""
        try:
            with self.log_file.open("rb") as handle:
                handle.seek(self._log_offset)
                return b'"started"' in handle.read()
        except FileNotFoundError:
            return False

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid


@dataclasses.dataclass
class Participant:
    name: str
    role: str
    index: int
    volume: Path
    secrets: Path
    broker: KafkaBrokerDouble | None = None
    auth: Proc | None = None
    monitor: Proc | None = None
    loaded_generation: int | None = None  # clients: what the app loaded
    auth_listen: str = ""  # /metrics of the auth manager (--prometheus)
    monitor_listen: str = ""
    consul_token: str | None = None  # its own (least privilege), else none: ACLs off
    datacenter: str = "dc1"  # whose Consul agent it talks to (--datacenters)

    def serving_dir(self) -> Path | None:
        """The generation this participant presents and trusts right now."""
        if self.role == "client":
            generation = self.loaded_generation
        else:
            ack = Volume(self.volume).read_ack()
            generation = ack.generation if ack else None
        if generation is not None:
            path = layout.generation_dir(self.volume, generation)
            if path.is_dir():
                return path
        return Volume(self.volume).current_generation_dir()


class Traffic:
    """Continuous mTLS attempts between participants; counts ok/failed with reasons."""

    def __init__(self, pairs: list[tuple[Participant, Participant, str]],
                 wan_up: threading.Event | None = None) -> None:
        self.pairs = pairs
        #: Cleared while the link between the datacenters is cut: no traffic across it then.
        self.wan_up = wan_up
        #: Attempts inside one datacenter and across two (``--datacenters``).
        self.inside = 0
        self.across = 0
        self.attempts = 0
        self.failures: list[tuple[float, str, str, str]] = []
        self.harness_errors = 0
        self._contexts: dict[Path, ssl.SSLContext] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="traffic")

    def _context(self, directory: Path) -> ssl.SSLContext:
        ctx = self._contexts.get(directory)
        if ctx is None:
            ctx = self._contexts[directory] = client_context(directory)
        return ctx

    def _attempt(self, src: Participant, dst: Participant, listener: str) -> None:
        directory = src.serving_dir()
        try:
            if directory is None:
                raise FileNotFoundError(f"{src.name} serves no generation")
            context = self._context(directory)
        except (OSError, ssl.SSLError) as exc:
            if directory is not None and not directory.is_dir():
                self.harness_errors += 1  # pruned between our read and our load: look again
                return
            self.attempts += 1  # material the source cannot present is a failed attempt
            self.failures.append((time.time(), src.name, f"{dst.name}/{listener}",
                                  f"{src.name}'s material: {type(exc).__name__}: {exc}"))
            return
        assert dst.broker is not None
        self.attempts += 1
        try:  # a full handshake plus a Kafka request and its answer
            served_certificate("127.0.0.1", dst.broker.ports[listener], context)
        except (OSError, ssl.SSLError) as exc:
            self.failures.append((time.time(), src.name, f"{dst.name}/{listener}",
                                  f"{type(exc).__name__}: {exc}"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            for src, dst, listener in self.pairs:
                if self._stop.is_set():
                    return
                across = src.datacenter != dst.datacenter
                if across and self.wan_up is not None and not self.wan_up.is_set():
                    continue
                before = self.attempts
                self._attempt(src, dst, listener)
                if across:
                    self.across += self.attempts - before
                else:
                    self.inside += self.attempts - before
                time.sleep(0.005)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


class Timeline:
    """Polls the rotation record and remembers every (rotation, phase, stable) change."""

    def __init__(self, store: ConsulStore) -> None:
        self.store = store
        self.events: list[tuple[float, RotationRecord]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="timeline")

    def current(self) -> RotationRecord | None:
        try:
            raw = self.store.read().value("rotation")
            return parse_record(raw) if raw else None
        except Exception:  # Consul restarting, malformed value: not the timeline's business
            return None

    def _observe(self) -> None:
        """Read the record once; remember it if it changed since the last one remembered."""
        record = self.current()
        if record is None:
            return
        last = self.events[-1][1] if self.events else None
        if last is None or (last.id, last.phase, last.stable) != \
                (record.id, record.phase, record.stable):
            self.events.append((time.time(), record))

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            self._observe()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling, with one last look: the drill may have seen the final record (its
        own read) in the 20 ms since the last poll."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._observe()


class ClientHooks:
    """The simulated client apps: the monitor POSTs here to make an app reload."""

    def __init__(self, clients: dict[str, Participant]) -> None:
        failing = self.failing = set[str]()  # apps that cannot reload (answer 500)

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                client = clients.get(self.path.strip("/"))
                if client is None:
                    self.send_response(404)
                elif client.name in failing:
                    self.send_response(500)
                else:
                    client.loaded_generation = int(body["generation"])
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/{name}"

    def stop(self) -> None:
        self.server.shutdown()


@dataclasses.dataclass
class Result:
    failed_handshakes: int
    converged: bool
    rotation_seconds: float
    attempts: int
    report: str
    timeline: list[tuple[float, RotationRecord]]
    participants: list[Participant]
    base: Path
    alerts: list[AlertSeen] = dataclasses.field(default_factory=list)  # --prometheus
    exported: list[dict[str, str]] = dataclasses.field(default_factory=list)  # its series
    faults: list[str] = dataclasses.field(default_factory=list)
    marks: list[Mark] = dataclasses.field(default_factory=list)
    failures: list[tuple[float, str, str, str]] = dataclasses.field(  # at, from, to, why
        default_factory=list)
    picture: Path | None = None  # timeline.svg, when the directory is kept
    stops: list[StopTime] = dataclasses.field(default_factory=list)
    #: controller-restarts: (renewals, rotation, max_down), see Drill.controller_restarts
    controller_restarts: tuple[int, int, int] | None = None
    #: The impersonation fault's outcome: "refused", or what went wrong (None: not run).
    impersonation: str | None = None


class Drill:
    """One drill: set up, rotate A->B->A (shaped by the faults), check, report."""

    def __init__(self, brokers: int, clients: int, faults: list[str], base: Path,
                 deadline: float = 120.0, seed: int = 1, min_dwell: float = 0.0,
                 prometheus: bool = False, broker_mode: Literal["kraft", "zk"] = "kraft",
                 datacenters: int = 1) -> None:
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        if "client-reload-fails" in faults and clients < 1:
            raise ValueError("the client-reload-fails fault needs a client")
        if "wan-partition" in faults and datacenters < 2:
            raise ValueError("the wan-partition fault needs --datacenters 2 or more")
        #: One rotation domain over this many WAN-joined Consul datacenters (dc1 primary);
        #: participant k (brokers first) talks to datacenter k mod D's agent.
        self.datacenters = [f"dc{d + 1}" for d in range(datacenters)]
        self.wan_up = threading.Event()
        self.wan_up.set()
        self.with_prometheus = prometheus
        # "zk": brokers in ZooKeeper mode, like the 2.4 field broker, and the monitors send
        # the store passwords too (the broker has a password encoder secret)
        self.broker_mode = broker_mode
        self.prometheus: Prometheus | None = None
        self.exported: list[dict[str, str]] = []
        self.brokers_n, self.clients_n = brokers, clients
        self.faults = faults
        self.base = base
        self.deadline = deadline
        self.rng = random.Random(seed)
        self.min_dwell = min_dwell
        self.participants: list[Participant] = []
        self.notes: list[str] = []
        self.marks: list[Mark] = []  # the notes worth a mark in the picture, with times
        self._fault_threads: list[threading.Thread] = []
        self._stop_faults = threading.Event()
        #: AppRoles and templated roles instead of the root token (the impersonation fault).
        self.least_privilege = "impersonation" in faults
        self.impersonation: str | None = None
        self.stops: list[StopTime] = []  # how each sidecar ended at teardown
        #: controller-restarts: the brokers' stand-in processes, restarted by the monitors.
        self.controllers: Controllers | None = None
        self.raft_restart = "new-roots"  # the monitors' setting, for controller-restarts
        self.renewals_first = RENEWALS_FIRST  # controller-restarts: renewals before the flip
        self.rotation_window = (float("inf"), float("inf"))  # unix times of the flip to B ..
        # .. and of convergence on B

    # -- set-up -----------------------------------------------------------------------------

    def _auth_env(self, p: Participant) -> dict[str, str]:
        dns = [f"{p.name}.kafka.test", "localhost"]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PKI_", "MONITOR_", "CONSUL_", "VAULT_", "KAFKA_"))}
        if self.least_privilege:
            env.update({"PKI_VAULT_AUTH": "approle", "PKI_VAULT_ROLE_ID": p.name,
                        "PKI_VAULT_SECRET_ID_FILE": str(p.secrets / "secret-id"),
                        "PKI_PKI_ROLE": BROKER_ROLE if p.role == "broker" else CLIENT_ROLE})
        else:
            env["VAULT_TOKEN"] = self.vault.root_token
        if p.consul_token is not None:
            env["CONSUL_HTTP_TOKEN"] = p.consul_token
        env.update({
            "VAULT_ADDR": self.vault.url,
            "CONSUL_HTTP_ADDR": self.consuls[p.datacenter].url, "PKI_CLUSTER": CLUSTER,
            "PKI_CONSUL_PREFIX": PREFIX, "PKI_NODE_ID": p.name, "PKI_NODE_ROLE": p.role,
            "PKI_SUBJECT": f"CN={p.name}.kafka.test,OU=kafka,O=Example",
            "PKI_DNS_SANS": ",".join(dns), "PKI_IP_SANS": "127.0.0.1",
            "PKI_OUTPUT_DIR": str(p.volume),
            "PKI_STORE_PASSWORD_FILE": str(p.secrets / "store-password"),
            "PKI_TTL": self._ttl(), "PKI_SESSION_TTL": "10", "PKI_WATCH_WAIT": "30",
            # Counted per datacenter in a domain.
            "PKI_EXPECTED_MEMBERS": str(sum(1 for q in self.participants
                                            if q.datacenter == p.datacenter)),
            "PKI_MIN_DWELL": str(self.min_dwell), "PKI_BACKOFF_INITIAL": "0.2",
            "PKI_BACKOFF_MAX": "2", "PKI_LISTEN": p.auth_listen, "PYTHONUNBUFFERED": "1"})
        if len(self.datacenters) > 1:
            env["PKI_DATACENTERS"] = ",".join(self.datacenters)
        return env

    def _ttl(self) -> str:
        """controller-restarts: certificates short enough for renewals during the drill."""
        return RENEWING_TTL if self.controllers_wanted else "2h"

    @property
    def controllers_wanted(self) -> bool:
        return "controller-restarts" in self.faults

    def _monitor_env(self, p: Participant) -> dict[str, str]:
        env = self._auth_env(p)
        env.update({"MONITOR_VOLUME_DIR": str(p.volume), "MONITOR_LISTEN": p.monitor_listen,
                    "MONITOR_DEBOUNCE": "0.05", "MONITOR_POLL_INTERVAL": "2",
                    "MONITOR_RETRY_INTERVAL": "0.5", "MONITOR_VERIFY_TIMEOUT": "20"})
        if p.role == "broker":
            assert p.broker is not None
            env.update({
                "MONITOR_MODE": "broker", "KAFKA_BOOTSTRAP_SERVERS": p.broker.bootstrap("SSL"),
                "MONITOR_BROKER_ID": str(p.index),
                "MONITOR_LISTENERS": ",".join(f"{n}={p.broker.bootstrap(n)}"
                                              for n in p.broker.ports),
                "MONITOR_INTER_BROKER_LISTENER": "INTERNAL",
                "MONITOR_STORE_PASSWORD_FILE": str(p.secrets / "store-password"),
                "MONITOR_ADMIN_HOSTNAME_VERIFICATION": "false"})
            if self.broker_mode == "zk":
                env["MONITOR_ALTER_PASSWORDS"] = "true"
            if self.controllers is not None:
                env.update(self.controllers.monitor_env(p.index, self.raft_restart))
        else:
            env.update({"MONITOR_MODE": "client", "MONITOR_RELOAD_ACTION": "http",
                        "MONITOR_RELOAD_URL": self.hooks.url(p.name)})
        return env

    # The servers: doubles in this process (the faults drive them); tests/demo.py starts them
    # as processes instead.
    def _start_vault(self) -> FaultyVault:
        return start_vault()

    def _start_consul(self) -> ConsulDouble:
        return ConsulDouble(acl_token=self.consul_token)

    def _start_broker(self, p: Participant, listeners: dict[str, int],
                      config: dict[str, str]) -> KafkaBrokerDouble:
        broker = KafkaBrokerDouble(p.index, listeners, config, "INTERNAL",
                                   mode=self.broker_mode, seed=p.index)
        broker.start()
        return broker

    def setup(self) -> None:
        self.vault = self._start_vault()
        # Least privilege: Consul with ACLs on (default deny), every participant with a token
        # of its own from the shipped policy; the drill itself acts as the operator.
        self.consul_token = str(uuid.uuid4()) if self.least_privilege else None
        if len(self.datacenters) == 1:
            self.consuls = {self.datacenters[0]: self._start_consul()}
        else:
            self.consuls = {dc: ConsulDouble(acl_token=self.consul_token, datacenter=dc)
                            for dc in self.datacenters}
            for k, dc in enumerate(self.datacenters):
                for other in self.datacenters[k + 1:]:
                    self.consuls[dc].join_wan(self.consuls[other])
        self.consul = self.consuls[self.datacenters[0]]  # the primary: the operator's
        self.store = ConsulStore(self.consul.url, f"{PREFIX}/{CLUSTER}/", self.consul_token)
        print(f"drill: watch it with CONSUL_HTTP_ADDR={self.consul.url} kafka-pki --cluster "
              f"{CLUSTER} status --watch" + (" (and the drill's management token)"
                                            if self.consul_token else ""),
              file=sys.stderr, flush=True)
        self.store.put("active-root", A.encode())
        names = ([("broker", f"kafka-{i}", i) for i in range(1, self.brokers_n + 1)]
                 + [("client", f"client-{i}", i) for i in range(1, self.clients_n + 1)])
        for k, (role, name, index) in enumerate(names):
            volume, secrets = self.base / name / "volume", self.base / name / "secrets"
            secrets.mkdir(parents=True)
            (secrets / "store-password").write_text(PASSWORD)
            (secrets / "store-password").chmod(0o600)
            participant = Participant(name, role, index, volume, secrets,
                                      datacenter=self.datacenters[k % len(self.datacenters)])
            if self.least_privilege:
                target = self.vault.target(mounts=(A, B, C))
                _, secret_id = prepare_least_privilege(target, {name: role})[name]
                (secrets / "secret-id").write_text(secret_id)
                (secrets / "secret-id").chmod(0o600)
                participant.consul_token = self.consul.create_token(
                    participant_rules(f"{PREFIX}/{CLUSTER}/", name))
            if self.with_prometheus:
                participant.auth_listen = f"127.0.0.1:{_free_port()}"
                participant.monitor_listen = f"127.0.0.1:{_free_port()}"
            self.participants.append(participant)
        self.hooks = ClientHooks({p.name: p for p in self.participants if p.role == "client"})
        # init containers first (all in parallel), then brokers, then the sidecars
        once = [subprocess.Popen([sys.executable, "-m", "sidecar.cli", "--once"],
                                 env=self._auth_env(p), stdout=subprocess.DEVNULL,
                                 stderr=(self.base / f"{p.name}-once.log").open("wb"))
                for p in self.participants]
        for p, proc in zip(self.participants, once, strict=True):
            if proc.wait(timeout=120) != 0:
                raise RuntimeError(f"--once failed for {p.name}: see {p.name}-once.log")
        for p in self.participants:
            if p.role == "broker":
                config = _broker_config(p.volume, self.controllers_wanted)
                if self.broker_mode == "zk":
                    config["password.encoder.secret"] = "drill-encoder-secret"
                listeners = {"SSL": 0, "INTERNAL": 0}
                if self.controllers_wanted:
                    listeners["CONTROLLER"] = 0
                p.broker = self._start_broker(p, listeners, config)
            else:
                p.loaded_generation = Volume(p.volume).generations()[-1]
        if "controller-restarts" in self.faults:
            self.controllers = Controllers(self.base, {p.index: p.broker for p in
                                                       self.participants if p.broker})
            self.controllers.start()
        for p in self.participants:
            wrapper = _subject_to_file_modes() \
                if "volume-read-only" in self.faults and p is self._read_only_victim() else ()
            p.auth = Proc(f"{p.name}-auth", ["-m", "sidecar.cli"], self._auth_env(p),
                          self.base / f"{p.name}-auth.log", wrapper).start()
            p.monitor = Proc(f"{p.name}-monitor", ["-m", "monitor.cli"], self._monitor_env(p),
                             self.base / f"{p.name}-monitor.log").start()
        if self.with_prometheus:
            self._start_prometheus()

    def _start_prometheus(self) -> None:
        """Scrape every sidecar (job per process, target labels cluster and participant)."""
        targets: dict[str, list[tuple[str, dict[str, str]]]] = {job: [] for job in JOBS}
        for p in self.participants:
            labels = {"cluster": CLUSTER, "participant": p.name}
            targets["pki-auth-manager"].append((p.auth_listen, labels))
            targets["tls-monitor"].append((p.monitor_listen, labels))
        self.prometheus = Prometheus(self.base / "prometheus", targets, _free_port(),
                                     PROMETHEUS_SCALE)
        self.prometheus_started = time.time()
        self.prometheus.start()

    def _stop_prometheus(self) -> None:
        """Keep the series inventory, then stop Prometheus (before the sidecars, whose end
        is no alert)."""
        if self.prometheus is None:
            return
        with suppress(OSError, AssertionError):
            self.exported = self.prometheus.series(
                '{job=~"' + "|".join(JOBS) + '"}', self.prometheus_started)
        self.prometheus.stop()

    def teardown(self) -> None:
        self._stop_faults.set()
        for thread in self._fault_threads:
            thread.join(timeout=10)
        self._stop_prometheus()
        # Every sidecar at once, as an orchestrator stops a deployment, while the brokers,
        # Vault and Consul still answer; then the brokers.
        controllers = self.controllers
        if controllers is not None:  # before the sidecars stop (and stop restarting them)
            self.notes.append(f"controllers: restarts={controllers.restarts} "
                              f"max_down_at_once={controllers.max_down} Raft handshakes: "
                              f"attempted={controllers.raft_attempts} "
                              f"failed={len(controllers.raft_failures)}")
        self.stops = stop_sidecars(
            [(kind, p.name, proc) for p in self.participants
             for kind, proc in (("pki-auth-manager", p.auth), ("tls-monitor", p.monitor))
             if proc is not None])
        if controllers is not None:
            controllers.stop()
        for p in self.participants:
            if p.broker is not None:
                p.broker.stop()
        self.hooks.stop()
        for consul in self.consuls.values():
            consul.close()
        self.vault.stop()

    # -- convergence ------------------------------------------------------------------------

    def converged(self, root: str) -> bool:
        record = self.timeline.current()
        if record is None or not record.stable or record.to_root != root:
            return False
        for p in self.participants:
            directory = p.serving_dir()
            if directory is None:
                return False
            try:
                manifest = read_generation(directory)
            except VolumeError:
                return False
            if manifest.signer != root or tuple(manifest.trust) != (root,):
                return False
        return True

    def wait_for(self, predicate: Callable[[], bool], until: float) -> bool:
        while time.monotonic() < until:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def record_phase(self, root: str, phase: int) -> Callable[[], bool]:
        def check() -> bool:
            record = self.timeline.current()
            return record is not None and record.to_root == root and record.phase >= phase
        return check

    # -- faults -----------------------------------------------------------------------------

    def _read_only_victim(self) -> Participant:
        """The participant whose volume turns read-only: the last broker (else the last)."""
        brokers = [p for p in self.participants if p.role == "broker"]
        return (brokers or self.participants)[-1]

    def _await_write_failure(self, victim: Participant, seconds: float) -> str | None:
        """Wait for a new ``renewal_failed`` (kind volume) in the victim's auth manager log
        (it fails on its next write); return its error, or None if it logged none in time."""
        log_file = self.base / f"{victim.name}-auth.log"
        seen = len(_volume_failures(log_file))
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            failures = _volume_failures(log_file)
            if len(failures) > seen:
                return failures[-1]
            time.sleep(0.1)
        return None

    def _volume_read_only(self, victim: Participant) -> None:
        """Make the victim's generations directory read-only (mode 0555) until its auth
        manager has failed a write, check that the generation it serves is intact, restore."""
        generations = layout.generations_dir(victim.volume)
        generations.chmod(0o555)
        how = " (its auth manager runs without CAP_DAC_OVERRIDE)" if os.geteuid() == 0 else ""
        mark = self._note(f"{victim.name}: volume read-only for writes (generations/ mode "
                          f"0555){how}", "volume-read-only", victim.name)
        try:
            error = self._await_write_failure(victim, 10)
            kept = Volume(victim.volume).current_generation_dir()
            if error is None or kept is None:
                self.notes.append(f"{victim.name}: WRITES WERE NOT REFUSED")
                return
            self.notes.append(f"{victim.name}: auth manager logged renewal_failed: {error}")
            time.sleep(1.0)
            try:
                number = read_generation(kept).generation
                self.notes.append(f"{victim.name}: generation {number} still current and "
                                  "intact")
            except VolumeError as exc:
                self.notes.append(f"{victim.name}: KEPT GENERATION DAMAGED: {exc}")
        finally:
            generations.chmod(0o755)
            self.notes.append(f"{victim.name}: volume writable again")
            mark.until = time.time()

    def _note(self, text: str, label: str | None = None, who: str | None = None,
              kind: str = "fault") -> Mark:
        """Note ``text`` for the report; with a ``label``, also mark it in the picture."""
        self.notes.append(text)
        mark = Mark(label or text, time.time(), who=who, kind=kind)
        if label is not None:
            self.marks.append(mark)
        return mark

    def _in_background(self, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, daemon=True)
        thread.start()
        self._fault_threads.append(thread)

    def _killer(self, kind: str) -> None:
        fault = "kill-auth-manager" if kind == "auth" else "kill-monitor"

        def loop() -> None:
            for _ in range(3):
                if self._stop_faults.wait(self.rng.uniform(0.3, 1.5)):
                    return
                p = self.rng.choice(self.participants)
                proc = p.auth if kind == "auth" else p.monitor
                assert proc is not None
                proc.kill9()
                mark = self._note(f"kill -9 {proc.name}", fault, p.name)
                if self._stop_faults.wait(self.rng.uniform(0.2, 1.0)):
                    proc.start()
                    mark.until = time.time()
                    return
                proc.start()
                mark.until = time.time()
                self.notes.append(f"restarted {proc.name}")
        self._in_background(loop)

    def _when_phase(self, root: str, phase: int, action: Callable[[], None]) -> None:
        def run() -> None:
            until = time.monotonic() + self.deadline
            while not self._stop_faults.is_set() and time.monotonic() < until:
                if self.record_phase(root, phase)():
                    action()
                    return
                time.sleep(0.02)
        self._in_background(run)

    def _start_faults(self) -> None:
        for fault in self.faults:
            if fault == "kill-auth-manager":
                self._killer("auth")
            elif fault == "kill-monitor":
                self._killer("monitor")
            elif fault == "vault-outage":

                def outage() -> None:
                    self.vault.set_down(True)
                    mark = self._note("Vault down for 2s", "vault-outage")
                    time.sleep(2.0)
                    self.vault.set_down(False)
                    mark.until = time.time()
                self._when_phase(B, 1, outage)
            elif fault == "consul-restart":

                def restart() -> None:
                    self.consul.restart(keep_data=False)
                    self._note("Consul restarted: data lost, index reset", "consul-restart")
                    time.sleep(0.2)
                    self.store.put("active-root", B.encode())  # the operator puts it back
                self._when_phase(B, 2, restart)
            elif fault == "broker-refuses":
                first = next(p for p in self.participants if p.broker)

                def refuse(victim: Participant = first) -> None:
                    assert victim.broker is not None
                    victim.broker.refuse_next_reload("drill: simulated refusal")
                    self._note(f"broker {victim.name} refuses its next reload",
                               "broker-refuses", victim.name)
                self._when_phase(B, 1, refuse)
            elif fault == "volume-full":
                last = self.participants[-1]

                def full(victim: Participant = last) -> None:
                    assert victim.auth is not None
                    _set_file_size_limit(victim.auth.pid, 100)  # every store is larger
                    mark = self._note(f"{victim.name}: volume full (writes fail)",
                                      "volume-full", victim.name)
                    self._await_write_failure(victim, 10)  # until it has tried to write
                    time.sleep(1.0)
                    _set_file_size_limit(victim.auth.pid, resource.RLIM_INFINITY)
                    self.notes.append(f"{victim.name}: volume has space again")
                    mark.until = time.time()
                self._when_phase(B, 1, full)
            elif fault == "volume-read-only":
                self._when_phase(B, 1, lambda: self._volume_read_only(self._read_only_victim()))
            elif fault == "client-reload-fails":
                self._client_reload_fails()
            elif fault == "impersonation":
                self._when_phase(B, 1, self._impersonate)
            elif fault == "controller-restarts":
                mark = self._note("KRaft: controller listeners reloaded, brokers restarted for "
                                  "their Raft client, one at a time", "controller-restarts")

                def to_the_end(restarts: Mark = mark) -> None:
                    self._stop_faults.wait()
                    restarts.until = time.time()
                self._in_background(to_the_end)

    def _impersonate(self) -> None:
        """The first client's auth manager, restarted with the first broker's subject (its
        own AppRole): Vault must refuse, and nothing may reach the client's volume. Then it
        is started again as itself, and the rotation goes on with it."""
        victim = next(p for p in self.participants if p.role == "client")
        broker = next(p for p in self.participants if p.role == "broker")
        assert victim.auth is not None
        volume = Volume(victim.volume)
        victim.auth.kill9()
        before = (volume.generations(), volume.current_generation_dir())
        env = self._auth_env(victim) | {
            "PKI_SUBJECT": f"CN={broker.name}.kafka.test,OU=kafka,O=Example",
            "PKI_DNS_SANS": f"{broker.name}.kafka.test,localhost"}
        log = self.base / f"{victim.name}-impostor.log"
        impostor = Proc(f"{victim.name}-impostor", ["-m", "sidecar.cli"], env, log).start()
        mark = self._note(f"{victim.name}: auth manager restarted as {broker.name}",
                          "impersonation", victim.name)
        refusal = f"common name {broker.name}.kafka.test not allowed by this role"
        until = time.monotonic() + 20
        while time.monotonic() < until and refusal not in _read(log):
            time.sleep(0.05)
        refused = refusal in _read(log)
        time.sleep(0.5)  # a moment more in which it could (wrongly) write
        impostor.kill9()
        after = (volume.generations(), volume.current_generation_dir())
        victim.auth.start()
        mark.until = time.time()
        consul_refusals = self._consul_impersonation(victim, broker)
        if not refused:
            self.impersonation = "NOT REFUSED"
        elif after != before:
            self.impersonation = f"refused, but the volume changed: {before} -> {after}"
        elif consul_refusals is not None:
            self.impersonation = consul_refusals
        else:
            self.impersonation = "refused"
            self.notes.append(f"{victim.name}: Vault refused ({refusal}); volume unchanged; "
                              "auth manager started again as itself")

    def _consul_impersonation(self, victim: Participant, broker: Participant) -> str | None:
        """With the victim's own Consul token: flip active-root, overwrite the broker's report.
        None if Consul refused both (and the drill logs each refusal), else what got through."""
        stolen = ConsulStore(self.consul.url, f"{PREFIX}/{CLUSTER}/", victim.consul_token)
        got_through = []
        for key, value in (("active-root", C.encode()), (f"nodes/{broker.name}", b"{}")):
            try:
                stolen.put(key, value)
            except ConsulError as exc:
                if exc.reason != "forbidden":
                    got_through.append(f"{key}: {exc.reason}")
                    continue
                self._note(f"{victim.name}'s Consul token: write {key} refused", "impersonation",
                           victim.name)
                self.notes.append(f"{victim.name}'s Consul token: {exc}")
            else:
                got_through.append(f"{key} WRITTEN")
        return f"Consul NOT REFUSED: {', '.join(got_through)}" if got_through else None

    def _cut_wan_across_the_flip(self) -> None:
        """Cut the link between the datacenters (Consul's WAN and the traffic across it) just
        before the flip; 6 s later the rotation must still wait at phase 1 (the primary cannot
        see the other datacenters' summaries), then the link comes back."""
        primary, others = self.consuls[self.datacenters[0]], self.datacenters[1:]
        for dc in others:
            partition(primary, self.consuls[dc], cut=True)
        self.wan_up.clear()
        mark = self._note(f"WAN cut between {self.datacenters[0]} and {', '.join(others)}",
                          "wan-partition")

        def restore() -> None:
            time.sleep(6.0)
            record = self.timeline.current()
            if record is not None and record.to_root == B and record.phase > 1:
                self.notes.append(f"THE ROTATION DID NOT WAIT: phase {record.phase} during "
                                  "the WAN partition")
            else:
                self._note(f"rotation waited during the WAN partition: "
                           f"{'none' if record is None else f'phase {record.phase}'}")
            for dc in others:
                partition(primary, self.consuls[dc], cut=False)
            self.wan_up.set()
            mark.until = time.time()
            self._note("WAN restored")
        self._in_background(restore)

    def _client_reload_fails(self) -> None:
        """From the flip on, the first client app cannot reload (its hook answers 500): its
        monitor fails (action_failed), so the barrier holds phase 1. Released once Prometheus
        shows the alerts that must page (or 60 s); without Prometheus after 3 s."""
        victim = next(p for p in self.participants if p.role == "client")
        self.hooks.failing.add(victim.name)
        mark = self._note(f"{victim.name}: the app cannot reload (hook answers 500)",
                          "client-reload-fails", victim.name)

        def release() -> None:
            prometheus = self.prometheus
            until = time.monotonic() + (60.0 if prometheus else 3.0)
            while not self._stop_faults.wait(0.2) and time.monotonic() < until:
                if prometheus and all(prometheus.firing(n) for n in RELOAD_FAILS_ALERTS):
                    break
            self.hooks.failing.discard(victim.name)
            self.notes.append(f"{victim.name}: the app reloads again")
            mark.until = time.time()
        self._in_background(release)

    # -- the drill --------------------------------------------------------------------------

    def run(self) -> Result:
        self.setup()
        self.timeline = Timeline(ConsulStore(self.consul.url, f"{PREFIX}/{CLUSTER}/",
                                             self.consul_token))
        self.timeline.start()
        brokers = [p for p in self.participants if p.role == "broker"]
        pairs = [(c, b, "SSL") for c in self.participants if c.role == "client" for b in brokers]
        pairs += [(x, y, "INTERNAL") for x in brokers for y in brokers if x is not y]
        traffic = Traffic(pairs, self.wan_up)
        converged = False
        rotation_seconds = float("nan")
        try:
            start = time.monotonic()
            if not self.wait_for(lambda: self.converged(A), start + self.deadline):
                raise RuntimeError("the participants did not settle on root A")
            traffic.start()
            time.sleep(0.3)
            converged, rotation_seconds = self._scenario()
        finally:
            traffic.stop()
            self.timeline.stop()
            self.teardown()
        if self.controllers is not None:  # a stranded voter is a failed handshake
            traffic.failures.extend(self.controllers.raft_failures)
            traffic.failures.sort()
        report = self._report(traffic, converged, rotation_seconds)
        alerts = list(self.prometheus.alerts.values()) if self.prometheus else []
        return Result(len(traffic.failures), converged, rotation_seconds, traffic.attempts,
                      report, self.timeline.events, self.participants, self.base, alerts,
                      self.exported, self.faults, self.marks, traffic.failures,
                      stops=self.stops, impersonation=self.impersonation,
                      controller_restarts=self.controller_restarts())

    def _scenario(self) -> tuple[bool, float]:
        if "malformed-root" in self.faults:
            before = self.timeline.current()
            self.store.put("active-root", b"pki root b!!")
            self._note("active-root set to a malformed value", "malformed-root")
            time.sleep(1.0)
            after = self.timeline.current()
            if before is None or after is None or after.id != before.id \
                    or after.phase != before.phase:
                self.notes.append("MALFORMED VALUE MOVED THE ROTATION")
                return False, float("nan")
        if self.controllers_wanted and self.renewals_first \
                and not self._await_renewals(self.renewals_first):
            return False, float("nan")
        self._start_faults()
        if "wan-partition" in self.faults:
            self._cut_wan_across_the_flip()
        flip = time.monotonic()
        self.rotation_window = (time.time(), float("inf"))
        self.store.put("active-root", B.encode())
        self._note("active-root -> pki_root_b", "active-root → B", kind="operator")
        final = A
        if "rollback" in self.faults:
            if not self.wait_for(self.record_phase(B, 2), flip + self.deadline):
                return False, float("nan")
            self.store.put("active-root", A.encode())
            self._note("rollback: active-root -> pki_root_a during phase 2",
                       "rollback: active-root → A", kind="operator")
            ok = self.wait_for(lambda: self.converged(A), flip + self.deadline)
            return ok, time.monotonic() - flip
        if "third-root" in self.faults:
            if not self.wait_for(self.record_phase(B, 1), flip + self.deadline):
                return False, float("nan")
            self.store.put("active-root", C.encode())
            self._note("third root requested mid-rotation: active-root -> pki_root_c",
                       "third-root: active-root → C", kind="operator")
            if not self.wait_for(lambda: self.converged(C), flip + 2 * self.deadline):
                return False, float("nan")
            final = A
        elif not self.wait_for(lambda: self.converged(B), flip + self.deadline):
            return False, float("nan")
        rotation_seconds = time.monotonic() - flip
        self.rotation_window = (self.rotation_window[0], time.time())
        self._stop_faults.set()
        back = time.monotonic()
        self.store.put("active-root", final.encode())
        self._note(f"active-root -> {final}", f"active-root → {short_root(final)}",
                   kind="operator")
        ok = self.wait_for(lambda: self.converged(final), back + self.deadline)
        waited = not any(n.startswith("THE ROTATION DID NOT WAIT") for n in self.notes)
        return ok and waited, rotation_seconds

    def _await_renewals(self, count: int) -> bool:
        """Wait until every broker has renewed ``count`` times (new generations, same roots)."""
        brokers = [p for p in self.participants if p.role == "broker"]
        start = {p.name: Volume(p.volume).generations()[-1] for p in brokers}
        until = time.monotonic() + self.deadline
        renewed = self.wait_for(lambda: all(
            Volume(p.volume).generations()[-1] >= start[p.name] + count for p in brokers),
            until)
        self._note(f"{count} renewal{'s' if count > 1 else ''} on every broker" if renewed
                   else f"RENEWALS DID NOT HAPPEN within {self.deadline:.0f}s",
                   "renewals", kind="operator")
        return renewed

    def controller_restarts(self) -> tuple[int, int, int] | None:
        """(restarts outside the rotation A->B, restarts during it, most brokers down at
        once) for controller-restarts; None otherwise."""
        if self.controllers is None:
            return None
        start, end = self.rotation_window
        during = sum(start <= at <= end for at in self.controllers.restart_times)
        return self.controllers.restarts - during, during, self.controllers.max_down

    # -- report -----------------------------------------------------------------------------

    def _report(self, traffic: Traffic, converged: bool, rotation_seconds: float) -> str:
        lines = ["", "== timeline =="]
        t0 = self.timeline.events[0][0] if self.timeline.events else time.time()
        previous: tuple[float, RotationRecord] | None = None
        for at, record in self.timeline.events:
            if previous is not None and previous[1].id == record.id:
                lines.append(f"           phase {previous[1].phase} lasted "
                             f"{at - previous[0]:.2f}s")
            state = "stable" if record.stable else f"phase {record.phase}"
            lines.append(f"  +{at - t0:7.2f}s  {record.id}  {record.from_root} -> "
                         f"{record.to_root}  {state}")
            previous = (at, record)
        lines += ["", "== faults and operator actions =="] + [f"  {n}" for n in self.notes]
        if self.impersonation is not None:
            lines.append(f"  impersonation={self.impersonation}")
        signs = ", ".join(f"{m}={n}" for m, n in sorted(self.vault.sign_count.items())) \
            or "not counted (Vault runs in a process of its own)"
        lines += ["", f"Vault signs: {signs}",
                  f"handshakes: attempted={traffic.attempts} failed={len(traffic.failures)} "
                  f"(harness skips: {traffic.harness_errors})"]
        if len(self.datacenters) > 1:
            wan = {dc: sum(c.wan_forwarded.values()) for dc, c in self.consuls.items()}
            lines.append(f"  inside a datacenter: {traffic.inside}, across two: "
                         f"{traffic.across}; Consul requests forwarded across the WAN: "
                         + ", ".join(f"from {dc} {n}" for dc, n in wan.items()))
        for at, src, dst, reason in traffic.failures[:10]:
            lines.append(f"  FAILED +{at - t0:.2f}s {src} -> {dst}: {reason}")
        lines += ["", "== participants =="]
        for p in self.participants:
            directory = p.serving_dir()
            try:
                manifest = read_generation(directory) if directory else None
            except VolumeError as exc:
                lines.append(f"  {p.name:<10} UNREADABLE: {exc}")
                continue
            if manifest:
                lines.append(f"  {p.name:<10} {p.role:<7} gen {manifest.generation:<3} serial "
                             f"{manifest.serial}  issuer {manifest.issuer}")
        lines += ["", "== volumes =="] + [f"  {line}" for line in self._check_volumes()]
        lines += ["", "== stopping (SIGTERM to every sidecar at once) =="]
        lines += [f"  {line}" for line in stop_lines(self.stops)]
        lines += ["", "== errors logged by the sidecars =="]
        lines += [f"  {count:>3} x {what}" for what, count in self._logged_errors().items()]
        if self.prometheus is not None:
            lines += ["", f"== alerts (Prometheus, rule durations x {PROMETHEUS_SCALE:.4g}) =="]
            lines += [f"  {line}" for line in self._alert_lines(t0)] or ["  none"]
        return "\n".join(lines)

    def _alert_lines(self, t0: float) -> list[str]:
        assert self.prometheus is not None
        out = []
        for seen in sorted(self.prometheus.alerts.values(),
                           key=lambda a: (a.firing_at or a.pending_at or 0, a.name)):
            who = seen.labels.get("participant") or seen.labels.get("cluster", "")
            pending = f"pending +{seen.pending_at - t0:.1f}s" if seen.pending_at else ""
            firing = (f"firing +{seen.firing_at - t0:.1f}s" if seen.firing_at
                      else "never fired")
            job = seen.labels.get("job", "")
            out.append(f"{seen.name:<30} {who:<10} {job:<17} {pending:<16} {firing}")
        return out

    def _check_volumes(self) -> list[str]:
        out = []
        for p in self.participants:
            bad = []
            for number in Volume(p.volume).generations():
                directory = layout.generation_dir(p.volume, number)
                try:
                    read_generation(directory)
                except VolumeError as exc:
                    bad.append(str(exc))
            out.append(f"{p.name}: {len(Volume(p.volume).generations())} generations, "
                       + ("all complete and consistent" if not bad else "; ".join(bad)))
        return out

    def _logged_errors(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for path in sorted(self.base.glob("*.log")):
            for line in path.read_text(errors="replace").splitlines():
                if not line.startswith("{"):
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("level") in ("error", "warning"):
                    detail = event.get("kind") or event.get("result") or ""
                    counts[f"{event.get('event')} {detail}".strip()] += 1
        return counts


def stop_sidecars(procs: list[tuple[str, str, Proc]]) -> list[StopTime]:
    """SIGTERM every running sidecar at once and time each one's exit (``kind``,
    participant, process); kill -9 one still running STOP_GRACE seconds later."""
    up_by = time.monotonic() + START_GRACE
    while not all(proc.started() for _, _, proc in procs
                  if proc.popen is not None and proc.popen.poll() is None) \
            and time.monotonic() < up_by:
        time.sleep(0.05)
    stops: list[StopTime | None] = [None] * len(procs)

    def wait(slot: int, kind: str, who: str, popen: subprocess.Popen[bytes],
             sent: float) -> None:
        try:
            code = popen.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            popen.kill()
            stops[slot] = StopTime(kind, who, "killed", time.monotonic() - sent, popen.wait())
            return
        stops[slot] = StopTime(kind, who, "exited", time.monotonic() - sent, code)

    waiters = []
    for slot, (kind, who, proc) in enumerate(procs):
        popen = proc.popen
        if popen is None:
            continue
        if popen.poll() is not None:
            outcome = "killed by a fault" if proc.killed else "exited before teardown"
            stops[slot] = StopTime(kind, who, outcome, returncode=popen.returncode)
            continue
        sent = time.monotonic()
        popen.send_signal(signal.SIGTERM)
        waiter = threading.Thread(target=wait, args=(slot, kind, who, popen, sent))
        waiter.start()
        waiters.append(waiter)
    for waiter in waiters:
        waiter.join()
    return [stop for stop in stops if stop is not None]


def stop_lines(stops: list[StopTime]) -> list[str]:
    """The slowest stop per kind, then every stop that was not a clean exit (code 0)."""
    slowest: dict[str, StopTime] = {}
    for stop in stops:
        if stop.seconds is not None and (stop.kind not in slowest
                                         or stop.seconds > (slowest[stop.kind].seconds or 0)):
            slowest[stop.kind] = stop
    lines = ["slowest stop: " + ", ".join(
        f"{kind} {stop.seconds:.2f} s ({stop.participant})"
        for kind, stop in sorted(slowest.items()) if stop.seconds is not None) + " (target < 2 s)"]
    for stop in stops:
        if stop.outcome != "exited" or stop.returncode != 0:
            took = f" after {stop.seconds:.2f} s" if stop.seconds is not None else ""
            lines.append(f"{stop.participant} {stop.kind}: {stop.outcome}{took}, "
                         f"exit code {stop.returncode}")
    return lines


def _broker_config(volume: Path, controller: bool = False) -> dict[str, str]:
    settings = broker_settings(volume, "PKCS12", controller)
    return {k: PASSWORD if k.endswith("password") else v for k, v in settings.items()}


def _volume_failures(log_file: Path) -> list[str]:
    """The errors of the ``renewal_failed`` events of kind volume in an auth manager's log."""
    try:
        lines = log_file.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        if '"renewal_failed"' in line:
            with suppress(ValueError):
                event = json.loads(line)
                if event.get("kind") == "volume":
                    out.append(str(event.get("error")))
    return out


def _subject_to_file_modes() -> tuple[str, ...]:
    """A command prefix under which a process is refused writes by file modes, as any
    unprivileged process is: nothing when the drill runs unprivileged; as root, ``setpriv``
    removes the capabilities that bypass modes from the bounding and inheritable sets, so the
    process (uid 0, owner of the volume) gets EACCES from a directory with mode 0555."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise RuntimeError("the volume-read-only fault as root needs setpriv (util-linux)")
    drop = ",".join(f"-{cap}" for cap in DAC_CAPABILITIES)
    return (setpriv, "--inh-caps=-all", f"--bounding-set={drop}", "--")


def _read(path: Path) -> str:
    """A log file's text so far ("" before it exists)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _set_file_size_limit(pid: int, limit: int) -> None:
    """Change only the soft limit, so it can be raised again without privileges."""
    with suppress(ProcessLookupError):
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


@contextmanager
def drill_dir(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="kafka-pki-drill-") as tmp:
        yield Path(tmp)


def run_drill(brokers: int, clients: int, faults: list[str], deadline: float = 120.0,
              seed: int = 1, keep: Path | None = None, min_dwell: float = 0.0,
              prometheus: bool = False, broker_mode: Literal["kraft", "zk"] = "kraft",
              roots: str = "mounts", raft_restart: str = "new-roots",
              datacenters: int = 1, renewals: int = RENEWALS_FIRST) -> Result:
    if roots == "issuers" and "impersonation" in faults:
        raise ValueError("--roots issuers with --fault impersonation: the least-privilege "
                         "roles of the drill are set up per mount")
    use_roots(roots)
    with drill_dir(keep) as base:
        drill = Drill(brokers, clients, faults, base, deadline, seed, min_dwell, prometheus,
                      broker_mode, datacenters)
        drill.raft_restart = raft_restart
        drill.renewals_first = renewals
        result = drill.run()
    if keep is not None:
        # Imported here: matplotlib is loaded only when there is a directory to draw into.
        from tests.drill_picture import draw_timeline

        result.picture = draw_timeline(result, keep / "timeline.svg")
    return result


@contextmanager
def run_idle_pair(base: Path) -> Iterator[dict[str, int]]:
    """One client participant's auth manager and monitor, set up and left idle."""
    drill = Drill(0, 1, [], base)
    drill.setup()
    try:
        participant = drill.participants[0]
        assert participant.auth is not None and participant.monitor is not None
        yield {"pki-auth-manager": participant.auth.pid,
               "tls-monitor": participant.monitor.pid}
    finally:
        drill.teardown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.drill", description=__doc__)
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--fault", action="append", default=[], choices=FAULTS)
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-dwell", type=float, default=0.0)
    parser.add_argument("--keep", type=Path, default=None, help="keep volumes and logs here")
    parser.add_argument("--prometheus", action="store_true",
                        help="scrape every sidecar with a real Prometheus and the shipped rules")
    parser.add_argument("--roots", choices=sorted(ROOT_LAYOUTS), default="mounts",
                        help="a Vault PKI mount per root, or issuers of one mount (pki:root-a)")
    parser.add_argument("--datacenters", type=int, default=1,
                        help="participants spread over this many WAN-joined Consul "
                             "datacenters, one rotation domain (dc1 the primary)")
    args = parser.parse_args(argv)
    result = run_drill(args.brokers, args.clients, args.fault, args.deadline, args.seed,
                       args.keep, args.min_dwell, args.prometheus, roots=args.roots,
                       datacenters=args.datacenters)
    print(result.report)
    if result.picture is not None:
        print(f"\npicture: {result.picture}")
    rotation = f"{result.rotation_seconds:.2f}" if result.converged else "nan"
    if "impersonation" in result.faults:
        print(f"impersonation={result.impersonation or 'not attempted'}")
    if result.controller_restarts is not None:
        renewals, rotation_restarts, max_down = result.controller_restarts
        print(f"controller_restarts renewals={renewals} rotation={rotation_restarts} "
              f"max_down={max_down}")
    print(f"failed_handshakes={result.failed_handshakes} "
          f"converged={'yes' if result.converged else 'no'} rotation_seconds={rotation}")
    refused = "impersonation" not in result.faults or result.impersonation == "refused"
    return 0 if result.converged and result.failed_handshakes == 0 and refused else 1


if __name__ == "__main__":
    sys.exit(main())
