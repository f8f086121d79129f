"""Following a rotation from Consul for ``kafka-pki status --watch`` and ``rotate --wait``.

Cost stays linear in the fleet: the loop blocks on the ``rotation`` key alone (one key,
woken by Consul only when the record changes, or after ``WAIT_SECONDS``), and reads the
participants' reports (the whole prefix, O(N)) at most once per :func:`read_spacing` (the
keeper's own bound: 1 s up to 1,000 participants, 2 s above), plus once after each change of
the record. Nothing is polled faster, however many reports arrive.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import IO, Any

from sidecar.consul_store import ConsulStore, Snapshot, next_index
from sidecar.keeper import KEEPER, ROTATION, keeper_holder, read_spacing, registered_nodes
from sidecar.rotation import RotationInputError, parse_record
from sidecar.watch_progress import Progress, as_json, change_key, progress, summary

#: Seconds a blocking query on the record waits for a change (Consul counts whole seconds).
WAIT_SECONDS = 1.0
#: Never read the reports more often than this, whatever the fleet's size.
MIN_SPACING = 1.0


class TimedOut(Exception):
    """``--timeout`` passed before the rotation completed; carries the last picture."""

    def __init__(self, last: Progress) -> None:
        super().__init__("timed out")
        self.last = last


def picture(snapshot: Snapshot, now: float, target: str | None) -> Progress:
    """The progress shown for one read of the prefix (a malformed record reads as none)."""
    raw = snapshot.value(ROTATION)
    try:
        record = parse_record(raw) if raw else None
    except RotationInputError:
        record = None
    return progress(record, registered_nodes(snapshot, lambda _: None),
                    keeper_holder(snapshot.entries.get(KEEPER)), now, target)


def follow(store: ConsulStore, on_update: Callable[[Progress], None], *,
           target: str | None = None, timeout: float | None = None,
           clock: Callable[[], float] = time.monotonic,
           now: Callable[[], float] = time.time) -> Progress:
    """Show the rotation (towards ``target``) until it completes; returns the last picture.
    Raises :class:`TimedOut` after ``timeout`` seconds, ConsulError when Consul fails."""
    deadline = None if timeout is None else clock() + timeout
    index, last_read, spacing = 0, float("-inf"), MIN_SPACING
    snapshot: Snapshot | None = None
    seen: object = None
    while True:
        wait = WAIT_SECONDS
        asked = clock()
        read = store.get(ROTATION, index, wait if index else None)
        # The same value is no change (Consul answers a missing key with the KV table's
        # index, which every report moves, and wakes its query for writes near it).
        changed = read.content() != seen
        if index and not changed and clock() - asked < wait:
            time.sleep(wait - (clock() - asked))  # rather than redraw at the reports' pace
        index, seen = next_index(index, read.index), read.content()
        if snapshot is None or changed or clock() - last_read >= spacing:
            snapshot = store.read()
            last_read = clock()
            spacing = max(MIN_SPACING, read_spacing(len(snapshot.entries)))
        shown = picture(snapshot, now(), target)
        on_update(shown)
        if shown.complete:
            return shown
        if deadline is not None and clock() >= deadline:
            raise TimedOut(shown)


class Output:
    """Draws each picture: a live redraw on a terminal (rich), one line per change when
    stdout is not a terminal, one JSON object per picture with ``--json``."""

    def __init__(self, *, as_json_lines: bool, stream: IO[str] | None = None,
                 live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.json = as_json_lines
        self.live_mode = (not as_json_lines and self.stream.isatty()) if live is None else live
        self._live: Any = None
        self._last_key: tuple[Any, ...] | None = None

    def __enter__(self) -> Output:
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), auto_refresh=False,
                              transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)

    def __call__(self, p: Progress) -> None:
        if self.json:
            print(json.dumps(as_json(p)), file=self.stream, flush=True)
        elif self._live is not None:
            from sidecar.watch_view import render

            self._live.update(render(p), refresh=True)
        elif change_key(p) != self._last_key:
            print(time.strftime("%H:%M:%S ") + summary(p), file=self.stream, flush=True)
        self._last_key = change_key(p)
