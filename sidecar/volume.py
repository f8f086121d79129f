"""Atomic generations on the shared volume (the only module of the auth manager that writes it).

A generation is written into a private temporary directory (each file fsynced, the manifest
last), renamed into ``generations/``, and published by atomically replacing the relative
``current`` symlink. A failure at any step (disk full, read-only volume) removes the partial
directory and leaves the previous generation, and ``current``, untouched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from sidecar import layout
from sidecar.bundle import Bundle
from sidecar.manifest import Acknowledgement, Manifest, ManifestError, sha256_hex


class VolumeError(Exception):
    """The volume cannot be written or holds inconsistent material; the message says which."""


def describe_os_error(exc: OSError) -> str:
    reasons = {errno.ENOSPC: "volume is full", errno.EROFS: "volume is read-only",
               errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded",
               errno.EFBIG: "file too large for the volume (size limit)"}
    reason = reasons.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{reason}{where}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # not subject to the umask
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


class Volume:
    """The auth manager's view of the shared secrets volume."""

    def __init__(self, root: Path, keep: int = 3) -> None:
        self.root = root
        self.keep = max(2, keep)

    @property
    def current(self) -> Path:
        """The stable path Kafka and clients are configured with."""
        return layout.current_link(self.root)

    def current_generation_dir(self) -> Path | None:
        """The generation directory ``current`` resolves to, or None if there is none."""
        link = self.current
        try:
            target = os.readlink(link)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise VolumeError(f"cannot read {link}: {describe_os_error(exc)}") from exc
        return (link.parent / target).resolve()

    def read_current(self) -> tuple[Path, Manifest] | None:
        """The current generation, verified file by file, or None if there is none yet.

        Raises VolumeError if it is incomplete or any file's digest differs from the manifest.
        """
        directory = self.current_generation_dir()
        if directory is None:
            return None
        return directory, read_generation(directory)

    def read_ack(self) -> Acknowledgement | None:
        """The monitor's acknowledgement, or None if it wrote none (or it is unreadable)."""
        try:
            return Acknowledgement.from_json(layout.ack_path(self.root).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ManifestError):
            return None

    def generations(self) -> list[int]:
        directory = layout.generations_dir(self.root)
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isdigit())

    def write_generation(self, bundle: Bundle) -> Path:
        """Write and publish ``bundle``; return its directory. Raises VolumeError on failure."""
        gens = layout.generations_dir(self.root)
        name = layout.generation_dir_name(bundle.manifest.generation)
        final = gens / name
        staging = gens / f".tmp-{name}-{secrets.token_hex(4)}"
        try:
            gens.mkdir(parents=True, exist_ok=True, mode=0o755)
            if final.exists():
                raise VolumeError(f"generation {name} already exists in {gens}")
            staging.mkdir(mode=0o700)
            for file_name, content in bundle.files.items():
                _write_file(staging / file_name, content.data, content.mode)
            _write_file(staging / layout.MANIFEST, bundle.manifest.to_json(), layout.PUBLIC_MODE)
            _fsync_dir(staging)
            os.chmod(staging, 0o755)
            os.rename(staging, final)
            _fsync_dir(gens)
            self._publish(final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise VolumeError(f"cannot write generation {name}: {describe_os_error(exc)}") from exc
        except VolumeError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._prune(keep_dir=final)
        return final

    def _publish(self, directory: Path) -> None:
        link = self.current
        staging_link = self.root / f".current-{secrets.token_hex(4)}"
        relative = os.path.relpath(directory, self.root)
        try:
            os.symlink(relative, staging_link)
            os.replace(staging_link, link)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(staging_link)
            raise
        _fsync_dir(self.root)

    def _prune(self, keep_dir: Path) -> None:
        """Delete all but the newest ``keep`` generations and stale staging directories.

        The generation the monitor acknowledged is kept too: it is the one being served,
        which the monitor compares the next one with (entry count, test handshakes).
        """
        gens = layout.generations_dir(self.root)
        ack = self.read_ack()
        acked = layout.generation_dir(self.root, ack.generation) if ack else None
        for number in self.generations()[:-self.keep]:
            path = layout.generation_dir(self.root, number)
            if path not in (keep_dir, acked):
                shutil.rmtree(path, ignore_errors=True)
        for entry in gens.glob(".tmp-*"):
            shutil.rmtree(entry, ignore_errors=True)

    def next_generation(self) -> int:
        numbers = self.generations()
        return (numbers[-1] + 1) if numbers else 1


def read_generation(directory: Path) -> Manifest:
    """Read a generation's manifest and check every listed file against its digest."""
    try:
        manifest = Manifest.from_json((directory / layout.MANIFEST).read_bytes())
    except FileNotFoundError:
        raise VolumeError(f"generation {directory.name} has no manifest (incomplete)") from None
    except OSError as exc:
        raise VolumeError(f"cannot read manifest in {directory}: {describe_os_error(exc)}") \
            from exc
    except ManifestError as exc:
        raise VolumeError(f"generation {directory.name}: {exc}") from exc
    for file_name, digest in manifest.files.items():
        try:
            data = (directory / file_name).read_bytes()
        except OSError as exc:
            raise VolumeError(f"generation {directory.name}: cannot read {file_name}: "
                              f"{describe_os_error(exc)}") from exc
        if sha256_hex(data) != digest:
            raise VolumeError(f"generation {directory.name}: {file_name} does not match "
                              "its manifest digest")
    return manifest
