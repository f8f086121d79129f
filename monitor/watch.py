"""Volume events (watchdog) turned into a debounced "look again" signal."""

from __future__ import annotations

import threading
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from sidecar.lifecycle import wait_or_stop


class _Handler(FileSystemEventHandler):
    def __init__(self, changed: threading.Event) -> None:
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        # created and moved matter as much as modified: generations arrive by rename and
        # ``current`` is replaced by a new symlink (FIELD-NOTES).
        if event.event_type in ("created", "moved", "modified", "deleted"):
            self._changed.set()


class VolumeWatcher:
    """Sets ``changed`` on any event under the volume; ``wait`` debounces them."""

    def __init__(self, volume: Path) -> None:
        self.changed = threading.Event()
        self._observer = Observer()
        volume.mkdir(parents=True, exist_ok=True)
        self._observer.schedule(_Handler(self.changed), str(volume), recursive=True)

    def start(self) -> VolumeWatcher:
        self._observer.start()
        return self

    def wait(self, timeout: float, debounce: float, stop: threading.Event) -> bool:
        """Block until an event (then until ``debounce`` seconds without one), timeout, or
        ``stop``. True if something happened."""
        if not wait_or_stop(self.changed, stop, timeout):
            return False
        while not stop.is_set():
            self.changed.clear()
            if not wait_or_stop(self.changed, stop, debounce):
                return True
        return True

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)
