"""docker/kafka-supervise.sh, the broker's supervisor in the compose stack and the Kubernetes
example: the monitor's restart action against it, a crash, and docker stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from monitor import actions
from tests.drill_controllers import SUPERVISE, stop_supervisor
from tests.monitor_kit import wait_for

# A stand-in broker: runs until SIGTERM (then exits 143, as a JVM after its shutdown hooks),
# or exits with the status written to the crash file.
BROKER = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
crash = pathlib.Path(sys.argv[1])
while not crash.exists():
    time.sleep(0.02)
sys.exit(int(crash.read_text()))
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextmanager
def supervised(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    pid_file, crash = tmp_path / "kafka.pid", tmp_path / "crash"
    proc = subprocess.Popen(["bash", str(SUPERVISE), sys.executable, "-c", BROKER, str(crash)],
                            env={**os.environ, "KAFKA_SUPERVISE_PID_FILE": str(pid_file)},
                            stderr=subprocess.PIPE)
    try:
        wait_for(pid_file.exists, "the broker's pid file")
        yield proc, pid_file, crash
    finally:
        stop_supervisor(proc)


def test_the_restart_action_gets_a_new_broker(tmp_path: Path) -> None:
    with supervised(tmp_path) as (proc, pid_file, _):
        first = int(pid_file.read_text())
        done = actions.restart(pid_file, timeout=10)
        second = int(pid_file.read_text())
        assert done == f"restart:{second}"
        assert second != first and alive(second) and not alive(first)
        assert proc.poll() is None  # the supervisor goes on
        assert actions.restart(pid_file, timeout=10) != done  # and again


def test_a_crash_ends_the_supervisor_with_its_status(tmp_path: Path) -> None:
    with supervised(tmp_path) as (proc, pid_file, crash):
        crash.write_text("3")
        assert proc.wait(timeout=10) == 3
        assert not pid_file.exists()
        assert proc.stderr is not None
        assert b"failed with status 3" in proc.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_docker_stop_stops_the_broker_and_the_supervisor(tmp_path: Path,
                                                         sig: signal.Signals) -> None:
    with supervised(tmp_path) as (proc, pid_file, _):
        broker = int(pid_file.read_text())
        proc.send_signal(sig)
        assert proc.wait(timeout=10) == 143  # the broker's status, passed on
        assert not alive(broker)
        assert not pid_file.exists()


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(SUPERVISE)], capture_output=True, timeout=10,
                          env={**os.environ, "KAFKA_SUPERVISE_PID_FILE": str(tmp_path / "p")})
    assert done.returncode == 2
    assert b"usage" in done.stderr


def test_the_restart_action_never_signals_the_monitor_itself(tmp_path: Path) -> None:
    """A pid file read from another PID namespace (the broker's container restarted, the
    monitor still in the old namespace) may name the monitor's own pid there."""
    pid_file = tmp_path / "kafka.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    with pytest.raises(actions.ActionFailed, match="it is this monitor"):
        actions.restart(pid_file, timeout=1)
