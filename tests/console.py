"""The console scripts as real processes: started from the virtualenv's bin directory (the
installed entry points), their JSON log lines collected from stderr, stopped by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def script(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed next to {sys.executable} (pip install -e .)")
    return path


def clean_env(**values: str) -> dict[str, str]:
    """The test's environment without any sidecar setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PKI_", "MONITOR_", "CONSUL_", "VAULT_", "KAFKA_"))}
    env.update(values)
    return env


def run_script(name: str, args: list[str], env: dict[str, str], timeout: float = 60
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(script(name)), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


class Console:
    """One running console script; stderr goes to a file so nothing blocks on a pipe."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("w") as stderr:
            self.proc = subprocess.Popen([str(script(name)), *args], env=env,
                                         stdout=subprocess.DEVNULL, stderr=stderr)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line being written
        return out

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def wait_for(self, event: str, timeout: float = 30,
                 where: Callable[[dict[str, Any]], bool] = lambda e: True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.named(event) if where(e)]
            if found:
                return found[-1]
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode} before "
                                     f"{event}:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise AssertionError(f"no {event} from {self.name} within {timeout}s:\n"
                             f"{self.log.read_text()}")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[float, int]:
        """Send ``signum``; (seconds until the process exited, its exit code)."""
        started = time.monotonic()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} did not stop within 30s:\n"
                                 f"{self.log.read_text()}") from None
        return time.monotonic() - started, code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
