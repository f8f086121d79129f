"""``make demo`` keeps working: one rotation A->B with every server a process of its own."""

from __future__ import annotations

import re
import socket
import tomllib
from pathlib import Path

import pytest

from tests import demo


def test_the_demo_extra_is_part_of_the_test_extra() -> None:
    """make demo installs the demo extra only; the suite (make test) must have all of it."""
    extras = tomllib.loads((demo.ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert set(extras["demo"]) <= set(extras["test"])


def _listening(address: str) -> bool:
    host, port = address.removeprefix("http://").rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def test_demo_rotates_a_to_b_says_what_is_a_stand_in_and_draws_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "demo"
    code = demo.main(["--brokers", "2", "--clients", "1", "--out", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"failed_handshakes=0 converged=yes rotation_seconds=\d", out), out
    # progress while it runs: every phase of A->B (sampled: the last participant of a phase
    # may serve it in the same tenth of a second as the next phase starts), then all of them
    for phase in (1, 2, 3):
        assert re.search(rf"phase {phase} \(.*\): [0-3]/3 participants serve it", out), out
    assert "rotation A→B complete in Consul; 3/3 serve it" in out
    assert out.index("complete in Consul") < out.index("converged: every participant")
    picture = out_dir / "timeline.svg"
    assert f"picture of the rotation: {picture}" in out
    svg = picture.read_text()
    assert "A→B p3" in svg and "kafka-2" in svg and "client-1" in svg
    # what is real and what is not, said plainly
    assert "REAL: 6 sidecar processes" in out
    said = next(line for line in out.splitlines() if "Vault:" in line)
    assert "OpenBao" in said and "real" in said and "STAND-IN" not in said
    assert (out_dir / "openbao.log").stat().st_size > 0
    servers = re.findall(r"(?:Consul|Kafka): +STAND-IN, .*? at (\S+)$|"
                         r"Kafka: +STAND-IN, .*?: SSL (\S+),", out, flags=re.M)
    addresses = [a or b for a, b in servers]
    assert len(addresses) == 3, out  # the Consul double and two broker doubles
    # each was a process of its own (a broker double logs its reloads when it exits), and
    # none outlives the demo
    for broker in ("kafka-1", "kafka-2"):
        assert "new SSL material" in (out_dir / f"{broker}-broker.log").read_text()
    assert not any(_listening(address) for address in addresses)
