"""Faults injected into the volume writer (a full or read-only volume), shared by tests."""

from __future__ import annotations

import errno
import os

import pytest

#: (errno, what the error log must say) for the write failures a volume can have.
VOLUME_WRITE_ERRORS = [(errno.ENOSPC, "volume is full"), (errno.EROFS, "volume is read-only")]


def fail_volume_writes(monkeypatch: pytest.MonkeyPatch, after: int, err: int) -> None:
    """Make the volume's ``os.write`` fail with ``err`` after ``after`` successful writes,
    i.e. part-way through a generation. ``monkeypatch.undo()`` heals the volume."""
    real_write = os.write
    calls = {"n": 0}

    def write_then_fail(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real_write(fd, data)

    monkeypatch.setattr("sidecar.volume.os.write", write_then_fail)
