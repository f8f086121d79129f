"""The drill's ``controller-restarts`` fault: KRaft brokers whose Raft client never reloads.

Each broker double has a CONTROLLER listener (SASL_SSL: it asks no client certificate), which
its monitor reloads like the others, and a Raft client built at start (KAFKA-20025). The
double's process is a stand-in run under the real ``docker/kafka-supervise.sh``; the
monitor's ``restart`` action SIGTERMs it through the pid file, as in the compose stack, and a
new pid is the broker's JVM starting again (``restart_process``: every store and the Raft
client loaded from the files). A watcher thread plays Kafka's Metadata (every double lists as
alive the peers whose process runs), records how many were down at once and when each restart
happened, and plays the quorum: every running node's Raft client makes a new handshake to every
running peer's controller listener, all the time. One that fails is a stranded voter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.doubles.kafka import KafkaBrokerDouble, RaftUnreachable

SUPERVISE = Path(__file__).resolve().parents[1] / "docker" / "kafka-supervise.sh"
RAFT_EVERY = 0.25  # seconds between two rounds of new Raft handshakes
#: A controller that runs until SIGTERM, then exits 143 (as a JVM after its shutdown hooks).
STAND_IN = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))\n"
            "while True:\n    time.sleep(1)\n")


def _pid(pid_file: Path) -> str | None:
    """The pid in the file if that process runs, else None."""
    try:
        pid = pid_file.read_text()
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return None
    return pid


def stop_supervisor(supervisor: subprocess.Popen[bytes]) -> None:
    """SIGTERM kafka-supervise.sh (it stops its process, then itself); SIGKILL after 10 s."""
    if supervisor.poll() is not None:
        return
    supervisor.terminate()
    try:
        supervisor.wait(timeout=10)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait()


class Controllers:
    """One supervised stand-in controller per broker, and the cluster view they give."""

    def __init__(self, base: Path, brokers: dict[int, KafkaBrokerDouble]) -> None:
        self.brokers = brokers
        self.pid_files = {i: base / f"kafka-{i}-controller.pid" for i in brokers}
        self.supervisors: list[subprocess.Popen[bytes]] = []
        self.max_down = 0  # most controllers down at the same moment
        self.restart_times: list[float] = []  # unix time of each pid seen replaced
        self.raft_attempts = 0
        self.raft_failures: list[tuple[float, str, str, str]] = []  # at, from, to, why
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    @property
    def restarts(self) -> int:
        return len(self.restart_times)

    def monitor_env(self, index: int, raft_restart: str = "new-roots") -> dict[str, str]:
        """What a broker's monitor is given to reload the controller listener and restart
        the broker for its Raft client (``raft_restart=never`` claims a fixed release)."""
        return {"MONITOR_CONTROLLER_LISTENER": "CONTROLLER",
                "MONITOR_RAFT_RESTART": raft_restart,
                "MONITOR_RESTART_CLUSTER_SIZE": str(len(self.brokers)),
                "MONITOR_RELOAD_ACTION": "restart",
                "MONITOR_RELOAD_PID_FILE": str(self.pid_files[index]),
                "MONITOR_ACTION_TIMEOUT": "20"}

    def start(self) -> None:
        for pid_file in self.pid_files.values():
            env = {**os.environ, "KAFKA_SUPERVISE_PID_FILE": str(pid_file)}
            self.supervisors.append(subprocess.Popen(
                ["bash", str(SUPERVISE), sys.executable, "-c", STAND_IN], env=env,
                stderr=subprocess.DEVNULL))
        for pid_file in self.pid_files.values():
            while _pid(pid_file) is None:
                self._stop.wait(0.02)
        self._view({i: True for i in self.brokers})
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for supervisor in self.supervisors:
            stop_supervisor(supervisor)

    def _watch(self) -> None:
        last = {i: f.read_text() for i, f in self.pid_files.items()}
        next_raft = 0.0
        while not self._stop.wait(0.01):
            running = {i: _pid(f) for i, f in self.pid_files.items()}
            self.max_down = max(self.max_down, sum(p is None for p in running.values()))
            for i, pid in running.items():
                if pid is not None and pid != last[i]:
                    last[i] = pid
                    self.restart_times.append(time.time())
                    self.brokers[i].restart_process()
            up = {i: pid is not None for i, pid in running.items()}
            self._view(up)
            if time.monotonic() >= next_raft:
                next_raft = time.monotonic() + RAFT_EVERY
                self._raft_round(up)

    def _raft_round(self, up: dict[int, bool]) -> None:
        """Every running node's Raft client reaches every running voter anew."""
        for i, broker in self.brokers.items():
            for j, voter in self.brokers.items():
                if i == j or not (up[i] and up[j]):
                    continue
                self.raft_attempts += 1
                try:
                    broker.raft_handshake(voter.host, voter.ports["CONTROLLER"])
                except RaftUnreachable as exc:
                    self.raft_failures.append((time.time(), f"kafka-{i} (Raft client)",
                                               f"kafka-{j}:CONTROLLER", str(exc)))

    def _view(self, up: dict[int, bool]) -> None:
        """Each broker's Metadata: the peers whose controller runs."""
        for index, broker in self.brokers.items():
            broker.peers = {other: (b.host, b.ports["SSL"])
                            for other, b in self.brokers.items()
                            if other != index and up[other]}
