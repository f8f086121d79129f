"""Reload actions for what cannot reload by itself: signal, command, HTTP hook, restart."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from sidecar.lifecycle import STOP_CHECK, Stopped, pause
from sidecar.manifest import Manifest


class ActionFailed(Exception):
    """The reload action did not succeed; the message says why."""


def _read_pid(pid_file: Path) -> int:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ActionFailed(f"cannot read a pid from {pid_file}: {exc}") from None
    if pid <= 1:
        raise ActionFailed(f"refusing to signal pid {pid} from {pid_file}")
    if pid == os.getpid():  # the pid file is from another PID namespace than ours
        raise ActionFailed(f"refusing to signal pid {pid} from {pid_file}: it is this "
                           "monitor; does it share the PID namespace of the process?")
    return pid


def _signal_number(name: str) -> signal.Signals:
    try:
        return signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except KeyError:
        raise ActionFailed(f"unknown signal {name}") from None


def send_signal(pid_file: Path, name: str) -> str:
    """Signal the process named by the pid file."""
    pid = _read_pid(pid_file)
    try:
        os.kill(pid, _signal_number(name))
    except ProcessLookupError:
        raise ActionFailed(f"process {pid} (from {pid_file}) is not running") from None
    except PermissionError:
        raise ActionFailed(f"not allowed to signal process {pid}") from None
    return f"signal:{name}:{pid}"


def run_command(command: str, manifest: Manifest, current: Path, timeout: float,
                stop: threading.Event | None = None) -> str:
    """Run the command (no shell); exit status 0 is success. It is terminated when it
    outlives ``timeout``, or when ``stop`` is set (then Stopped is raised)."""
    env = {**os.environ, "PKI_GENERATION": str(manifest.generation),
           "PKI_SERIAL": manifest.serial, "PKI_CURRENT_DIR": str(current)}
    with tempfile.TemporaryFile("w+") as output:  # a file, not a pipe: it never fills up
        try:
            child = subprocess.Popen(shlex.split(command), env=env, stdout=output,
                                     stderr=subprocess.STDOUT, text=True)
        except (OSError, ValueError) as exc:
            raise ActionFailed(f"reload command failed to run: {exc}") from None
        deadline = time.monotonic() + timeout
        while child.poll() is None:
            if stop is not None and stop.is_set():
                _end(child)
                raise Stopped("stopping: reload command terminated")
            if time.monotonic() >= deadline:
                _end(child)
                raise ActionFailed(f"reload command timed out after {timeout:g}s")
            try:
                child.wait(STOP_CHECK)
            except subprocess.TimeoutExpired:
                continue
        output.seek(0)
        tail = output.read().strip().splitlines()[-1:] or [""]
    if child.returncode != 0:
        raise ActionFailed(f"reload command exited {child.returncode}: {tail[0][:200]}")
    return "command"


def _end(child: subprocess.Popen[str]) -> None:
    """SIGTERM, then SIGKILL if it is still there half a second later."""
    child.terminate()
    try:
        child.wait(0.5)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def post_hook(url: str, manifest: Manifest, timeout: float) -> str:
    """POST the manifest (no secrets in it) to the app's reload hook; 2xx is success."""
    body = json.dumps({"generation": manifest.generation, "serial": manifest.serial,
                       "not_after": manifest.not_after, "signer": manifest.signer,
                       "trust": list(manifest.trust)}).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        raise ActionFailed(f"reload hook {url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ActionFailed(f"reload hook {url} unreachable: {exc}") from None
    if not 200 <= status < 300:
        raise ActionFailed(f"reload hook {url} answered {status}")
    return "http"


def restart(pid_file: Path, timeout: float, poll: float = 0.1,
            stop: threading.Event | None = None) -> str:
    """SIGTERM the process and wait until its supervisor has started a new one (Stopped if
    ``stop`` is set meanwhile)."""
    old = _read_pid(pid_file)
    with contextlib.suppress(ProcessLookupError):  # already gone: wait for its successor
        os.kill(old, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            new = _read_pid(pid_file)
        except ActionFailed:
            new = old
        if new != old and _alive(new):
            return f"restart:{new}"
        pause(stop, poll)
    raise ActionFailed(f"process {old} was not replaced by a new one within {timeout:.0f}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
