"""Fleet simulator: N participants built from the product's coordination code rotate A->B->A.

    python -m tests.fleet --participants N [--brokers B] [--seed S] [--kill-keeper]
                          [--datacenters D]

Every participant is the product's own ``AuthManager.run`` loop with a
:class:`~sidecar.coordinator.RotationParticipant` (``Registration``, ``ConsulStore``, the keeper)
on a volume of its own (a real :class:`~sidecar.volume.Volume` under /dev/shm). Only Vault and
the TLS monitor are simulated: a fake issuer hands out tiny material (no signing, no
keystores), and a simulated monitor serves each new generation after a random 50-500 ms and
acknowledges it as the real one does. All participants share this process; Consul is the double
in a process of its own, or a real agent when ``CONSUL_HTTP_ADDR`` is set, and a counting proxy
(:mod:`tests.consul_proxy`, a third process) sits in front of it so the traffic is counted the
same way for both. The simulator's own observation (phase timeline, flips) goes to Consul
directly and is not counted.

It flips ``active-root`` A->B, waits until every live participant serves ({B}, B) under a
completed record, then flips back, and prints per direction: time to stable, each phase's
duration, Consul requests, KV entries and bytes returned, blocking-query wakeups per participant
(mean and max), flip-seen reaction percentiles and keeper hand-overs. The last line is
``participants=<N> rotation_seconds=<s> entries_per_participant=<x>
wakeups_per_participant=<y>`` for A->B (with ``wan_requests_per_participant=<z>`` when
``--datacenters`` spreads the participants over D WAN-joined datacenters, one rotation domain:
participant i is in datacenter i mod D, and its traffic is split into local and WAN).

The previous scheme (every participant watches the whole prefix and decides) is measured by
running this same file against that revision's product code: ``--product DIR`` puts a checkout
of it first on ``sys.path`` (see the fleet table in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import hashlib
import heapq
import inspect
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT_A, ROOT_B = "pki_root_a", "pki_root_b"
REPO = Path(__file__).resolve().parent.parent
#: The simulated monitors wake their participant when they acknowledge, so the participants'
#: own ack polls can be rare.
ACK_POLL = 2.0


# -- the simulated world around each participant ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FakeMaterial:
    """What the fake issuer hands out: enough for the fake renderer to write a generation."""

    signer: str
    trust: tuple[str, ...]
    subject: str
    serial: str
    not_before: dt.datetime
    not_after: dt.datetime
    vault_warnings: tuple[str, ...] = ()
    ttl_capped: None = None


class FakeVault:
    """The few Vault calls the loop and the coordinator make besides signing."""

    def login(self) -> None:
        return None

    def keep_token_alive(self) -> None:
        return None

    def token_seconds_left(self) -> float | None:
        return None

    def ca_certificates(self, mount: str) -> tuple[Any, ...]:
        return ()


class FakeIssuer:
    """Issuer stand-in: no key, no CSR, no Vault; a unique serial per certificate."""

    def __init__(self, identity: Any) -> None:
        self.identity = identity
        self.vault = FakeVault()

    def obtain(self, desired: Any, now: dt.datetime) -> FakeMaterial:
        return FakeMaterial(desired.signer, tuple(desired.trust), self.identity.subject,
                            uuid.uuid4().hex[:16], now, now + dt.timedelta(days=1))


def install_fake_renderer(manager_module: ModuleType, bundle_module: ModuleType,
                          manifest_module: ModuleType) -> None:
    """Replace the auth manager's renderer (PKCS12/JKS: ~28 ms a bundle) by one that writes a
    single small file with a manifest as the real one would describe it."""

    def render(material: FakeMaterial, *, password: str, current: Any, generation: int,
               created_at: dt.datetime, rotation_id: str | None = None,
               phase: int | None = None) -> Any:
        data = f"{material.signer} {','.join(material.trust)} {material.serial}\n".encode()
        files = {"cert.pem": bundle_module.FileContent(data, 0o644)}
        manifest = manifest_module.Manifest(
            generation=generation, created_at=created_at.isoformat(), signer=material.signer,
            trust=tuple(sorted(material.trust)), serial=material.serial,
            subject=material.subject, issuer=f"CN=fleet {material.signer}", sans=(),
            not_before=material.not_before.isoformat(), not_after=material.not_after.isoformat(),
            key_type="ec-p256", files={"cert.pem": hashlib.sha256(data).hexdigest()},
            rotation_id=rotation_id, phase=phase)
        return bundle_module.Bundle(files=files, manifest=manifest)

    manager_module.render_bundle = render  # type: ignore[attr-defined]


class SimMonitor:
    """Every participant's TLS monitor, in one thread: a generation written is served and
    acknowledged after a random 50-500 ms (the latest one at that time)."""

    def __init__(self, rng: random.Random, write_ack: Callable[..., None],
                 ack_type: type, notify: Callable[[str], None]) -> None:
        self.rng = rng
        self.write_ack = write_ack
        self.ack_type = ack_type
        self.notify = notify
        self.served: dict[str, tuple[str, tuple[str, ...]]] = {}
        self.dead: set[str] = set()
        self._heap: list[tuple[float, int, str, Any]] = []
        self._seq = 0
        self._cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="sim-monitor", daemon=True)
        self._thread.start()

    def written(self, name: str, volume: Any) -> None:
        with self._cond:
            self._seq += 1
            due = time.monotonic() + self.rng.uniform(0.05, 0.5)
            heapq.heappush(self._heap, (due, self._seq, name, volume))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap
                                    else max(0.0, self._heap[0][0] - time.monotonic()))
                if self._stop:
                    return
                _, _, name, volume = heapq.heappop(self._heap)
            if name in self.dead:
                continue
            with contextlib.suppress(Exception):  # a volume torn down at the end
                found = volume.read_current()
                if found is None:
                    continue
                manifest = found[1]
                ack = volume.read_ack()
                if ack is not None and ack.generation >= manifest.generation:
                    continue
                self.write_ack(volume.root, self.ack_type(
                    generation=manifest.generation, serial=manifest.serial,
                    applied_at=dt.datetime.now(dt.UTC).isoformat(), verified_by="fleet-sim"))
                self.served[name] = (manifest.signer, tuple(manifest.trust))
                self.notify(name)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()


class SimLog:
    """The participants' logger: keeps keeper and rotation events and errors, drops the rest."""

    KEPT = frozenset({"keeper_acquired", "keeper_lost", "rotation_started",
                      "rotation_phase_advanced", "rotation_completed", "rotation_rolled_back"})

    def __init__(self, name: str, sink: list[tuple[float, str, str, dict[str, Any]]],
                 lock: threading.Lock) -> None:
        self.name, self.sink, self.lock = name, sink, lock

    def _keep(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if event in self.KEPT or level in ("error", "exception"):
            with self.lock:
                self.sink.append((time.monotonic(), self.name, event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self._keep("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._keep("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._keep("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._keep("exception", event, fields)


@dataclasses.dataclass
class Traffic:
    """What one participant's Consul clients did (counted in the client, per participant)."""

    requests: int = 0
    entries: int = 0
    wakeups: int = 0
    passes: int = 0
    #: Of those, what went to another datacenter (``?dc=``, across the WAN).
    wan_requests: int = 0
    wan_entries: int = 0
    first_seen: dict[str, float] = dataclasses.field(default_factory=dict)


def counting_store_class(base: type) -> type:
    """A ConsulStore that counts its participant's requests, entries and blocking returns,
    and notes when it first saw a rotation record towards each root."""

    # Revisions before the ACL messages (a7bebfd, the previous scheme) have no ``need``.
    takes_need = "need" in inspect.signature(base._call).parameters

    class CountingStore(base):  # type: ignore[valid-type,misc]
        traffic: Traffic

        def clone(self, *args: Any, **kwargs: Any) -> Any:
            twin = super().clone(*args, **kwargs)
            twin.__class__ = type(self)
            twin.traffic = self.traffic
            return twin

        def _call(self, what: str, call: Callable[[], Any], timeout: float | None = None,
                  need: str | None = None) -> Any:
            self.traffic.requests += 1
            if getattr(self, "datacenter", None):
                self.traffic.wan_requests += 1
            if takes_need:
                return super()._call(what, call, timeout, need)
            return super()._call(what, call, timeout)  # an older product (--product a7bebfd)

        def _seen(self, value: bytes | None) -> None:
            if value and b'"to": ' in value:
                with contextlib.suppress(ValueError):
                    target = json.loads(value)["to"]
                    self.traffic.first_seen.setdefault(target, time.monotonic())

        def read(self, index: int = 0, wait_seconds: float | None = None) -> Any:
            snapshot = super().read(index, wait_seconds)
            self.traffic.entries += len(snapshot.entries)
            if getattr(self, "datacenter", None):
                self.traffic.wan_entries += len(snapshot.entries)
            self.traffic.wakeups += 1 if index else 0
            self._seen(snapshot.value("rotation"))
            return snapshot

        def get(self, key: str, index: int = 0, wait_seconds: float | None = None) -> Any:
            result = super().get(key, index, wait_seconds)
            self.traffic.entries += 1 if result.entry is not None else 0
            if getattr(self, "datacenter", None) and result.entry is not None:
                self.traffic.wan_entries += 1
            self.traffic.wakeups += 1 if index else 0
            if key == "rotation" and result.entry is not None:
                self._seen(result.entry.value)
            return result

    return CountingStore


# -- processes: Consul (double or real) and the counting proxy ------------------------------------

def start_json_process(args: Sequence[str], env: dict[str, str] | None = None
                       ) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a helper process that prints one JSON line when it is ready."""
    proc = subprocess.Popen(list(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=REPO, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{args} exited before it was ready")
    return proc, json.loads(line)


def serve_proxy(upstream: str) -> int:
    """``--serve-proxy``: a CountingProxy that answers "stats"/"reset" lines on stdin."""
    from tests.consul_proxy import CountingProxy

    proxy = CountingProxy(upstream)
    print(json.dumps({"url": proxy.start()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "reset":
            proxy.reset()
            print("{}", flush=True)
        elif line.strip() == "stats":
            stats = proxy.stats()
            print(json.dumps({k: (dict(v) if hasattr(v, "items") else v)
                              for k, v in vars(stats).items()}, default=str), flush=True)
    proxy.stop()
    return 0


# -- a worker process: some of the participants ----------------------------------------------

@dataclasses.dataclass
class Member:
    name: str
    role: str
    traffic: Traffic
    manager: Any
    source: Any
    stop: threading.Event
    thread: threading.Thread
    alive: bool = True


class Worker:
    """Participants ``first .. first+count-1`` in this process, driven by lines on stdin."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed * 7919 + args.first)
        from monitor.reloader import write_ack
        from sidecar import bundle, manager, manifest
        from sidecar.consul_store import ConsulStore
        from sidecar.coordinator import RotationParticipant
        from sidecar.metrics import AuthManagerMetrics
        from sidecar.renewal import Identity
        from sidecar.rotation import Policy
        from sidecar.volume import Volume

        install_fake_renderer(manager, bundle, manifest)
        self.api = dict(AuthManager=manager.AuthManager, Participant=RotationParticipant,
                        Metrics=AuthManagerMetrics, Identity=Identity, Policy=Policy,
                        Volume=Volume, Store=counting_store_class(ConsulStore))
        self.monitor = SimMonitor(self.rng, write_ack, manifest.Acknowledgement, self.notify)
        self.events: list[tuple[float, str, str, dict[str, Any]]] = []
        self.events_lock = threading.Lock()
        self.members: dict[str, Member] = {}
        self.base = Path(args.volumes)
        self.password = self.base / "store-password"
        self.token = os.environ.get("CONSUL_HTTP_TOKEN")

    def start_member(self, i: int) -> Member:
        api, args = self.api, self.args
        role = "broker" if i < args.brokers else "client"
        name = f"{role}-{i}"
        traffic = Traffic()
        store = api["Store"](args.worker_consul, args.prefix, self.token)
        store.traffic = traffic
        volume = api["Volume"](self.base / name, keep=3)
        monitor, write = self.monitor, volume.write_generation

        def write_generation(bundle: Any) -> Path:
            directory: Path = write(bundle)
            monitor.written(name, volume)
            return directory

        volume.write_generation = write_generation
        metrics = api["Metrics"]()
        log = SimLog(name, self.events, self.events_lock)
        identity = api["Identity"](subject=f"CN={name}.fleet.test", dns_sans=(), ip_sans=(),
                                   key_type="ec-p256")
        manager = api["AuthManager"](
            issuer=FakeIssuer(identity), volume=volume, password_file=self.password,
            metrics=metrics, log=log, renew_fraction=0.6667, renew_jitter=0.05,
            backoff_initial=0.5, backoff_max=5.0, rng=random.Random(self.rng.random()))
        step = manager.step

        def counted_step(source: Any) -> float:
            traffic.passes += 1
            return float(step(source))

        manager.step = counted_step
        stop = threading.Event()
        domain = {"datacenters": tuple(f"dc{d + 1}" for d in range(args.datacenters))} \
            if args.datacenters > 1 else {}
        source = api["Participant"](
            store=store, watch_store=store.clone(), manager=manager, metrics=metrics, log=log,
            node_id=name, role=role, policy=api["Policy"](), session_ttl=args.session_ttl,
            watch_wait=args.watch_wait, require_ack=True, stop=stop, **domain)
        if hasattr(source, "ack_poll"):
            source.ack_poll = ACK_POLL
        thread = threading.Thread(target=manager.run, args=(source, stop), daemon=True,
                                  name=f"manager-{name}")
        thread.start()
        return Member(name, role, traffic, manager, source, stop, thread)

    def notify(self, name: str) -> None:
        """Wake the participant whose monitor acknowledged: the one-process stand-in for the
        ack poll (0.25 s, a thread each: at 1,000 participants a third of the CPU here)."""
        member = self.members.get(name)
        if member is not None:
            member.source.changed.set()

    def kill(self, name: str) -> None:
        """kill -9: no session destroyed, no lock released; the TTL must run out."""
        member = self.members[name]
        member.alive = False
        self.monitor.dead.add(name)
        member.stop.set()
        member.source.registration.close(destroy=False)
        member.source.changed.set()

    def serve(self) -> int:
        for i in range(self.args.first, self.args.first + self.args.count):
            if i % self.args.datacenters != self.args.dc_index:
                continue  # another datacenter's worker runs it
            member = self.start_member(i)
            self.members[member.name] = member
            if i % 25 == 24:
                time.sleep(0.1)  # a fleet does not start in one instant either
        print(json.dumps({"ready": len(self.members)}), flush=True)
        for line in sys.stdin:
            word, _, arg = line.strip().partition(" ")
            answer: dict[str, Any] = {}
            if word == "reset":
                for m in self.members.values():
                    m.traffic.requests = m.traffic.entries = m.traffic.wakeups = 0
                    m.traffic.passes = m.traffic.wan_requests = m.traffic.wan_entries = 0
                    m.traffic.first_seen.clear()
            elif word == "kill":
                self.kill(arg)
            elif word == "stats":
                with self.events_lock:
                    events = list(self.events)
                answer = {"members": {m.name: {"requests": m.traffic.requests,
                                               "entries": m.traffic.entries,
                                               "wakeups": m.traffic.wakeups,
                                               "passes": m.traffic.passes,
                                               "wan_requests": m.traffic.wan_requests,
                                               "wan_entries": m.traffic.wan_entries,
                                               "first_seen": dict(m.traffic.first_seen),
                                               "alive": m.alive}
                                      for m in self.members.values()},
                          "events": events}
            print(json.dumps(answer, default=str), flush=True)
        self.close()
        return 0

    def close(self) -> None:
        for m in self.members.values():
            m.stop.set()
            m.source.changed.set()
        for m in self.members.values():
            m.thread.join(timeout=5)
        for m in self.members.values():
            if m.alive:
                with contextlib.suppress(Exception):
                    m.source.close(destroy=True)
        self.monitor.close()


class Child:
    """A helper process that prints one JSON line when ready and answers a line per command."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc, self.info = start_json_process(args)

    def command(self, word: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the fleet: Consul, the proxy, the workers, and the observer -----------------------------------

@dataclasses.dataclass
class Direction:
    """Figures of one flip."""

    target: str
    converged: bool
    seconds: float
    phases: list[tuple[int, float]]
    requests: int
    writes: int
    kv_entries: int
    body_bytes: int
    entries_mean: float
    entries_max: int
    entries_max_follower: int
    wakeups_mean: float
    wakeups_max: int
    keeper_reaction: float
    reaction_min: float
    reaction_p50: float
    reaction_p99: float
    reaction_max: float
    unseen: int
    #: Requests to another datacenter (``?dc=``), per participant and the most for one.
    wan_requests: int = 0
    wan_requests_mean: float = 0.0
    wan_requests_max: int = 0
    wan_entries: int = 0


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.base = Path(tempfile.mkdtemp(prefix="kafka-pki-fleet-", dir=base))
        password = self.base / "store-password"
        password.write_text("fleet-store-password\n")
        password.chmod(0o600)
        self.prefix = f"kafka-pki-fleet/{uuid.uuid4().hex[:8]}/"
        self.consul_proc: subprocess.Popen[str] | None = None
        self.workers: list[Child] = []
        self.owner: dict[str, Child] = {}
        self.killed: set[str] = set()
        consul_addr = os.environ.get("CONSUL_HTTP_ADDR")
        #: Each datacenter's agent (the doubles of a federation, WAN-joined, with
        #: --datacenters; a real federation's agents by CONSUL_HTTP_ADDR_<DC>).
        self.datacenters = [f"dc{d + 1}" for d in range(args.datacenters)]
        addrs: dict[str, str] = {}
        if not consul_addr:
            self.consul_proc, info = start_json_process(
                [sys.executable, "-m", "tests.doubles.consul", "--port", "0",
                 "--datacenters", ",".join(self.datacenters)])
            addrs = {dc: str(url) for dc, url in info["urls"].items()}
        else:
            addrs[self.datacenters[0]] = consul_addr
            for dc in self.datacenters[1:]:
                addrs[dc] = os.environ[f"CONSUL_HTTP_ADDR_{dc.upper()}"]
        self.addrs = {dc: a if "://" in a else "http://" + a for dc, a in addrs.items()}
        self.consul_addr = self.addrs[self.datacenters[0]]
        self.proxies = {dc: Child([sys.executable, "-m", "tests.fleet", "--serve-proxy", addr])
                        for dc, addr in self.addrs.items()}
        self.proxy = self.proxies[self.datacenters[0]]
        import consul

        self.token = os.environ.get("CONSUL_HTTP_TOKEN")
        self.directs = {dc: consul.Consul(**_consul_kwargs(addr))
                        for dc, addr in self.addrs.items()}
        self.direct = self.directs[self.datacenters[0]]

    # -- observing (direct, uncounted) ----------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        _, item = self.direct.kv.get(self.prefix + "rotation", token=self.token)
        return json.loads(item["Value"]) if item and item.get("Value") else None

    def put(self, key: str, value: str) -> None:
        self.direct.kv.put(self.prefix + key, value, token=self.token)

    def serving(self) -> dict[str, tuple[str | None, tuple[str, ...]]]:
        """What every registered participant reports it serves (its monitor acknowledged), in
        every datacenter."""
        items = []
        for direct in self.directs.values():
            _, found = direct.kv.get(self.prefix + "nodes/", recurse=True, token=self.token)
            items += found or []
        out = {}
        for item in items:
            if item.get("Session") and item.get("Value"):
                data = json.loads(item["Value"])
                if data.get("serial"):
                    out[data["node_id"]] = (data.get("signer"), tuple(data.get("trust") or ()))
        return out

    def converged(self, root: str) -> bool:
        record = self.record()
        if not record or record.get("to") != root or record.get("completed_at") is None:
            return False
        serving = self.serving()
        live = self.args.participants - len(self.killed)
        return len(serving) == live and all(s == (root, (root,)) for s in serving.values())

    # -- the run --------------------------------------------------------------------------------

    def bring_up(self) -> None:
        self.put("active-root", ROOT_A)
        args, n = self.args, self.args.participants
        per = -(-n // args.workers)
        common = [sys.executable, "-m", "tests.fleet",
                  "--prefix", self.prefix, "--volumes", str(self.base),
                  "--brokers", str(args.brokers), "--seed", str(args.seed),
                  "--session-ttl", str(args.session_ttl), "--watch-wait", str(args.watch_wait),
                  "--switch-interval", str(args.switch_interval)]
        if args.product is not None:
            common += ["--product", str(args.product)]
        for first in range(0, n, per):
            count = min(per, n - first)
            # Participant i is in datacenter i % D, on that datacenter's agent (its proxy).
            for d, dc in enumerate(self.datacenters):
                worker = Child([*common, "--first", str(first), "--count", str(count),
                                "--datacenters", str(args.datacenters), "--dc-index", str(d),
                                "--worker-consul", self.proxies[dc].info["url"]])
                self.workers.append(worker)
                for i in range(first + (d - first) % len(self.datacenters), first + count,
                               len(self.datacenters)):
                    self.owner[f"{'broker' if i < args.brokers else 'client'}-{i}"] = worker
        deadline = time.monotonic() + max(120.0, n * 0.3)
        while not self.converged(ROOT_A):
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet did not come up on {ROOT_A}: record={self.record()}")
            time.sleep(0.5)

    def keeper(self) -> str | None:
        _, item = self.direct.kv.get(self.prefix + "keeper", token=self.token)
        if not item or not item.get("Session") or not item.get("Value"):
            return None
        return str(json.loads(item["Value"]).get("node_id"))

    def flip(self, root: str, kill_keeper: bool) -> tuple[Direction, list[str]]:
        time.sleep(self.args.settle)  # an operator does not flip the instant a rotation ends
        for worker in self.workers:
            worker.command("reset")
        for proxy in self.proxies.values():
            proxy.command("reset")
        notes: list[str] = []
        flipped, flipped_wall = time.monotonic(), time.time()
        self.put("active-root", root)
        phases: list[tuple[int, float]] = []
        deadline = flipped + self.args.deadline
        converged = True
        while True:
            if time.monotonic() > deadline:
                converged = False  # report what it cost so far; the run then fails
                phases.append((0, time.monotonic() - flipped))
                notes.append(f"NOT CONVERGED on {root} within {self.args.deadline:.0f}s; "
                             f"record={self.record()}")
                break
            record = self.record()
            if record and record.get("to") == root:
                done = record.get("completed_at") is not None
                mark = 4 if done else int(record["phase"])
                if not phases or phases[-1][0] != mark:
                    since = float(record["completed_at"] if done else record["phase_since"])
                    phases.append((mark, since - flipped_wall))
                    if kill_keeper and mark == 2 and not notes:
                        notes.append(self.kill_keeper(flipped))
                if done and self.converged(root):
                    break
            time.sleep(0.02)
        seconds = phases[-1][1]
        stats = self.proxy_stats()
        members: dict[str, dict[str, Any]] = {}
        events: list[Any] = []
        for worker in self.workers:
            answer = worker.command("stats")
            members.update(answer["members"])
            events += answer["events"]
        keepers = {name for _, name, event, _ in events if event == "keeper_acquired"}
        followers = [m for name, m in members.items() if name not in keepers]
        live = [m for m in members.values() if m["alive"]]
        reactions = sorted(float(m["first_seen"][root]) - flipped for m in live
                           if root in m["first_seen"])
        durations = [(phase, phases[k + 1][1] - at) for k, (phase, at) in enumerate(phases[:-1])]
        n = len(members)
        direction = Direction(
            target=root, converged=converged, seconds=seconds, phases=durations,
            requests=int(stats["requests"]),
            writes=int(stats["methods"].get("PUT", 0)),
            kv_entries=int(stats["kv_entries"]), body_bytes=int(stats["response_body_bytes"]),
            entries_mean=int(stats["kv_entries"]) / n,
            entries_max=max(m["entries"] for m in members.values()),
            entries_max_follower=max((m["entries"] for m in followers), default=0),
            wakeups_mean=statistics.fmean(m["wakeups"] for m in members.values()),
            wakeups_max=max(m["wakeups"] for m in members.values()),
            keeper_reaction=phases[0][1],
            reaction_min=reactions[0] if reactions else float("nan"),
            reaction_p50=percentile(reactions, 0.5), reaction_p99=percentile(reactions, 0.99),
            reaction_max=reactions[-1] if reactions else float("nan"),
            unseen=len(live) - len(reactions),
            wan_requests=sum(int(m.get("wan_requests", 0)) for m in members.values()),
            wan_requests_mean=statistics.fmean(int(m.get("wan_requests", 0))
                                               for m in members.values()),
            wan_requests_max=max(int(m.get("wan_requests", 0)) for m in members.values()),
            wan_entries=sum(int(m.get("wan_entries", 0)) for m in members.values()))
        self.events = sorted(events)
        return direction, notes

    def proxy_stats(self) -> dict[str, Any]:
        """The counting proxies' figures, summed over the datacenters."""
        total: dict[str, Any] = {"requests": 0, "kv_entries": 0, "response_body_bytes": 0,
                                 "methods": {}}
        for proxy in self.proxies.values():
            stats = proxy.command("stats")
            for key in ("requests", "kv_entries", "response_body_bytes"):
                total[key] += int(stats[key])
            for method, count in stats["methods"].items():
                total["methods"][method] = total["methods"].get(method, 0) + int(count)
        return total

    def kill_keeper(self, flipped: float) -> str:
        name = self.keeper()
        if name is None or name not in self.owner:
            return "no keeper to kill (previous scheme?)"
        self.owner[name].command(f"kill {name}")
        self.killed.add(name)
        return f"killed keeper {name} (kill -9) at phase 2, {time.monotonic() - flipped:.2f}s " \
               "after the flip"

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        for proxy in self.proxies.values():
            proxy.close()
        if self.consul_proc is not None:
            self.consul_proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.consul_proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)


def _consul_kwargs(addr: str) -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(addr)
    return {"host": parts.hostname, "port": parts.port or 8500, "scheme": parts.scheme}


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def handovers(events: list[Any], flipped_at: float | None = None) -> list[str]:
    out, first = [], None
    for at, name, event, fields in events:
        if event in ("keeper_acquired", "keeper_lost"):
            first = first if first is not None else at
            what = (f"took the keeper lock ({fields.get('how')})" if event == "keeper_acquired"
                    else f"lost the keeper lock ({fields.get('reason')})")
            out.append(f"+{at - first:7.2f}s {name} {what}")
    return out


def report(direction: Direction, label: str) -> list[str]:
    d = direction
    names = {1: "phase 1", 2: "phase 2", 3: "phase 3"}
    return [f"== {label}: flip to {d.target} ==",
            f"  time to stable        {d.seconds:.2f} s",
            "  phases                " + ", ".join(f"{names.get(p, p)} {s:.2f} s"
                                                   for p, s in d.phases),
            f"  Consul HTTP requests  {d.requests} ({d.requests / d.seconds:.0f}/s; "
            f"{d.writes} writes: reports, session renewals, the record)",
            f"  KV entries returned   {d.kv_entries} ({d.entries_mean:.1f} per participant; "
            f"max {d.entries_max} for one, max {d.entries_max_follower} for one never keeper)",
            f"  bytes returned        {d.body_bytes} ({d.body_bytes / 1e6:.2f} MB)",
            f"  blocking wakeups      {d.wakeups_mean:.1f} per participant (max {d.wakeups_max})",
            f"  flip to new record    {d.keeper_reaction * 1000:.0f} ms (the keeper's decision)",
            f"  flip seen             min {d.reaction_min * 1000:.0f} ms, "
            f"p50 {d.reaction_p50 * 1000:.0f} ms, "
            f"p99 {d.reaction_p99 * 1000:.0f} ms, max {d.reaction_max * 1000:.0f} ms"
            + (f" ({d.unseen} never saw it)" if d.unseen else ""),
            f"  across the WAN        {d.wan_requests} requests ({d.wan_requests_mean:.2f} per "
            f"participant; max {d.wan_requests_max} for one, a keeper), {d.wan_entries} KV "
            f"entries; local {d.requests - d.wan_requests}"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fleet",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--brokers", type=int, default=None,
                        help="how many are brokers (default: a tenth); the rest are clients")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--datacenters", type=int, default=1,
                        help="participants spread over this many WAN-joined datacenters "
                             "(one rotation domain; dc1 is the primary)")
    parser.add_argument("--kill-keeper", action="store_true",
                        help="kill -9 the keeper when A->B reaches phase 2")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes the participants are spread over (default: one per 200)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds between a stable fleet and the next flip")
    parser.add_argument("--session-ttl", type=int, default=15)
    parser.add_argument("--watch-wait", type=float, default=60)
    parser.add_argument("--deadline", type=float, default=600,
                        help="seconds a direction may take before the run fails")
    parser.add_argument("--product", type=Path, default=None,
                        help="a checkout whose sidecar/ and monitor/ packages to run instead")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--switch-interval", type=float, default=0.05,
                        help="the worker processes' sys.setswitchinterval")
    hidden = argparse.SUPPRESS
    parser.add_argument("--serve-proxy", metavar="UPSTREAM", help=hidden)
    parser.add_argument("--worker-consul", help=hidden)
    parser.add_argument("--prefix", help=hidden)
    parser.add_argument("--volumes", help=hidden)
    parser.add_argument("--first", type=int, default=0, help=hidden)
    parser.add_argument("--count", type=int, default=0, help=hidden)
    parser.add_argument("--dc-index", type=int, default=0, help=hidden)
    args = parser.parse_args(argv)
    if args.brokers is None:
        args.brokers = max(1, args.participants // 10)
    if args.workers is None:
        args.workers = max(1, -(-args.participants // 200))
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Bring a fleet up, flip A->B and back, print the figures and return them."""
    started = time.monotonic()
    sim = Fleet(args)
    try:
        print(f"fleet: {args.participants} participants ({args.brokers} brokers) in "
              f"{args.workers * args.datacenters} processes, {args.datacenters} "
              f"datacenter(s), consul "
              f"{'double' if sim.consul_proc else sim.consul_addr} via counting proxy, product "
              f"{args.product or REPO}", flush=True)
        sim.bring_up()
        print(f"up: stable on {ROOT_A} after {time.monotonic() - started:.1f}s", flush=True)
        there, notes = sim.flip(ROOT_B, args.kill_keeper)
        there_events = sim.events
        back = there
        if there.converged:
            back, _ = sim.flip(ROOT_A, False)
    finally:
        sim.close()
    lines = report(there, "A->B") + [f"  {n}" for n in notes]
    if back is not there:
        lines += report(back, "B->A")
    lines.append("== keeper ==")
    lines += [f"  {m}" for m in handovers(sim.events)] or [
        "  (no keeper events: previous scheme)"]
    errors = [e for e in sim.events if e[2] not in SimLog.KEPT]
    lines.append(f"== errors logged: {len(errors)} ==")
    lines += [f"  {name} {event} {fields}" for _, name, event, fields in errors[:10]]
    print("\n".join(lines))
    figures = {"there": dataclasses.asdict(there), "back": dataclasses.asdict(back),
               "notes": notes, "keeper_acquisitions": sum(
                   1 for e in there_events if e[2] == "keeper_acquired"),
               "handovers": handovers(sim.events), "errors": len(errors)}
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    wan = (f" wan_requests_per_participant={there.wan_requests_mean:.2f}"
           if args.datacenters > 1 else "")
    print(f"participants={args.participants} rotation_seconds={there.seconds:.2f} "
          f"entries_per_participant={there.entries_mean:.1f} "
          f"wakeups_per_participant={there.wakeups_mean:.1f}{wan}", flush=True)
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_proxy:
        return serve_proxy(args.serve_proxy)
    if args.product is not None:
        sys.path.insert(0, str(args.product.resolve()))
    if args.worker_consul:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        threading.stack_size(512 * 1024)  # thousands of threads: keep their reservations small
        # Hundreds of I/O-bound threads share one GIL here (in a fleet each has a process):
        # a long switch interval lets each run until it blocks instead of thrashing the GIL
        # (measured at 300 in one process: 0.5 ms 84 s to stable, 5 ms 7-12 s, 50 ms 7 s).
        sys.setswitchinterval(args.switch_interval)
        return Worker(args).serve()
    figures = run(args)
    return 0 if figures["there"]["converged"] and figures["back"]["converged"] else 1


if __name__ == "__main__":
    sys.exit(main())
