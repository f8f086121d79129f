"""The inter-broker handshake prediction: real TLS handshakes over a socket pair."""

from __future__ import annotations

import datetime as dt
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest

from monitor.checks import PredictedRefusal, check_handshakes, client_context, pair_handshake
from sidecar import layout
from sidecar.bundle import render_bundle
from sidecar.volume import Volume
from tests.pki import LocalRoot, leaf_material

ROOT_A, ROOT_B = LocalRoot("pki_root_a"), LocalRoot("pki_root_b")


def generation(volume: Volume, signer: LocalRoot, trust: list[LocalRoot]) -> Path:
    return volume.write_generation(render_bundle(
        leaf_material(signer, trust), password="pw-123456", current=volume.current,
        generation=volume.next_generation(), created_at=dt.datetime.now(dt.UTC)))


def server_context(directory: Path, tls: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.maximum_version = tls
    ctx.load_cert_chain(directory / layout.FULLCHAIN_PEM, directory / layout.KEY_PEM)
    ctx.load_verify_locations(directory / layout.CA_BUNDLE_PEM)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def pairs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(fd, inode) of every socket pair end the checks open."""
    opened: list[tuple[int, int]] = []
    real = socket.socketpair

    def recording() -> tuple[socket.socket, socket.socket]:
        ends = real()
        opened.extend((s.fileno(), os.fstat(s.fileno()).st_ino) for s in ends)
        return ends

    monkeypatch.setattr(socket, "socketpair", recording)
    return opened


def assert_nothing_left(pairs: list[tuple[int, int]]) -> None:
    assert pairs, "the handshake did not go over a socket pair"
    for fd, inode in pairs:
        try:
            still_open = os.fstat(fd).st_ino == inode
        except OSError:
            still_open = False
        assert not still_open, f"socket fd {fd} leaked"
    assert not [t for t in threading.enumerate() if t.name == "handshake-prediction"]


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_pair_handshake_accepts_a_trusted_client(tmp_path: Path, tls: ssl.TLSVersion,
                                                 pairs: list[tuple[int, int]]) -> None:
    volume = Volume(tmp_path)
    directory = generation(volume, ROOT_A, [ROOT_A])
    assert pair_handshake(server_context(directory, tls), client_context(directory)) is None
    assert_nothing_left(pairs)


@pytest.mark.parametrize("tls", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3],
                         ids=["tls1.2", "tls1.3"])
def test_pair_handshake_reports_a_refused_client_certificate(
        tmp_path: Path, tls: ssl.TLSVersion, pairs: list[tuple[int, int]]) -> None:
    # Over TLS 1.3 the client's handshake succeeds: only its read shows the refusal.
    volume = Volume(tmp_path)
    old = generation(volume, ROOT_A, [ROOT_A])
    new = generation(volume, ROOT_B, [ROOT_A, ROOT_B])
    failure = pair_handshake(server_context(old, tls), client_context(new))
    assert failure is not None and "server: CERTIFICATE_VERIFY_FAILED" in failure
    assert_nothing_left(pairs)


def test_check_handshakes_refuses_a_skipped_phase(tmp_path: Path,
                                                  pairs: list[tuple[int, int]]) -> None:
    volume = Volume(tmp_path, keep=5)
    phase0 = generation(volume, ROOT_A, [ROOT_A])
    phase1 = generation(volume, ROOT_A, [ROOT_A, ROOT_B])
    phase2 = generation(volume, ROOT_B, [ROOT_A, ROOT_B])
    check_handshakes(phase0, phase1)
    check_handshakes(phase1, phase2)
    with pytest.raises(PredictedRefusal, match="old server / new client fails") as info:
        check_handshakes(phase0, phase2)
    assert info.value.reason == "handshake"
    assert_nothing_left(pairs)
