"""Stopping on SIGTERM/SIGINT within a bound, whatever the loop is blocked in.

Both sidecars run their loop in a worker thread; the main thread only waits for the loop to
end or for a signal. A signal sets ``stop``. Every wait of the loops watches ``stop`` (in
slices of at most ``STOP_CHECK`` seconds), so a loop normally ends within a fraction of a
second. A loop blocked in a call that cannot watch it (a Vault request, an HTTP reload hook,
a TLS probe of a broker that does not answer) is abandoned after ``STOP_GRACE`` seconds: the
worker is a daemon thread, and nothing it can be doing then leaves shared state half-written
(generations, ``current`` and the acknowledgement are all replaced atomically).

The signal handler only sets ``stop``, and the main thread never waits on ``stop`` itself,
so the handler cannot deadlock on the lock of an event the interrupted code holds.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Longest a wait goes without looking at ``stop``.
STOP_CHECK = 0.2
#: How long a stopping loop may take to end by itself before it is abandoned. With the
#: main thread's reaction (0.1 s), the health server's shutdown (0.25 s) and the interpreter's
#: exit, a process ends well within 2 s of the signal.
STOP_GRACE = 0.8


class Stopped(Exception):
    """Raised from a wait inside a pass when ``stop`` is set: unwinds the pass without
    counting it as a failure."""


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop`` (and nothing else)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def wait_or_stop(event: threading.Event, stop: threading.Event | None, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``event``; return early (False) once ``stop`` is
    set. True if ``event`` was set."""
    if stop is None:
        return event.wait(timeout)
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if event.wait(min(left, STOP_CHECK)):
            return True
    return False


def pause(stop: threading.Event | None, seconds: float) -> None:
    """Sleep ``seconds``; raise Stopped as soon as ``stop`` is set."""
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Stopped("stopping")


def run_until_stopped(loop: Callable[[], T], stop: threading.Event,
                      grace: float = STOP_GRACE) -> tuple[bool, T | None]:
    """Run ``loop`` in a daemon thread until it returns, or until ``stop`` is set and then
    at most ``grace`` seconds more. Returns (finished, its result); an exception it raised
    is raised here."""
    results: list[T] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(loop())
        except Stopped:
            pass
        except BaseException as exc:  # handed to the main thread
            errors.append(exc)

    worker = threading.Thread(target=work, name="loop", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        worker.join(0.1)
    worker.join(grace)
    if errors:
        raise errors[0]
    return not worker.is_alive(), (results[0] if results else None)
