"""Atomic generations: complete or absent, never mixed, the previous kept on failure."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import threading
from pathlib import Path

import pytest

from monitor.reloader import write_ack
from sidecar import layout
from sidecar.bundle import Bundle, render_bundle
from sidecar.manifest import Acknowledgement
from sidecar.volume import Volume, VolumeError, read_generation
from tests.faults import VOLUME_WRITE_ERRORS, fail_volume_writes
from tests.pki import LocalRoot, leaf_material

ROOT_A = LocalRoot("pki_root_a")


def make_bundle(volume: Volume) -> Bundle:
    material = leaf_material(ROOT_A, [ROOT_A])
    return render_bundle(material, password="pw-123456", current=volume.current,
                         generation=volume.next_generation(), created_at=dt.datetime.now(dt.UTC))


def test_generation_is_published_through_relative_current_link(tmp_path: Path) -> None:
    volume = Volume(tmp_path)
    assert volume.read_current() is None
    directory = volume.write_generation(make_bundle(volume))
    assert os.readlink(tmp_path / "current") == "generations/00000001"
    found = volume.read_current()
    assert found is not None and found[0] == directory and found[1].generation == 1
    # The other container may mount the volume elsewhere: the link must still resolve.
    moved = tmp_path.parent / (tmp_path.name + "-moved")
    tmp_path.rename(moved)
    assert Volume(moved).read_current() is not None


def test_old_generations_are_pruned_keeping_the_newest(tmp_path: Path) -> None:
    volume = Volume(tmp_path, keep=2)
    for _ in range(4):
        volume.write_generation(make_bundle(volume))
    assert volume.generations() == [3, 4]
    assert not list((tmp_path / "generations").glob(".tmp-*"))



def test_pruning_keeps_the_generation_the_monitor_acknowledged(tmp_path: Path) -> None:
    volume = Volume(tmp_path, keep=2)
    first = volume.write_generation(make_bundle(volume))
    manifest = read_generation(first)
    write_ack(tmp_path, Acknowledgement(generation=1, serial=manifest.serial,
                                        applied_at=manifest.created_at, verified_by="handshake"))
    for _ in range(3):
        volume.write_generation(make_bundle(volume))
    assert volume.generations() == [1, 3, 4], "the served generation stays for comparison"
    layout.ack_path(tmp_path).write_text("not json")
    volume.write_generation(make_bundle(volume))
    assert volume.generations() == [4, 5], "without a readable ack, only the newest"


@pytest.mark.parametrize(("err", "message"), VOLUME_WRITE_ERRORS)
def test_write_failure_keeps_previous_generation(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 err: int, message: str) -> None:
    volume = Volume(tmp_path)
    first = volume.write_generation(make_bundle(volume))
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    bundle = make_bundle(volume)
    fail_volume_writes(monkeypatch, after=3, err=err)
    with pytest.raises(VolumeError, match=message):
        volume.write_generation(bundle)
    monkeypatch.undo()
    found = volume.read_current()
    assert found is not None and found[0] == first
    assert {p.name: p.read_bytes() for p in first.iterdir()} == before
    assert volume.generations() == [1]
    assert not list((tmp_path / "generations").glob(".tmp-*")), "partial generation left"


def test_tampered_or_incomplete_generation_is_detected(tmp_path: Path) -> None:
    volume = Volume(tmp_path)
    directory = volume.write_generation(make_bundle(volume))
    (directory / layout.TRUSTSTORE_JKS).write_bytes(b"not a truststore")
    with pytest.raises(VolumeError, match=r"truststore\.jks does not match"):
        read_generation(directory)
    (directory / layout.MANIFEST).unlink()
    with pytest.raises(VolumeError, match="no manifest"):
        volume.read_current()


def test_reader_never_sees_two_generations(tmp_path: Path) -> None:
    """A reader resolving ``current`` once reads only files of one generation (every digest
    matches that generation's manifest) while the writer publishes as fast as it can."""
    volume = Volume(tmp_path, keep=3)
    distinct = [make_bundle(volume) for _ in range(15)]  # every generation's files differ
    volume.write_generation(distinct[0])
    stop = threading.Event()
    mixed: list[str] = []
    reads = {"n": 0}

    def reader() -> None:
        while not stop.is_set():
            try:
                found = volume.read_current()
            except VolumeError as exc:  # pruned under our feet is fine; mixed is not
                if "does not match" in str(exc):
                    mixed.append(str(exc))
                continue
            if found:
                reads["n"] += 1

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for bundle in distinct[1:]:
            manifest = dataclasses.replace(bundle.manifest, generation=volume.next_generation())
            volume.write_generation(Bundle(bundle.files, manifest))
    finally:
        stop.set()
        thread.join()
    assert not mixed
    assert reads["n"] > 0
